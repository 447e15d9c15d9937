//! In-process tests of the business rules: [`TestKit`] builds [`Services`] on
//! a fresh, migrated database (a temporary SQLite file, or a fresh PostgreSQL
//! database under `TEST_DATABASE_URL`, which CI's clean-up drops by its
//! `authgraph_t_` prefix) with a clock the test moves, and calls the service
//! functions directly: no HTTP, no GraphQL.

use std::{sync::Arc, time::Duration};

use sea_orm::{ConnectionTrait, Database};

use entity::user::Role;

use super::{ClientInfo, Issued, Services, SessionPolicy, admin, core::store, signin::accounts};
use crate::{
    auth::{
        access::{Granted, Permission},
        password::PasswordHasher,
        principal::{Principal, UserPrincipal},
        rate_limit::RateLimits,
        secrets::OneTimeSecrets,
        tokens::TokenKeys,
    },
    clock::ClockControl,
    config::{PasswordParams, QuotaSpec, RateLimitConfig},
    db,
    domain::{Account, SessionId},
    secret::Secret,
};

pub const PASSWORD: &str = "correct horse battery";

pub struct TestKit {
    pub svc: Services,
    pub clock: ClockControl,
    /// Keeps a SQLite database's directory alive for the test.
    _dir: Option<tempfile::TempDir>,
    _mail_dir: tempfile::TempDir,
}

impl TestKit {
    pub async fn new() -> Self {
        Self::with_policy(SessionPolicy {
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            reuse_grace: Duration::from_secs(10),
            idle_timeout: None,
        })
        .await
    }

    pub async fn with_policy(policy: SessionPolicy) -> Self {
        let (url, dir) = match std::env::var("TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) {
            Some(admin_url) => {
                let name = format!("authgraph_t_{}", uuid::Uuid::new_v4().simple());
                let admin = Database::connect(&admin_url).await.expect("connect TEST_DATABASE_URL");
                admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create test database");
                admin.close().await.ok();
                let base = admin_url.rsplit_once('/').map_or(admin_url.clone(), |(b, _)| b.to_owned());
                (format!("{base}/{name}"), None)
            }
            None => {
                let dir = tempfile::tempdir().expect("tempdir");
                (format!("sqlite://{}?mode=rwc", dir.path().join("kit.db").display()), Some(dir))
            }
        };
        // The pool production has: one connection on SQLite, so that a read
        // outside a write transaction that waits for it shows up here too.
        let connections = if dir.is_some() { 1 } else { 4 };
        let conn = db::connect(&url, Duration::from_secs(5), connections).await.expect("connect");
        db::migrate(&conn).await.expect("migrate");
        let secret = Secret::new(vec![7; 32]);
        let clock = ClockControl::new();
        let unlimited: QuotaSpec = "100000/1s".parse().expect("quota");
        let mail_dir = tempfile::tempdir().expect("tempdir");
        let svc = Services {
            db: conn,
            hasher: PasswordHasher::new(&PasswordParams {
                memory_kib: 19 * 1024,
                iterations: 2,
                parallelism: 1,
                threads: 2,
                queue_depth: 32,
            })
            .expect("hasher"),
            tokens: TokenKeys::new(&secret, "authgraph", "authgraph", Duration::from_secs(900)),
            signing: None,
            secrets: OneTimeSecrets::new(&secret),
            registry: Arc::default(),
            limits: Arc::new(RateLimits::new(
                &RateLimitConfig {
                    login_per_ip: unlimited,
                    register_per_ip: unlimited,
                    refresh_per_ip: unlimited,
                    login_per_account: unlimited,
                    mail_per_ip: unlimited,
                    link_per_ip: unlimited,
                    write_per_ip: unlimited,
                    write_per_account: unlimited,
                    mail_per_recipient: vec![unlimited],
                },
                clock.clock(),
            )),
            api_key_usage: Arc::default(),
            mail: Arc::new(
                crate::mail::Mailer::new(&crate::config::MailConfig::files(mail_dir.path().to_path_buf()))
                    .expect("mailer"),
            ),
            events: Arc::new(super::core::events::EventLog::new(Duration::from_secs(90 * 24 * 3600))),
            second_factor: Arc::new(
                super::core::factors::SecondFactors::new(&crate::config::SecondFactorConfig::local(), &secret)
                    .expect("second factors"),
            ),
            watch_recheck: super::core::watch::RECHECK,
            policy,
            clock: clock.clock(),
            hooks: Default::default(),
        };
        Self { svc, clock, _dir: dir, _mail_dir: mail_dir }
    }

    /// Registers `email` (password [`PASSWORD`]) and returns its first session.
    pub async fn register(&self, email: &str) -> Issued {
        let new = accounts::NewAccount { email: email.to_owned(), password: PASSWORD.to_owned(), name: None };
        accounts::register(&self.svc, new, &ClientInfo::default()).await.expect("register")
    }

    /// An admin account (created as `authgraph create-admin` does) and a session of it.
    pub async fn admin(&self, email: &str) -> (Account, Issued) {
        let (account, _) = admin::create_or_promote_admin(&self.svc, email, None, || Ok(PASSWORD.to_owned()))
            .await
            .expect("create admin");
        let issued = accounts::login(&self.svc, email, PASSWORD.to_owned(), &ClientInfo::default())
            .await
            .and_then(crate::service::signin::LoginOutcome::into_issued)
            .expect("admin login");
        (account, issued)
    }

    /// The proof of permission `P` held by the user of `issued`.
    pub async fn grant<P: Permission>(&self, issued: &Issued) -> Granted<P> {
        let role = self.role(issued, issued.session_id).await.expect("live");
        let principal = Principal::User(UserPrincipal { user_id: issued.user.id, session_id: issued.session_id, role });
        principal.grant::<P>().expect("permission")
    }

    /// Whether `session` of `issued`'s user is let through now (from memory,
    /// or from the database when memory does not hold it).
    pub async fn live(&self, issued: &Issued, session: SessionId) -> bool {
        self.role(issued, session).await.is_some()
    }

    /// The role a request of `session` of `issued`'s user runs with now.
    pub async fn role(&self, issued: &Issued, session: SessionId) -> Option<Role> {
        store::session_role(&self.svc, session, issued.user.id).await
    }
}
