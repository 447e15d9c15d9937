//! The session store: the one way to start, end and refresh sessions and to
//! change what the live-session registry holds.
//!
//! A change is made in a [`Write`]: a write transaction that records, beside
//! its statements, what the registry must learn from them, and applies that
//! after the transaction commits (and never when it rolls back). Callers write
//! other rows through [`Write::conn`], but can reach the registry only through
//! these methods, so none can forget the memory step or take it before the
//! commit. Ending a session takes the ids from the database (`UPDATE …
//! RETURNING`), and the registry remembers them (see `registry`), so a login
//! or refresh that committed before the end but tells the registry after it
//! cannot bring the session back.
//!
//! The registry is a bounded cache: what it does not hold is read from the
//! database on first use ([`read_through`], [`super::users::account`]), so an
//! instance starts without loading anything and its memory does not grow with
//! the number of live sessions.

mod feed;
mod registry;

use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait, ExprTrait, QueryFilter, Set,
    sea_query::Expr,
};
use uuid::Uuid;

use entity::{refresh_token, session, user};

use self::registry::SessionEvent;
pub use self::registry::{DEFAULT_CAPACITY, Lookup, Notice, SessionRegistry, Ticket};
use super::{
    events::{self, Event},
    one_time, outbox,
};
use crate::service::{ClientInfo, Issued, Services, SessionPolicy};
use crate::{
    auth::secrets::hash_token,
    db,
    domain::{Account, Email, SessionId, UserId},
    error::{AppError, AppResult},
    mail::Kind,
};

/// A write transaction and the registry changes it implies (see the module
/// comment).
pub struct Write<'a> {
    svc: &'a Services,
    txn: DatabaseTransaction,
    /// The registry's position when the transaction began.
    ticket: Ticket,
    changes: Vec<SessionEvent>,
    /// Whether mail was queued: the sender is woken after the commit.
    mail_queued: bool,
}

impl<'a> Write<'a> {
    /// Begins a write transaction (`BEGIN IMMEDIATE` on SQLite).
    pub async fn begin(svc: &'a Services) -> AppResult<Self> {
        let ticket = svc.registry.ticket();
        Ok(Self { svc, txn: db::begin_write(&svc.db).await?, ticket, changes: Vec::new(), mail_queued: false })
    }

    /// The transaction, for rows other than sessions (users, API keys).
    pub fn conn(&self) -> &DatabaseTransaction {
        &self.txn
    }

    /// Queues a mail of `kind` to `recipient` about `user` (the rules are
    /// [`outbox::enqueue`]'s); this instance's sender is woken once the
    /// transaction commits, and the others find it within a second.
    pub async fn enqueue_mail(
        &mut self,
        kind: Kind,
        user: Option<UserId>,
        recipient: &Email,
        new_email: Option<&Email>,
    ) -> AppResult<()> {
        outbox::enqueue(self.svc, &self.txn, kind, user, recipient, new_email).await?;
        self.mail_queued = true;
        Ok(())
    }

    /// Records `event` with the change it records: both commit, or neither.
    pub async fn record(&self, event: Event<'_>) -> AppResult<()> {
        events::record(self.svc, &self.txn, event).await
    }

    /// Ends what a recovery ends (a password reset or change, logout
    /// everywhere, an admin's revocation, a second-factor reset): every
    /// session of `user_id` but `except`, its queued and unused links, and its
    /// open second-factor challenges, so that whoever held a session keeps
    /// nothing through it (a pending address change, a reset link, a login's
    /// second step the old password let out). Rows are taken in the order the
    /// sender takes them (the outbox, then the tokens), the user's row last.
    /// Returns how many live sessions ended.
    pub async fn revoke_user(&mut self, user_id: UserId, except: Option<SessionId>) -> AppResult<u64> {
        let now = self.svc.clock.now();
        outbox::void_links(&self.txn, user_id, now).await?;
        one_time::void_mail_tokens(&self.txn, user_id, now).await?;
        one_time::void_challenges(&self.txn, user_id, now).await?;
        self.end_user_sessions(user_id, except).await
    }

