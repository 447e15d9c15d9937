//! The business rules, tested in process on a fresh database ([`TestKit`]):
//! refresh-token rotation, grace and reuse; the last-admin rule; API-key
//! rotation; and what each change does to the live-session registry. The
//! black-box suite (`tests/api`) proves the same through HTTP; these pin the
//! rules where they live, and run on both backends.

use std::time::Duration;

use entity::user::Role;

use super::{
    ClientInfo, admin,
    admin::api_keys,
    core::users,
    sessions::{self, TokenInfo},
    testkit::{PASSWORD, TestKit},
};
use crate::{
    auth::{
        access::{AdminOnly, ApiScope, SessionsRevoke, TokensIntrospect, UsersWrite},
        principal::{Principal, RejectReason},
    },
    error::{AppError, Reason},
};

fn reason(err: AppError) -> Option<Reason> {
    err.reason()
}

#[tokio::test]
async fn a_refresh_token_rotates_once_and_its_reuse_ends_the_session() {
    let kit = TestKit::new().await;
    let first = kit.register("rotate@example.com").await;
    let t0 = first.refresh_token.clone();

    let second = sessions::refresh(&kit.svc, &t0, &ClientInfo::default()).await.unwrap();
    assert_eq!(second.session_id, first.session_id, "rotation keeps the session");
    let t1 = second.refresh_token.clone();
    assert_ne!(t1, t0);

    // Inside the grace window, the rotated token leads to the same successor
    // (a second tab that still held it), and nothing is ended.
    kit.clock.advance(Duration::from_secs(9));
    let again = sessions::refresh(&kit.svc, &t0, &ClientInfo::default()).await.unwrap();
    assert_eq!(again.refresh_token, t1);
    assert!(kit.live(&first, first.session_id).await);

    // The successor rotates on; past the window the first token is a copy.
    let third = sessions::refresh(&kit.svc, &t1, &ClientInfo::default()).await.unwrap();
    kit.clock.advance(Duration::from_secs(2));
    let reused = sessions::refresh(&kit.svc, &t0, &ClientInfo::default()).await.unwrap_err();
    assert_eq!(reason(reused), Some(Reason::RefreshTokenReused));
    // The whole session is over: the live token and access tokens alike.
    let after = sessions::refresh(&kit.svc, &third.refresh_token, &ClientInfo::default()).await.unwrap_err();
    assert_eq!(reason(after), Some(Reason::TokenRevoked));
    assert!(!kit.live(&first, first.session_id).await);
    assert!(matches!(sessions::live_access(&kit.svc, &third.access.token).await, Err(RejectReason::Revoked)));
}

#[tokio::test]
async fn a_session_ends_at_its_lifetime_and_when_idle() {
    let kit = TestKit::with_policy(super::SessionPolicy {
        refresh_ttl: Duration::from_secs(3600),
        reuse_grace: Duration::from_secs(10),
        idle_timeout: Some(Duration::from_secs(600)),
    })
    .await;
    let a = kit.register("idle@example.com").await;
    kit.clock.advance(Duration::from_secs(599));
    let a1 = sessions::refresh(&kit.svc, &a.refresh_token, &ClientInfo::default()).await.unwrap();
    kit.clock.advance(Duration::from_secs(601));
    let idle = sessions::refresh(&kit.svc, &a1.refresh_token, &ClientInfo::default()).await.unwrap_err();
    assert_eq!(reason(idle), Some(Reason::RefreshTokenExpired));
    assert!(!kit.live(&a, a.session_id).await, "an idle session is ended, not only refused");

    let b = kit.register("old@example.com").await;
    let mut token = b.refresh_token;
    for _ in 0..6 {
        kit.clock.advance(Duration::from_secs(500));
        token = sessions::refresh(&kit.svc, &token, &ClientInfo::default()).await.unwrap().refresh_token;
    }
    kit.clock.advance(Duration::from_secs(601));
    let expired = sessions::refresh(&kit.svc, &token, &ClientInfo::default()).await.unwrap_err();
    assert_eq!(reason(expired), Some(Reason::RefreshTokenExpired), "past the absolute lifetime, use or not");
}

