//! The security event log: what happened to accounts, who did it and from
//! where, written in the transaction of the change it records (so an event is
//! never missing for a change that happened, nor present for one that rolled
//! back). A failed login changes nothing and is written on its own.
//!
//! Rate-limit refusals are counted in memory and written once a minute as one
//! `RATE_LIMITED` event per budget and client, with the count, so a flood
//! cannot fill the disk ([`Refusals`]). Events hold no password, token or
//! hash; they are deleted after `SECURITY_EVENT_RETENTION`.

use std::{collections::HashMap, net::IpAddr, sync::Mutex, time::Duration};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
use uuid::Uuid;

use entity::security_event;

use crate::service::{ClientInfo, Services};
use crate::{
    auth::access::{self, AuditRead, Granted},
    domain::{ApiKeyId, SessionId, UserId},
    error::AppResult,
};

macro_rules! kinds {
    ($($variant:ident => $wire:literal,)+) => {
        /// What happened. The wire name is what the table stores and the API
        /// shows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventKind {
            $($variant,)+
        }

        impl EventKind {
            pub const ALL: &[EventKind] = &[$(EventKind::$variant,)+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $wire,)+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|k| k.as_str() == s)
            }
        }
    };
}

kinds! {
    LoginSucceeded => "LOGIN_SUCCEEDED",
    LoginFailed => "LOGIN_FAILED",
    SecondFactorRequired => "SECOND_FACTOR_REQUIRED",
    Registered => "REGISTERED",
    RefreshTokenReused => "REFRESH_TOKEN_REUSED",
    LoggedOut => "LOGGED_OUT",
    SessionRevoked => "SESSION_REVOKED",
    SessionsRevoked => "SESSIONS_REVOKED",
    PasswordChanged => "PASSWORD_CHANGED",
    PasswordChangeFailed => "PASSWORD_CHANGE_FAILED",
    PasswordReset => "PASSWORD_RESET",
    EmailVerified => "EMAIL_VERIFIED",
    EmailChanged => "EMAIL_CHANGED",
    RoleChanged => "ROLE_CHANGED",
    UserDeleted => "USER_DELETED",
    ApiKeyCreated => "API_KEY_CREATED",
    ApiKeyRotated => "API_KEY_ROTATED",
    ApiKeyRevoked => "API_KEY_REVOKED",
    RateLimited => "RATE_LIMITED",
    SecondFactorEnabled => "SECOND_FACTOR_ENABLED",
    SecondFactorDisabled => "SECOND_FACTOR_DISABLED",
    SecondFactorReset => "SECOND_FACTOR_RESET",
    RecoveryCodeUsed => "RECOVERY_CODE_USED",
    RecoveryCodesRegenerated => "RECOVERY_CODES_REGENERATED",
    Reauthenticated => "REAUTHENTICATED",
    ReauthenticationFailed => "REAUTHENTICATION_FAILED",
    PasskeyAdded => "PASSKEY_ADDED",
    PasskeyRemoved => "PASSKEY_REMOVED",
}

/// Who did it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The account's holder, signed in (or proving it with a password or a
    /// mailed link).
    User(UserId),
    /// An admin, on someone's account.
    Admin(UserId),
    /// A service, with this API key.
    Service(ApiKeyId),
    /// authgraph itself (a refusal tally, a reuse it detected).
    System,
    /// Nobody known (a failed login).
    Anonymous,
}

impl Actor {
    /// The stored kind (`user`, `admin`, `service`, `system`, `anonymous`) and id.
    pub fn parts(self) -> (&'static str, Option<Uuid>) {
        match self {
            Actor::User(id) => ("user", Some(id.uuid())),
            Actor::Admin(id) => ("admin", Some(id.uuid())),
            Actor::Service(id) => ("service", Some(id.uuid())),
            Actor::System => ("system", None),
            Actor::Anonymous => ("anonymous", None),
        }
    }
}