    /// Inserts a session for `user` and its first refresh token; it goes live
    /// when the transaction commits. Returns the session and the token.
    pub async fn start_session(
        &mut self,
        user: &Account,
        client: &ClientInfo,
        now: DateTime<Utc>,
    ) -> AppResult<(session::Model, String)> {
        let expires_at = now
            + ChronoDuration::from_std(self.svc.policy.refresh_ttl)
                .map_err(|e| AppError::internal(format!("refresh ttl: {e}")))?;
        let session = session::Model {
            id: SessionId::new().uuid(),
            user_id: user.id.uuid(),
            created_at: now,
            last_used_at: now,
            expires_at,
            revoked_at: None,
            user_agent: clip(client.user_agent.as_deref(), 512),
            ip: client.ip.map(|ip| ip.to_string()),
            authenticated_at: Some(now),
        };
        // Every column is set here: nothing to read back (no RETURNING, no row to decode).
        session::Entity::insert(session::ActiveModel::from(session.clone())).exec_without_returning(&self.txn).await?;
        let token = self.svc.secrets.generate()?;
        refresh_token::Entity::insert(refresh_token::ActiveModel {
            id: Set(Uuid::now_v7()),
            session_id: Set(session.id),
            token_hash: Set(hash_token(&token)),
            issued_at: Set(now),
            expires_at: Set(expires_at),
            rotated_at: Set(None),
            replaced_by: Set(None),
        })
        .exec_without_returning(&self.txn)
        .await?;
        self.changes.push(SessionEvent::Started {
            session_id: session.id.into(),
            user_id: user.id,
            expires_at: expires_at.timestamp(),
            ticket: self.ticket,
        });
        Ok((session, token))
    }

    /// Ends one live session (of `owner` only, when given). Returns whether it
    /// was live.
    pub async fn end_session(&mut self, session_id: SessionId, owner: Option<UserId>) -> AppResult<bool> {
        let mut which = Condition::all().add(session::Column::Id.eq(session_id));
        if let Some(owner) = owner {
            which = which.add(session::Column::UserId.eq(owner));
        }
        Ok(self.end_where(which).await? > 0)
    }

    /// Ends every live session of `user_id` but `except`. Returns how many
    /// were live (not expired by age or idleness) and are now ended.
    ///
    /// The user's row is written first (a no-op update, which on PostgreSQL
    /// takes its row lock): every path that starts a session writes that row
    /// in its transaction too (`last_login_at`), so a session started beside
    /// this end either commits before it, and is ended here, or waits for
    /// it and starts after. No session started beside a password change,
    /// reset or logout everywhere outlives it.
    pub async fn end_user_sessions(&mut self, user_id: UserId, except: Option<SessionId>) -> AppResult<u64> {
        user::Entity::update_many()
            .col_expr(user::Column::Id, Expr::col(user::Column::Id))
            .filter(user::Column::Id.eq(user_id))
            .exec(&self.txn)
            .await?;
        let mut which = Condition::all().add(session::Column::UserId.eq(user_id));
        if let Some(keep) = except {
            which = which.add(session::Column::Id.ne(keep));
        }
        self.end_where(which).await
    }

    /// Ends the sessions that match `which` and were not ended yet, and
    /// records each end (with the id the database returns). Returns how many
    /// of them were live: a session past its age or idle time was over
    /// already, and is ended here without being counted.
    async fn end_where(&mut self, which: Condition) -> AppResult<u64> {
        let now = self.svc.clock.now();
        let ended = session::Entity::update_many()
            .col_expr(session::Column::RevokedAt, Expr::value(now))
            .filter(which)
            .filter(session::Column::RevokedAt.is_null())
            .exec_with_returning(&self.txn)
            .await?;
        let n = ended.iter().filter(|s| live_by_time(&self.svc.policy, s, now)).count() as u64;
        self.changes.extend(
            ended
                .into_iter()
                .map(|s| SessionEvent::Ended { session_id: s.id.into(), expires_at: s.expires_at.timestamp() }),
        );
        Ok(n)
    }

    /// The user's row was written in this transaction: once it commits, every
    /// instance drops its copy, and the next request reads the new row (role,
    /// profile).
    pub fn user_changed(&mut self, user_id: UserId) {
        self.changes.push(SessionEvent::UserUpdated { user_id });
    }

    /// The user is deleted in this transaction. End their sessions first
    /// ([`Write::end_user_sessions`]), so that each is remembered as ended.
    pub fn user_deleted(&mut self, user_id: UserId) {
        self.changes.push(SessionEvent::UserDeleted { user_id });
    }

    /// Commits, then applies the recorded changes to the registry. On a
    /// database shared by several instances, the changes are also appended to
    /// the change log in the transaction, for the others.
    pub async fn commit(self) -> AppResult<()> {
        if !self.changes.is_empty() && self.svc.shared_database() {
            feed::publish(&self.txn, &self.changes).await?;
        }
        self.txn.commit().await?;
        if self.changes.iter().any(|c| matches!(c, SessionEvent::Started { .. })) {
            pause(self.svc).await;
        }
        let now = self.svc.clock.unix();
        for change in self.changes {
            self.svc.registry.apply(change, now);
        }
        if self.mail_queued {
            self.svc.mail.queued.notify_one();
        }
        Ok(())
    }

    /// Rolls back; the registry learns nothing.
    pub async fn rollback(self) -> AppResult<()> {
        Ok(self.txn.rollback().await?)
    }
}