#[tokio::test]
async fn the_last_admin_can_be_neither_demoted_nor_deleted() {
    let kit = TestKit::new().await;
    let (root, root_session) = kit.admin("root@example.com").await;
    let member = kit.register("member@example.com").await;
    let admin_proof = kit.grant::<AdminOnly>(&root_session).await;

    let err = admin::set_role(&kit.svc, &admin_proof, root.id, Role::User, &ClientInfo::default()).await.unwrap_err();
    assert_eq!(reason(err), Some(Reason::LastAdmin));
    let err =
        admin::delete_user(&kit.svc, &kit.grant::<UsersWrite>(&root_session).await, root.id, &ClientInfo::default())
            .await
            .unwrap_err();
    assert_eq!(reason(err), Some(Reason::LastAdmin));

    // With a second admin, the first may step down.
    let promoted =
        admin::set_role(&kit.svc, &admin_proof, member.user.id, Role::Admin, &ClientInfo::default()).await.unwrap();
    assert_eq!(promoted.role, Role::Admin);
    assert_eq!(kit.role(&member, member.session_id).await, Some(Role::Admin));
    let demoted = admin::set_role(&kit.svc, &admin_proof, root.id, Role::User, &ClientInfo::default()).await.unwrap();
    assert_eq!(demoted.role, Role::User);
    // The demoted admin's live session sees the change at once.
    assert_eq!(kit.role(&root_session, root_session.session_id).await, Some(Role::User));
}

#[tokio::test]
async fn an_api_key_rotates_once_and_the_old_secret_lives_out_its_grace() {
    let kit = TestKit::new().await;
    let (_, root) = kit.admin("keys@example.com").await;
    let proof = kit.grant::<AdminOnly>(&root).await;
    let (key, old_secret) =
        api_keys::create(&kit.svc, &proof, "billing", &[ApiScope::TokensIntrospect], Some(90), &ClientInfo::default())
            .await
            .unwrap();

    let (successor, new_secret) = api_keys::rotate(&kit.svc, &proof, key.id, 1, &ClientInfo::default()).await.unwrap();
    assert_eq!(successor.name, "billing");
    assert_eq!(successor.scopes, vec![ApiScope::TokensIntrospect]);
    let again = api_keys::rotate(&kit.svc, &proof, key.id, 1, &ClientInfo::default()).await.unwrap_err();
    assert_eq!(reason(again), Some(Reason::AlreadyRotated));

    // Both secrets work inside the grace day; only the new one after it.
    assert!(api_keys::authenticate(&kit.svc, &old_secret).await.is_ok());
    kit.clock.advance(Duration::from_secs(24 * 3600 + 1));
    assert!(matches!(
        api_keys::authenticate(&kit.svc, &old_secret).await,
        Err(api_keys::AuthFailure::Rejected(RejectReason::Expired))
    ));
    let service = api_keys::authenticate(&kit.svc, &new_secret).await.unwrap();
    assert_eq!(service.key_id, successor.id);

    // The successor can be rotated in turn; a revoked key cannot.
    api_keys::rotate(&kit.svc, &proof, successor.id, 0, &ClientInfo::default()).await.unwrap();
    let (other, _) = api_keys::create(&kit.svc, &proof, "other", &[ApiScope::UsersRead], None, &ClientInfo::default())
        .await
        .unwrap();
    assert!(api_keys::revoke(&kit.svc, &proof, other.id, &ClientInfo::default()).await.unwrap());
    let gone = api_keys::rotate(&kit.svc, &proof, other.id, 0, &ClientInfo::default()).await.unwrap_err();
    assert_eq!(reason(gone), Some(Reason::NotFound));
}