impl From<access::Actor> for Actor {
    fn from(a: access::Actor) -> Self {
        match a {
            access::Actor::Admin(id) => Actor::Admin(id),
            access::Actor::Service(id) => Actor::Service(id),
        }
    }
}

/// One event to record.
pub struct Event<'a> {
    pub kind: EventKind,
    /// The account it is about.
    pub user: Option<UserId>,
    pub actor: Actor,
    pub session: Option<SessionId>,
    /// Where the request came from.
    pub client: &'a ClientInfo,
    /// A reason, a count or a change (`USER -> ADMIN`); never a secret.
    pub detail: Option<String>,
}

impl<'a> Event<'a> {
    /// An event of `kind` about `user`, done by `actor`, from `client`.
    pub fn new(kind: EventKind, user: Option<UserId>, actor: Actor, client: &'a ClientInfo) -> Self {
        Self { kind, user, actor, session: None, client, detail: None }
    }

    pub fn session(mut self, session: SessionId) -> Self {
        self.session = Some(session);
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

fn clip(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// Writes `event` on `conn` (the transaction of the change it records).
pub async fn record(svc: &Services, conn: &impl ConnectionTrait, event: Event<'_>) -> AppResult<()> {
    let (actor_kind, actor_id) = event.actor.parts();
    security_event::Entity::insert(security_event::ActiveModel {
        id: Set(Uuid::now_v7()),
        occurred_at: Set(svc.clock.now()),
        kind: Set(event.kind.as_str().to_owned()),
        user_id: Set(event.user.map(UserId::uuid)),
        actor_kind: Set(actor_kind.to_owned()),
        actor_id: Set(actor_id),
        session_id: Set(event.session.map(SessionId::uuid)),
        ip: Set(event.client.ip.map(|ip| ip.to_string())),
        user_agent: Set(event.client.user_agent.as_deref().map(|ua| clip(ua, 512))),
        detail: Set(event.detail.as_deref().map(|d| clip(d, 256))),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

/// Most budget-and-client pairs tallied between two flushes; past it, the
/// refusals are counted under one pair without a client.
const MAX_TALLIED: usize = 1024;

/// The log's state in memory: the rate-limit refusals since the last flush,
/// and how long events are kept.
pub struct EventLog {
    refusals: Mutex<HashMap<(&'static str, Option<IpAddr>), u64>>,
    /// `SECURITY_EVENT_RETENTION`.
    pub retention: Duration,
}

impl EventLog {
    pub fn new(retention: Duration) -> Self {
        Self { refusals: Mutex::default(), retention }
    }

    /// Counts one refusal of `budget` (`login`, `account`, `mail`, …) for `ip`.
    pub fn refused(&self, budget: &'static str, ip: Option<IpAddr>) {
        let mut tally = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let key = if tally.len() >= MAX_TALLIED && !tally.contains_key(&(budget, ip)) {
            (budget, None)
        } else {
            (budget, ip)
        };
        *tally.entry(key).or_default() += 1;
    }

    fn take(&self) -> HashMap<(&'static str, Option<IpAddr>), u64> {
        std::mem::take(&mut *self.refusals.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Writes the refusals counted since the last call, one `RATE_LIMITED` event
/// per budget and client (`detail`: `login: 57 refused`). Returns how many.
/// Errors: the database (the counts are then lost, and logged).
pub async fn flush_refusals(svc: &Services) -> AppResult<usize> {
    let tally = svc.events.take();
    let n = tally.len();
    for ((budget, ip), count) in tally {
        let client = ClientInfo { ip, user_agent: None };
        let event = Event::new(EventKind::RateLimited, None, Actor::System, &client)
            .detail(format!("{budget}: {count} refused"));
        record(svc, &svc.db, event).await?;
    }
    Ok(n)
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub user: Option<UserId>,
    pub kind: Option<EventKind>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// A page of events, newest first.
pub struct EventPage {
    pub events: Vec<security_event::Model>,
    /// Whether older events follow.
    pub has_next: bool,
}

/// Events matching `filter`, newest first: `first` of them (at most 100)
/// older than the event `after` (a cursor: an event's id).
async fn list(svc: &Services, filter: &EventFilter, first: u64, after: Option<Uuid>) -> AppResult<EventPage> {
    let mut q = security_event::Entity::find();
    if let Some(user) = filter.user {
        q = q.filter(security_event::Column::UserId.eq(user.uuid()));
    }
    if let Some(kind) = filter.kind {
        q = q.filter(security_event::Column::Kind.eq(kind.as_str()));
    }
    if let Some(since) = filter.since {
        q = q.filter(security_event::Column::OccurredAt.gte(since));
    }
    if let Some(until) = filter.until {
        q = q.filter(security_event::Column::OccurredAt.lt(until));
    }
    if let Some(after) = after {
        q = q.filter(security_event::Column::Id.lt(after));
    }
    let mut events = q.order_by_desc(security_event::Column::Id).limit(first + 1).all(&svc.db).await?;
    let has_next = events.len() as u64 > first;
    events.truncate(usize::try_from(first).unwrap_or(usize::MAX));
    Ok(EventPage { events, has_next })
}

/// `User.securityEvents`: the events of `user`'s account, for its holder or
/// an admin.
///
/// `as_owner`: the account's holder is reading. An event an administrator
/// or a service caused on the account then says who acted (`actorType`), not
/// where from: the actor's address, user agent and id are left out (an
/// admin reading the account, or `auditEvents`, sees them).
pub async fn own(
    svc: &Services,
    user: UserId,
    first: u64,
    after: Option<Uuid>,
    as_owner: bool,
) -> AppResult<EventPage> {
    let mut page = list(svc, &EventFilter { user: Some(user), ..EventFilter::default() }, first, after).await?;
    if as_owner {
        for event in &mut page.events {
            if matches!(event.actor_kind.as_str(), "admin" | "service") {
                event.ip = None;
                event.user_agent = None;
                event.actor_id = None;
            }
        }
    }
    Ok(page)
}

/// `auditEvents`: every event matching `filter` (admins, and API keys with
/// `AUDIT_READ`).
pub async fn audit(
    svc: &Services,
    _proof: &Granted<AuditRead>,
    filter: &EventFilter,
    first: u64,
    after: Option<Uuid>,
) -> AppResult<EventPage> {
    list(svc, filter, first, after).await
}

/// Deletes the events older than the retention. Returns how many.
pub async fn purge(svc: &Services, now: DateTime<Utc>) -> AppResult<u64> {
    let keep = ChronoDuration::from_std(svc.events.retention).unwrap_or(ChronoDuration::MAX);
    let cutoff = now.checked_sub_signed(keep).unwrap_or(DateTime::<Utc>::MIN_UTC);
    let res = security_event::Entity::delete_many()
        .filter(security_event::Column::OccurredAt.lt(cutoff))
        .exec(&svc.db)
        .await?;
    Ok(res.rows_affected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::testkit::TestKit;

    /// Events older than the retention go with the purge; newer ones stay.
    #[tokio::test]
    async fn events_are_kept_for_the_retention_only() {
        let kit = TestKit::new().await;
        let a = kit.register("old@example.com").await;
        let count = |kit: &TestKit| {
            let db = kit.svc.db.clone();
            async move { security_event::Entity::find().all(&db).await.unwrap().len() }
        };
        assert_eq!(count(&kit).await, 1, "the registration");
        kit.clock.advance(Duration::from_secs(89 * 24 * 3600));
        let b = kit.register("new@example.com").await;
        assert_eq!(purge(&kit.svc, kit.svc.clock.now()).await.unwrap(), 0);
        kit.clock.advance(Duration::from_secs(2 * 24 * 3600));
        assert_eq!(purge(&kit.svc, kit.svc.clock.now()).await.unwrap(), 1, "the 91-day-old event");
        let left = security_event::Entity::find().all(&kit.svc.db).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].user_id, Some(b.user.id.uuid()));
        assert_ne!(left[0].user_id, Some(a.user.id.uuid()));
    }
}
