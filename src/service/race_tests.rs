//! A revoked session never comes back to life in memory. A login or refresh
//! commits its session, then tells the registry; a revocation that lands in
//! between (logout, `revokeUserSessions`, deletion) must win. The first tests
//! hold the login or refresh at that point with a hook and revoke in the gap;
//! the last ones race the two freely, many rounds, and check that memory and
//! the database agree about every session.

use std::sync::{Arc, Mutex};

use sea_orm::EntityTrait;
use tokio::sync::oneshot;

use super::{
    ClientInfo, Issued, Pause, Services, accounts, admin,
    sessions::{self, live_access},
    testkit::{PASSWORD, TestKit},
};
use crate::auth::{
    access::{SessionsRevoke, UsersWrite},
    principal::{Principal, RejectReason, UserPrincipal},
};

/// Services whose next session start or refresh stops after its commit until
/// released. Returns them, a receiver that fires when the pause is reached,
/// and the sender that releases it.
fn paused(svc: &Services) -> (Services, oneshot::Receiver<()>, oneshot::Sender<()>) {
    let (reached_tx, reached_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let slot = Arc::new(Mutex::new(Some((reached_tx, release_rx))));
    let pause: Pause = Arc::new(move || {
        let taken = slot.lock().unwrap().take();
        Box::pin(async move {
            if let Some((reached, release)) = taken {
                let _ = reached.send(());
                let _ = release.await;
            }
        })
    });
    let mut svc = svc.clone();
    svc.hooks.before_live = Some(pause);
    (svc, reached_rx, release_tx)
}

fn principal_of(issued: &Issued) -> Principal {
    Principal::User(UserPrincipal { user_id: issued.user.id, session_id: issued.session_id, role: issued.user.role })
}

#[derive(Clone, Copy, Debug)]
enum Revocation {
    LogoutEverywhere,
    RevokeUserSessions,
    DeleteUser,
}

async fn revoke(kit: &TestKit, admin_session: &Issued, victim: &Issued, how: Revocation) {
    match how {
        Revocation::LogoutEverywhere => sessions::logout(&kit.svc, &principal_of(victim), None, true).await.unwrap(),
        Revocation::RevokeUserSessions => {
            let proof = kit.grant::<SessionsRevoke>(admin_session);
            admin::revoke_user_sessions(&kit.svc, &proof, victim.user.id).await.unwrap();
        }
        Revocation::DeleteUser => {
            let proof = kit.grant::<UsersWrite>(admin_session);
            assert!(admin::delete_user(&kit.svc, &proof, victim.user.id).await.unwrap());
        }
    }
}

#[tokio::test]
async fn a_login_revoked_between_its_commit_and_going_live_stays_revoked() {
    for how in [Revocation::LogoutEverywhere, Revocation::RevokeUserSessions, Revocation::DeleteUser] {
        let kit = TestKit::new().await;
        let (_, root) = kit.admin("root@example.com").await;
        let alice = kit.register("alice@example.com").await;
        let (svc, reached, release) = paused(&kit.svc);
        let login = tokio::spawn(async move {
            accounts::login(&svc, "alice@example.com", PASSWORD.to_owned(), &ClientInfo::default()).await
        });
        reached.await.unwrap();
        revoke(&kit, &root, &alice, how).await;
        release.send(()).unwrap();
        let late = login.await.unwrap().unwrap();
        assert!(
            matches!(live_access(&kit.svc, &late.access.token).await, Err(RejectReason::Revoked)),
            "{how:?}: the session ended in the database came back to life in memory"
        );
    }
}

#[tokio::test]
async fn a_refresh_revoked_between_its_commit_and_going_live_stays_revoked() {
    let kit = TestKit::new().await;
    let alice = kit.register("alice@example.com").await;
    let (svc, reached, release) = paused(&kit.svc);
    let token = alice.refresh_token.clone();
    let refresh = tokio::spawn(async move { sessions::refresh(&svc, &token).await });
    reached.await.unwrap();
    sessions::logout(&kit.svc, &principal_of(&alice), None, false).await.unwrap();
    release.send(()).unwrap();
    let late = refresh.await.unwrap().unwrap();
    assert!(
        matches!(live_access(&kit.svc, &late.access.token).await, Err(RejectReason::Revoked)),
        "the logged-out session came back to life in memory"
    );
}

/// Whether memory and the database agree about `issued`'s session.
async fn agree(kit: &TestKit, issued: &Issued) -> Result<(), String> {
    let row = entity::session::Entity::find_by_id(issued.session_id.uuid()).one(&kit.svc.db).await.unwrap();
    let stored_live = row.is_some_and(|s| s.revoked_at.is_none());
    let memory_live = live_access(&kit.svc, &issued.access.token).await.is_ok();
    if stored_live == memory_live {
        Ok(())
    } else {
        Err(format!("database live: {stored_live}, memory live: {memory_live}"))
    }
}

/// Logins racing each kind of revocation, and refreshes racing logouts, many
/// rounds with no hook: whatever the interleaving, memory and the database
/// agree about every session when the dust settles.
#[tokio::test]
async fn logins_and_refreshes_racing_revocations_leave_memory_and_database_in_agreement() {
    let kit = TestKit::new().await;
    let (_, root) = kit.admin("root@example.com").await;
    let rounds = 20;
    for round in 0..rounds {
        for how in [Revocation::LogoutEverywhere, Revocation::RevokeUserSessions, Revocation::DeleteUser] {
            let email = format!("r{round}-{how:?}@example.com").to_lowercase();
            let victim = kit.register(&email).await;
            let client = ClientInfo::default();
            let login = accounts::login(&kit.svc, &email, PASSWORD.to_owned(), &client);
            let (login, ()) = tokio::join!(login, revoke(&kit, &root, &victim, how));
            if let Ok(late) = login {
                agree(&kit, &late).await.map_err(|e| format!("round {round}, {how:?}: {e}")).unwrap();
            }
            agree(&kit, &victim).await.map_err(|e| format!("round {round}, {how:?}, first session: {e}")).unwrap();
        }
        let user = kit.register(&format!("refresh{round}@example.com")).await;
        let principal = principal_of(&user);
        let refresh = sessions::refresh(&kit.svc, &user.refresh_token);
        let logout = sessions::logout(&kit.svc, &principal, None, false);
        let (refreshed, logged_out) = tokio::join!(refresh, logout);
        logged_out.unwrap();
        if let Ok(late) = refreshed {
            agree(&kit, &late).await.map_err(|e| format!("round {round}, refresh: {e}")).unwrap();
        }
    }
}

/// On a database several instances share, a session this instance never heard
/// of is read from the database once: a live one is accepted and kept, an
/// ended one refused and remembered, so its token costs no further query.
#[tokio::test]
async fn an_unknown_session_is_read_once_and_remembered() {
    let kit = TestKit::new().await;
    if kit.svc.db.get_database_backend() != sea_orm::DbBackend::Postgres {
        return; // One instance per SQLite file: it knows every session.
    }
    let alice = kit.register("alice@example.com").await;
    let bob = kit.register("bob@example.com").await;
    sessions::logout(&kit.svc, &principal_of(&bob), None, false).await.unwrap();
    // Another instance: the same database, a registry of its own.
    let mut other = kit.svc.clone();
    other.registry = Arc::default();
    let now = other.clock.unix();
    assert!(live_access(&other, &alice.access.token).await.is_ok());
    assert_eq!(
        other.registry.lookup(alice.session_id, alice.user.id, now),
        super::store::Lookup::Live(alice.user.role)
    );
    assert!(matches!(live_access(&other, &bob.access.token).await, Err(RejectReason::Revoked)));
    assert_eq!(other.registry.lookup(bob.session_id, bob.user.id, now), super::store::Lookup::Ended);
}