/// Every change of a user or a session reaches the registry, which is what
/// refuses an access token at once.
#[tokio::test]
async fn the_registry_follows_every_change() {
    let kit = TestKit::new().await;
    let (_, root) = kit.admin("root@example.com").await;
    let a = kit.register("alice@example.com").await;
    let a2 = super::signin::accounts::login(&kit.svc, "alice@example.com", PASSWORD.to_owned(), &ClientInfo::default())
        .await
        .and_then(super::signin::LoginOutcome::into_issued)
        .unwrap();
    assert!(kit.live(&a, a.session_id).await && kit.live(&a, a2.session_id).await);

    // Logout ends one session.
    let principal = Principal::User(crate::auth::principal::UserPrincipal {
        user_id: a.user.id,
        session_id: a.session_id,
        role: Role::User,
    });
    sessions::logout(&kit.svc, &principal, None, false, &ClientInfo::default()).await.unwrap();
    assert!(!kit.live(&a, a.session_id).await);
    assert!(kit.live(&a, a2.session_id).await);

    // A profile change replaces the registry's copy.
    let change = super::signin::accounts::ProfileChange { name: Some("Alice".into()), email: None };
    let me = crate::auth::principal::UserPrincipal { user_id: a.user.id, session_id: a.session_id, role: Role::User };
    super::signin::accounts::update_profile(&kit.svc, &me, &ClientInfo::default(), change).await.unwrap();
    assert_eq!(users::me(&kit.svc, a.user.id).await.unwrap().name, "Alice");

    // A password change ends every other session.
    let a3 = super::signin::accounts::login(&kit.svc, "alice@example.com", PASSWORD.to_owned(), &ClientInfo::default())
        .await
        .and_then(super::signin::LoginOutcome::into_issued)
        .unwrap();
    super::signin::accounts::change_password(
        &kit.svc,
        a.user.id,
        a3.session_id,
        &ClientInfo::default(),
        PASSWORD.to_owned(),
        "new horse battery".into(),
    )
    .await
    .unwrap();
    assert!(!kit.live(&a, a2.session_id).await);
    assert!(kit.live(&a, a3.session_id).await);

    // A forced logout ends the rest; introspection agrees.
    let ended = admin::revoke_user_sessions(
        &kit.svc,
        &kit.grant::<SessionsRevoke>(&root).await,
        a.user.id,
        &ClientInfo::default(),
    )
    .await
    .unwrap();
    assert_eq!(ended, 1);
    assert!(!kit.live(&a, a3.session_id).await);
    let b = kit.register("bob@example.com").await;
    let key_proof = kit.grant::<AdminOnly>(&root).await;
    let (_, secret) =
        api_keys::create(&kit.svc, &key_proof, "gateway", &[ApiScope::TokensIntrospect], None, &ClientInfo::default())
            .await
            .unwrap();
    let service = Principal::Service(api_keys::authenticate(&kit.svc, &secret).await.unwrap());
    let introspect = service.grant::<TokensIntrospect>().unwrap();
    let TokenInfo { active, .. } = sessions::introspect(&kit.svc, &introspect, &a3.access.token).await;
    assert!(!active);
    assert!(sessions::introspect(&kit.svc, &introspect, &b.access.token).await.active);

    // Deleting the user forgets them.
    assert!(
        admin::delete_user(&kit.svc, &kit.grant::<UsersWrite>(&root).await, b.user.id, &ClientInfo::default())
            .await
            .unwrap()
    );
    assert!(!kit.live(&b, b.session_id).await);
    assert!(users::account(&kit.svc, b.user.id).await.unwrap().is_none());
    assert!(!sessions::introspect(&kit.svc, &introspect, &b.access.token).await.active);
}

/// The purge deletes sessions ended over a day ago and, on PostgreSQL, prunes
/// the change log and the shared budgets that are full again, without error.
#[tokio::test]
async fn the_purge_clears_what_has_ended() {
    let kit = TestKit::new().await;
    let a = kit.register("purged@example.com").await;
    let principal = Principal::User(crate::auth::principal::UserPrincipal {
        user_id: a.user.id,
        session_id: a.session_id,
        role: Role::User,
    });
    sessions::logout(&kit.svc, &principal, None, false, &ClientInfo::default()).await.unwrap();
    super::core::limits::spend_account(&kit.svc, "purged@example.com").await.unwrap();
    kit.clock.advance(Duration::from_secs(25 * 3600));
    let sessions_purged = |deleted: Vec<(&str, u64)>| deleted.into_iter().find(|(t, _)| *t == "sessions").unwrap().1;
    assert_eq!(sessions_purged(super::jobs::purge(&kit.svc).await.unwrap()), 1);
    assert_eq!(sessions_purged(super::jobs::purge(&kit.svc).await.unwrap()), 0);
}