/// Why a session can no longer be used or refreshed.
pub enum Ended {
    Revoked,
    /// Past the session's or the token's absolute lifetime.
    Expired,
    /// Unused for longer than `SESSION_IDLE_TIMEOUT`.
    Idle,
}

/// Whether `session` is over by time at `now`: past its absolute lifetime,
/// or unused for longer than `SESSION_IDLE_TIMEOUT`; `None` while it is not.
/// Whether it was revoked is not looked at.
pub fn timed_out(policy: &SessionPolicy, session: &session::Model, now: DateTime<Utc>) -> Option<Ended> {
    if session.expires_at <= now {
        return Some(Ended::Expired);
    }
    let idle = policy.idle_timeout.map(|t| ChronoDuration::from_std(t).unwrap_or(ChronoDuration::MAX));
    idle.filter(|idle| session.last_used_at + *idle <= now).map(|_| Ended::Idle)
}

/// Whether `session` was still live at `now` as far as time goes (neither
/// past its lifetime nor idle too long): what a count of sessions ended
/// counts.
pub fn live_by_time(policy: &SessionPolicy, session: &session::Model, now: DateTime<Utc>) -> bool {
    timed_out(policy, session, now).is_none()
}

/// The test seam between a commit (or a read) and the registry update that
/// follows it.
async fn pause(svc: &Services) {
    if let Some(pause) = &svc.hooks.before_live {
        pause().await;
    }
}

fn clip(s: Option<&str>, max: usize) -> Option<String> {
    s.map(|s| s.chars().filter(|c| !c.is_control()).take(max).collect())
}

/// Mints the access token of a session that is live (its start committed and
/// applied by this store).
pub fn issue(
    svc: &Services,
    user: Account,
    session: &session::Model,
    refresh_token: String,
    now: DateTime<Utc>,
) -> AppResult<Issued> {
    let expires_at = session.expires_at.timestamp();
    let access =
        svc.tokens.issue(user.id, user.email.display(), user.role, session.id.into(), now.timestamp(), expires_at)?;
    Ok(Issued { user, session_id: session.id.into(), access, refresh_token, refresh_expires_at: session.expires_at })
}

/// After a refresh's rotation committed: the session is live (unless it has
/// ended meanwhile). `ticket` was taken before the session was read. Other
/// instances learn it on its first request there ([`read_through`]).
pub async fn refreshed(svc: &Services, session: &session::Model, ticket: Ticket) {
    pause(svc).await;
    let started = SessionEvent::Started {
        session_id: session.id.into(),
        user_id: session.user_id.into(),
        expires_at: session.expires_at.timestamp(),
        ticket,
    };
    svc.registry.apply(started, svc.clock.unix());
}

/// The current role of `user_id` if `session_id` is a live session of theirs:
/// from memory when the registry holds it, otherwise from the database
/// ([`read_through`]).
pub async fn session_role(svc: &Services, session_id: SessionId, user_id: UserId) -> Option<entity::user::Role> {
    match svc.registry.lookup(session_id, user_id, svc.clock.unix()) {
        Lookup::Live(role) => Some(role),
        Lookup::Ended => None,
        Lookup::Unknown => read_through(svc, session_id, user_id).await,
    }
}

/// A session the registry does not hold (never seen here, evicted, or its
/// user's profile is not cached): read from the database with its user, and
/// cached when live. Returns the user's role, or `None` when the session is
/// not a live session of `user_id` (or the database cannot say).
pub async fn read_through(svc: &Services, session_id: SessionId, user_id: UserId) -> Option<entity::user::Role> {
    match read_through_checked(svc, session_id, user_id).await {
        Ok(role) => role,
        Err(e) => {
            tracing::warn!(error = %e.detail(), "reading a session failed; refused");
            None
        }
    }
}

/// [`session_role`], telling an outage (an error) from an ended session
/// (`Ok(None)`): for a watcher, which must not call a session ended because
/// the database did not answer.
pub async fn session_role_checked(
    svc: &Services,
    session_id: SessionId,
    user_id: UserId,
) -> AppResult<Option<entity::user::Role>> {
    match svc.registry.lookup(session_id, user_id, svc.clock.unix()) {
        Lookup::Live(role) => Ok(Some(role)),
        Lookup::Ended => Ok(None),
        Lookup::Unknown => read_through_checked(svc, session_id, user_id).await,
    }
}

