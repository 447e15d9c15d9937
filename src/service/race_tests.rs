//! A revoked session never comes back to life in memory. A login or refresh
//! commits its session, then tells the registry; a revocation that lands in
//! between (logout, `revokeUserSessions`, deletion) must win. The first tests
//! hold the login or refresh at that point with a hook and revoke in the gap;
//! the last ones race the two freely, many rounds, and check that memory and
//! the database agree about every session.

use std::sync::{Arc, Mutex};

use sea_orm::EntityTrait;
use tokio::sync::oneshot;

use entity::user::Role;

use super::{
    ClientInfo, Issued, Pause, Services, admin,
    core::store::{Lookup, SessionRegistry},
    sessions::{self, live_access},
    signin::{LoginOutcome, accounts},
    testkit::{PASSWORD, TestKit},
};
use crate::auth::{
    access::{AdminOnly, SessionsRevoke, UsersWrite},
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
        Revocation::LogoutEverywhere => {
            sessions::logout(&kit.svc, &principal_of(victim), None, true, &ClientInfo::default()).await.unwrap()
        }
        Revocation::RevokeUserSessions => {
            let proof = kit.grant::<SessionsRevoke>(admin_session).await;
            admin::revoke_user_sessions(&kit.svc, &proof, victim.user.id, &ClientInfo::default()).await.unwrap();
        }
        Revocation::DeleteUser => {
            let proof = kit.grant::<UsersWrite>(admin_session).await;
            assert!(admin::delete_user(&kit.svc, &proof, victim.user.id, &ClientInfo::default()).await.unwrap());
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
            accounts::login(&svc, "alice@example.com", PASSWORD.to_owned(), &ClientInfo::default())
                .await
                .and_then(LoginOutcome::into_issued)
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
    let refresh = tokio::spawn(async move { sessions::refresh(&svc, &token, &ClientInfo::default()).await });
    reached.await.unwrap();
    sessions::logout(&kit.svc, &principal_of(&alice), None, false, &ClientInfo::default()).await.unwrap();
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
            let login = async {
                accounts::login(&kit.svc, &email, PASSWORD.to_owned(), &client)
                    .await
                    .and_then(LoginOutcome::into_issued)
            };
            let (login, ()) = tokio::join!(login, revoke(&kit, &root, &victim, how));
            if let Ok(late) = login {
                agree(&kit, &late).await.map_err(|e| format!("round {round}, {how:?}: {e}")).unwrap();
            }
            agree(&kit, &victim).await.map_err(|e| format!("round {round}, {how:?}, first session: {e}")).unwrap();
        }
        let user = kit.register(&format!("refresh{round}@example.com")).await;
        let principal = principal_of(&user);
        let client = ClientInfo::default();
        let refresh = sessions::refresh(&kit.svc, &user.refresh_token, &client);
        let logout = sessions::logout(&kit.svc, &principal, None, false, &client);
        let (refreshed, logged_out) = tokio::join!(refresh, logout);
        logged_out.unwrap();
        if let Ok(late) = refreshed {
            agree(&kit, &late).await.map_err(|e| format!("round {round}, refresh: {e}")).unwrap();
        }
    }
}

/// A session the registry does not hold (started on another instance, or
/// before a restart, or evicted) is read from the database once: a live one is
/// accepted and cached, an ended one refused and remembered, so its token
/// costs no further query.
#[tokio::test]
async fn an_unknown_session_is_read_once_and_remembered() {
    let kit = TestKit::new().await;
    let alice = kit.register("alice@example.com").await;
    let bob = kit.register("bob@example.com").await;
    sessions::logout(&kit.svc, &principal_of(&bob), None, false, &ClientInfo::default()).await.unwrap();
    // Another instance, or this one restarted: the same database, an empty registry.
    let other = with_registry(&kit.svc, SessionRegistry::default());
    let now = other.clock.unix();
    assert_eq!(other.registry.lookup(alice.session_id, alice.user.id, now), Lookup::Unknown);
    assert!(live_access(&other, &alice.access.token).await.is_ok());
    assert_eq!(other.registry.lookup(alice.session_id, alice.user.id, now), Lookup::Live(alice.user.role));
    assert!(matches!(live_access(&other, &bob.access.token).await, Err(RejectReason::Revoked)));
    assert_eq!(other.registry.lookup(bob.session_id, bob.user.id, now), Lookup::Ended);
}

fn with_registry(svc: &Services, registry: SessionRegistry) -> Services {
    let mut other = svc.clone();
    other.registry = Arc::new(registry);
    other
}

/// A read of a session from the database that a logout overtakes (the
/// logout commits and is applied between the read and the fill) must not
/// cache the session as live.
#[tokio::test]
async fn a_session_read_before_its_end_is_not_cached_after_it() {
    let kit = TestKit::new().await;
    let alice = kit.register("alice@example.com").await;
    let cold = with_registry(&kit.svc, SessionRegistry::default());
    let (paused_svc, reached, release) = paused(&cold);
    let token = alice.access.token.clone();
    let read = tokio::spawn(async move { live_access(&paused_svc, &token).await.is_ok() });
    reached.await.unwrap();
    sessions::logout(&cold, &principal_of(&alice), None, false, &ClientInfo::default()).await.unwrap();
    release.send(()).unwrap();
    read.await.unwrap();
    assert!(
        matches!(live_access(&cold, &alice.access.token).await, Err(RejectReason::Revoked)),
        "the logged-out session was cached as live"
    );
}

/// A read of a user that a demotion overtakes must not cache the old role:
/// the request in flight may run with it (it read the row before the change),
/// but no request after the change does.
#[tokio::test]
async fn a_role_read_before_a_demotion_is_not_cached_after_it() {
    let kit = TestKit::new().await;
    let (_, root) = kit.admin("root@example.com").await;
    let (_, second) = kit.admin("second@example.com").await;
    let cold = with_registry(&kit.svc, SessionRegistry::default());
    let (paused_svc, reached, release) = paused(&cold);
    let token = second.access.token.clone();
    let read = tokio::spawn(async move { live_access(&paused_svc, &token).await.map(|(_, role)| role) });
    reached.await.unwrap();
    let proof = kit.grant::<AdminOnly>(&root).await;
    admin::set_role(&cold, &proof, second.user.id, Role::User, &ClientInfo::default()).await.unwrap();
    release.send(()).unwrap();
    assert_eq!(read.await.unwrap().ok(), Some(Role::Admin), "the request in flight read the row before the change");
    let (_, role) = live_access(&cold, &second.access.token).await.unwrap();
    assert_eq!(role, Role::User, "the old role was cached after the demotion");
}

/// With room for a few sessions only, every session is still judged right:
/// what was evicted is read again, and what ended stays ended.
#[tokio::test]
async fn a_small_cache_judges_every_session_right() {
    let kit = TestKit::new().await;
    let small = with_registry(&kit.svc, SessionRegistry::new(4, 60 * 60));
    let mut users = Vec::new();
    for i in 0..24 {
        users.push(kit.register(&format!("u{i}@example.com")).await);
    }
    for user in users.iter().step_by(2) {
        sessions::logout(&small, &principal_of(user), None, false, &ClientInfo::default()).await.unwrap();
    }
    for round in 0..3 {
        for (i, user) in users.iter().enumerate() {
            let live = live_access(&small, &user.access.token).await.is_ok();
            assert_eq!(live, i % 2 == 1, "round {round}, user {i}");
        }
    }
    let (sessions, profiles) = small.registry.cached();
    assert!(sessions <= 8 && profiles <= 8, "{sessions} sessions and {profiles} profiles cached");
}
