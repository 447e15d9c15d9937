//! The security event log: `me.securityEvents` (a user's own events) and
//! `auditEvents` (every event, for admins and API keys with `AUDIT_READ`), as
//! Relay cursor connections, newest first.

use async_graphql::{
    Context, Enum, ID, InputObject, Object, Result, SimpleObject,
    connection::{Connection, Edge},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use entity::security_event;

use super::{request, services, types::parse_id};
use crate::{
    auth::access::AuditRead,
    error::{AppError, Reason},
    service::{
        admin::{PAGE_DEFAULT, PAGE_MAX},
        core::events::{self, EventFilter, EventKind, EventPage},
    },
};

macro_rules! event_types {
    ($($variant:ident,)+) => {
        /// What happened (`SecurityEvent.type`).
        #[derive(Enum, Copy, Clone, Debug, Eq, PartialEq)]
        pub enum SecurityEventType {
            $($variant,)+
        }

        impl From<SecurityEventType> for EventKind {
            fn from(t: SecurityEventType) -> Self {
                match t {
                    $(SecurityEventType::$variant => EventKind::$variant,)+
                }
            }
        }

        impl From<EventKind> for SecurityEventType {
            fn from(k: EventKind) -> Self {
                match k {
                    $(EventKind::$variant => SecurityEventType::$variant,)+
                }
            }
        }
    };
}

event_types! {
    LoginSucceeded,
    LoginFailed,
    SecondFactorRequired,
    Registered,
    RefreshTokenReused,
    LoggedOut,
    SessionRevoked,
    SessionsRevoked,
    PasswordChanged,
    PasswordChangeFailed,
    PasswordReset,
    EmailVerified,
    EmailChanged,
    RoleChanged,
    UserDeleted,
    ApiKeyCreated,
    ApiKeyRotated,
    ApiKeyRevoked,
    RateLimited,
    SecondFactorEnabled,
    SecondFactorDisabled,
    SecondFactorReset,
    RecoveryCodeUsed,
    RecoveryCodesRegenerated,
    Reauthenticated,
    ReauthenticationFailed,
    PasskeyAdded,
    PasskeyRemoved,
}

/// Who caused an event.
#[derive(Enum, Copy, Clone, Debug, Eq, PartialEq)]
pub enum ActorType {
    /// The account's holder.
    User,
    /// An admin.
    Admin,
    /// A service, with an API key (`actorId`).
    Service,
    /// authgraph itself (a detected reuse, a tally of refusals).
    System,
    /// Nobody known (a failed login).
    Anonymous,
}

/// One security event. Never holds a password, token or hash.
pub struct SecurityEvent(security_event::Model);

#[Object]
impl SecurityEvent {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// What happened.
    async fn r#type(&self) -> Option<SecurityEventType> {
        EventKind::parse(&self.0.kind).map(SecurityEventType::from)
    }
    async fn occurred_at(&self) -> DateTime<Utc> {
        self.0.occurred_at
    }
    /// The account it is about (absent for a failed login at an unknown
    /// address, a key's event, a tally).
    async fn user_id(&self) -> Option<ID> {
        self.0.user_id.map(|id| ID(id.to_string()))
    }
    async fn actor_type(&self) -> ActorType {
        match self.0.actor_kind.as_str() {
            "user" => ActorType::User,
            "admin" => ActorType::Admin,
            "service" => ActorType::Service,
            "system" => ActorType::System,
            _ => ActorType::Anonymous,
        }
    }
    /// The admin's user id, or the API key's id. Left out, with `ip` and
    /// `userAgent`, when the account's holder reads an event an admin or a
    /// service caused: they see who acted, not where from.
    async fn actor_id(&self) -> Option<ID> {
        self.0.actor_id.map(|id| ID(id.to_string()))
    }
    /// The session it happened in, or that it ended.
    async fn session_id(&self) -> Option<ID> {
        self.0.session_id.map(|id| ID(id.to_string()))
    }
    /// The client's address (the socket peer, or `X-Forwarded-For` from a
    /// trusted proxy).
    async fn ip(&self) -> Option<&str> {
        self.0.ip.as_deref()
    }
    async fn user_agent(&self) -> Option<&str> {
        self.0.user_agent.as_deref()
    }
    /// A reason (`INVALID_CREDENTIALS`), a change (`USER -> ADMIN`), a count.
    async fn detail(&self) -> Option<&str> {
        self.0.detail.as_deref()
    }
}

/// Extra fields of `SecurityEventConnection`.
#[derive(SimpleObject, Default)]
pub struct SecurityEventConnectionFields {
    /// The events on this page.
    pub count: i32,
}

pub type SecurityEventConnection = Connection<String, SecurityEvent, SecurityEventConnectionFields>;

fn decode_cursor(cursor: &str) -> Result<Uuid, AppError> {
    B64.decode(cursor)
        .ok()
        .and_then(|b| Uuid::from_slice(&b).ok())
        .ok_or_else(|| AppError::invalid_input(Reason::InvalidCursor, "after", "Not a cursor from this listing"))
}

/// `first` (default 20, at most 100) and `after`, checked.
pub(super) fn paging(first: Option<i32>, after: Option<&str>) -> Result<(u64, Option<Uuid>), AppError> {
    let first = match first {
        None => PAGE_DEFAULT,
        Some(n) if (0..=PAGE_MAX as i32).contains(&n) => n as u64,
        Some(_) => {
            return Err(AppError::invalid_input(
                Reason::InvalidPageSize,
                "first",
                format!("first must be between 0 and {PAGE_MAX}"),
            ));
        }
    };
    Ok((first, after.map(decode_cursor).transpose()?))
}

/// A page as a connection: newest first; `hasNextPage` when older ones follow.
pub(super) fn connection(page: EventPage, has_previous: bool) -> SecurityEventConnection {
    let count = i32::try_from(page.events.len()).unwrap_or(i32::MAX);
    let mut conn =
        Connection::with_additional_fields(has_previous, page.has_next, SecurityEventConnectionFields { count });
    conn.edges.extend(page.events.into_iter().map(|e| Edge::new(B64.encode(e.id.as_bytes()), SecurityEvent(e))));
    conn
}

/// Which events `auditEvents` lists.
#[derive(InputObject, Default)]
pub struct AuditEventFilter {
    /// Events about this account.
    pub user_id: Option<ID>,
    pub r#type: Option<SecurityEventType>,
    /// At or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Before this time.
    pub until: Option<DateTime<Utc>>,
}

#[derive(Default)]
pub struct EventQuery;

#[Object]
impl EventQuery {
    /// Every security event, newest first. ADMIN, or an API key with AUDIT_READ.
    async fn audit_events(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        filter: Option<AuditEventFilter>,
    ) -> Result<SecurityEventConnection> {
        let proof = request(ctx)?.principal.grant::<AuditRead>()?;
        let (first, cursor) = paging(first, after.as_deref())?;
        let filter = filter.unwrap_or_default();
        let filter = EventFilter {
            user: filter.user_id.as_ref().map(|id| parse_id(id, "userId")).transpose()?,
            kind: filter.r#type.map(EventKind::from),
            since: filter.since,
            until: filter.until,
        };
        let page = events::audit(services(ctx)?, &proof, &filter, first, cursor).await?;
        Ok(connection(page, cursor.is_some()))
    }
}