async fn read_through_checked(
    svc: &Services,
    session_id: SessionId,
    user_id: UserId,
) -> AppResult<Option<entity::user::Role>> {
    let ticket = svc.registry.ticket();
    let found = session::Entity::find_by_id(session_id.uuid()).find_also_related(user::Entity).one(&svc.db).await?;
    let Some((session, Some(user))) = found else { return Ok(None) };
    if session.user_id != user_id.uuid() {
        return Ok(None);
    }
    let now = svc.clock.unix();
    let expires_at = session.expires_at.timestamp();
    if session.revoked_at.is_some() || expires_at <= now {
        // Remembered, so the next request with this token is answered from memory.
        svc.registry.apply(SessionEvent::Ended { session_id, expires_at }, now);
        return Ok(None);
    }
    let account = Arc::new(Account::from(user));
    let role = account.role;
    pause(svc).await;
    svc.registry.apply(SessionEvent::Started { session_id, user_id, expires_at, ticket }, now);
    svc.registry.fill_profile(ticket, account);
    // Asked again: an end that arrived meanwhile wins. A change of the user
    // that arrived meanwhile kept our copy out of the cache; the row read is
    // still the answer as of this request.
    Ok(match svc.registry.lookup(session_id, user_id, now) {
        Lookup::Ended => None,
        Lookup::Live(role) => Some(role),
        Lookup::Unknown => Some(role),
    })
}

/// Caches a user's profile read from the database after `ticket` (unless the
/// user changed since).
pub fn fill_profile(svc: &Services, ticket: Ticket, account: Arc<Account>) {
    svc.registry.fill_profile(ticket, account);
}

/// Where an instance starts: on a database shared by several instances, the
/// change-log position to [`follow`] from. Nothing is loaded: the registry
/// fills as sessions are used.
pub async fn start(svc: &Services) -> AppResult<Option<i64>> {
    if svc.shared_database() { Ok(Some(feed::head(svc).await?)) } else { Ok(None) }
}

/// Follows the change log from `from` until the task is aborted (see `feed`).
pub fn follow(svc: &Services, database_url: &str, from: i64) -> tokio::task::JoinHandle<()> {
    feed::spawn_follower(svc.clone(), database_url.to_owned(), from)
}

/// Forgets what the registry caches (changes were missed); returns the log
/// position to follow from.
async fn clear_cached(svc: &Services) -> AppResult<i64> {
    let head = feed::head(svc).await?;
    svc.registry.clear();
    tracing::info!("session registry cleared; it refills from the database");
    Ok(head)
}

/// Queues one mail of `kind` to `recipient` about `user` in a write
/// transaction of its own ([`Write::enqueue_mail`]), for a request that
/// changes nothing else.
pub async fn queue_mail(svc: &Services, kind: Kind, user: Option<UserId>, recipient: &Email) -> AppResult<()> {
    let mut tx = Write::begin(svc).await?;
    tx.enqueue_mail(kind, user, recipient, None).await?;
    tx.commit().await
}

/// Ends one session (any owner) in a transaction of its own. Returns whether
/// it was live.
pub async fn end_session(svc: &Services, session_id: SessionId) -> AppResult<bool> {
    let mut tx = Write::begin(svc).await?;
    let ended = tx.end_session(session_id, None).await?;
    tx.commit().await?;
    Ok(ended)
}

/// How long ended sessions are kept before the purge deletes them, so that their
/// tokens still answer TOKEN_REVOKED rather than INVALID_TOKEN for a while.
pub const ENDED_SESSION_RETENTION_HOURS: i64 = 24;

/// Deletes sessions (and, by cascade, their refresh tokens) that ended
/// more than [`ENDED_SESSION_RETENTION_HOURS`] before `now`. Returns how many.
pub async fn purge_ended_sessions(svc: &Services, now: DateTime<Utc>) -> AppResult<u64> {
    let cutoff = now - ChronoDuration::hours(ENDED_SESSION_RETENTION_HOURS);
    Ok(session::Entity::delete_many()
        .filter(session::Column::ExpiresAt.lt(cutoff).or(session::Column::RevokedAt.lt(cutoff)))
        .exec(&svc.db)
        .await?
        .rows_affected)
}

/// Prunes the change log (PostgreSQL: rows older than an hour, never the
/// newest), and forgets cached sessions past their end and ends past their
/// window. Returns how many change-log rows went.
pub async fn prune(svc: &Services, now: DateTime<Utc>) -> AppResult<u64> {
    let rows = if svc.shared_database() { feed::prune(svc).await? } else { 0 };
    svc.registry.prune_expired(now.timestamp());
    Ok(rows)
}

/// Statements that touch sessions outside a [`Write`] must not change what
/// the registry believes; this one only moves `last_used_at`.
pub(in crate::service) async fn touch(
    conn: &impl ConnectionTrait,
    session_id: SessionId,
    now: DateTime<Utc>,
) -> AppResult<bool> {
    let touched = session::Entity::update_many()
        .col_expr(session::Column::LastUsedAt, Expr::value(now))
        .filter(session::Column::Id.eq(session_id))
        .filter(session::Column::RevokedAt.is_null())
        .exec(conn)
        .await?;
    Ok(touched.rows_affected == 1)
}
