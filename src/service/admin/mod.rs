//! Administration of users: listing, roles, deletion, forced logout. Each
//! function takes the proof of the permission it needs.

pub mod api_keys;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, ExprTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Select, Set,
    sea_query::{Expr, LikeExpr},
};

use entity::user::{self, Role};

use super::{
    ClientInfo, Services,
    core::{
        events::{Event, EventKind},
        store, users,
    },
};
use crate::{
    auth::access::{Actor, AdminOnly, Granted, SessionsRevoke, UsersRead, UsersWrite},
    db::{self, UniqueRow},
    domain::{Account, UserId},
    error::{AppError, AppResult, Reason},
};

pub const PAGE_MAX: u64 = 100;
pub const PAGE_DEFAULT: u64 = 20;

/// Filters of the user listing.
#[derive(Debug, Default, Clone)]
pub struct UserFilter {
    pub search: Option<String>,
    pub role: Option<Role>,
}

/// Which slice of the listing (keyset on the time-ordered id).
#[derive(Debug, Clone, Copy)]
pub enum PageRequest {
    /// The first `n` after `after` (ascending).
    Forward { n: u64, after: Option<UserId> },
    /// The last `n` before `before` (still returned ascending).
    Backward { n: u64, before: Option<UserId> },
}

pub struct UserPage {
    pub users: Vec<Account>,
    pub has_previous: bool,
    pub has_next: bool,
    pub total: u64,
}

/// Terms shorter than this cannot use the trigram indexes (a trigram is three
/// characters); they are matched by reading the rows.
const TRIGRAM: usize = 3;

fn filtered(filter: &UserFilter, backend: DbBackend) -> Select<user::Entity> {
    let mut q = user::Entity::find();
    if let Some(role) = filter.role {
        q = q.filter(user::Column::Role.eq(role));
    }
    if let Some(term) = filter.search.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        // Folded as the stored key was, so every script and spelling matches alike
        // on both backends (no reliance on the database's `lower()`).
        let folded = entity::keys::fold(term);
        let escaped = folded.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        // PostgreSQL's trigram index serves this LIKE itself; on SQLite it decides
        // among the rows the FTS5 index found.
        q = q.filter(Expr::col(user::Column::SearchKey).like(LikeExpr::new(format!("%{escaped}%")).escape('\\')));
        if backend == DbBackend::Sqlite && folded.chars().count() >= TRIGRAM {
            // A phrase of the term's trigrams: the rows holding it as a substring.
            let phrase = format!("\"{}\"", folded.replace('"', "\"\""));
            q = q.filter(Expr::cust_with_values(
                "users.id IN (SELECT m.user_id FROM user_search_ids m WHERE m.id IN \
                 (SELECT rowid FROM users_fts WHERE users_fts MATCH ?))",
                [phrase],
            ));
        }
    }
    q
}

/// The longest search term, in characters (longer than any name or address).
pub const SEARCH_MAX: usize = 256;

/// Errors: `INVALID_SEARCH` (field `search`) for a term over [`SEARCH_MAX`]
/// characters or holding control characters (a NUL ends an FTS5 query early, a
/// newline would match across the stored key's lines).
fn check_search(filter: &UserFilter) -> AppResult<()> {
    let Some(term) = filter.search.as_deref() else { return Ok(()) };
    if term.chars().count() > SEARCH_MAX || term.chars().any(char::is_control) {
        return Err(AppError::invalid_input(
            Reason::InvalidSearch,
            "search",
            format!("search must be at most {SEARCH_MAX} characters, without control characters"),
        ));
    }
    Ok(())
}

/// One page of users in creation order (ids are UUIDv7, so id order is
/// creation order and a stable cursor).
pub async fn list_users(
    svc: &Services,
    _proof: &Granted<UsersRead>,
    filter: &UserFilter,
    page: PageRequest,
) -> AppResult<UserPage> {
    check_search(filter)?;
    let backend = svc.db.get_database_backend();
    let total = filtered(filter, backend).count(&svc.db).await?;
    match page {
        PageRequest::Forward { n, after } => {
            let mut q = filtered(filter, backend);
            if let Some(after) = after {
                q = q.filter(user::Column::Id.gt(after));
            }
            let mut users = q.order_by_asc(user::Column::Id).limit(n + 1).all(&svc.db).await?;
            let has_next = users.len() as u64 > n;
            users.truncate(n as usize);
            Ok(UserPage {
                users: users.into_iter().map(Account::from).collect(),
                has_previous: after.is_some(),
                has_next,
                total,
            })
        }
        PageRequest::Backward { n, before } => {
            let mut q = filtered(filter, backend);
            if let Some(before) = before {
                q = q.filter(user::Column::Id.lt(before));
            }
            let mut users = q.order_by_desc(user::Column::Id).limit(n + 1).all(&svc.db).await?;
            let has_previous = users.len() as u64 > n;
            users.truncate(n as usize);
            users.reverse();
            Ok(UserPage {
                users: users.into_iter().map(Account::from).collect(),
                has_previous,
                has_next: before.is_some(),
                total,
            })
        }
    }
}

pub async fn get_user(svc: &Services, _proof: &Granted<UsersRead>, id: UserId) -> AppResult<Option<Account>> {
    Ok(user::Entity::find_by_id(id.uuid()).unique_row(&svc.db).await?.map(Account::from))
}

fn last_admin() -> AppError {
    AppError::invalid_input(Reason::LastAdmin, "id", "This is the last admin: promote another user to ADMIN first")
}

/// Locks the admin rows (PostgreSQL) inside `txn` and counts them, so that two
/// admins demoting each other at once cannot both succeed. On SQLite the write
/// transaction already holds the database's write lock.
async fn count_admins_locked(txn: &impl ConnectionTrait) -> AppResult<u64> {
    let q = user::Entity::find().select_only().column(user::Column::Id).filter(user::Column::Role.eq(Role::Admin));
    Ok(db::for_update(q, txn).into_tuple::<uuid::Uuid>().all(txn).await?.len() as u64)
}

/// Changes a user's role; effective for their live access tokens at once.
pub async fn set_role(
    svc: &Services,
    proof: &Granted<AdminOnly>,
    id: UserId,
    role: Role,
    client: &ClientInfo,
) -> AppResult<Account> {
    let mut tx = store::Write::begin(svc).await?;
    let admins = count_admins_locked(tx.conn()).await?;
    let Some(user) = user::Entity::find_by_id(id.uuid()).unique_row(tx.conn()).await? else {
        tx.rollback().await?;
        return Err(AppError::invalid_input(Reason::NotFound, "id", "No such user"));
    };
    if user.role == Role::Admin && role != Role::Admin && admins <= 1 {
        tx.rollback().await?;
        return Err(last_admin());
    }
    let before = user.role;
    let mut active: user::ActiveModel = user.into();
    active.role = Set(role);
    active.updated_at = Set(svc.clock.now());
    let user = Account::from(active.update(tx.conn()).await?);
    let change = format!("{} -> {}", crate::domain::role_name(before), crate::domain::role_name(role));
    tx.record(Event::new(EventKind::RoleChanged, Some(id), proof.actor.into(), client).detail(change)).await?;
    tx.user_changed(user.id);
    tx.commit().await?;
    tracing::info!(user_id = %id, role = ?role, "role changed");
    Ok(user)
}

/// Deletes a user; their sessions and tokens go with them (cascade) and their
/// access tokens stop working at once. False when there was no such user.
///
/// An admin account can be deleted by an admin only: a service key's
/// `USERS_WRITE` covers ordinary users (a leaked key must not be a way to remove
/// the people who could revoke it). Errors: `FORBIDDEN` for a key deleting an
/// admin, `LAST_ADMIN` for the last admin.
pub async fn delete_user(
    svc: &Services,
    proof: &Granted<UsersWrite>,
    id: UserId,
    client: &ClientInfo,
) -> AppResult<bool> {
    let mut tx = store::Write::begin(svc).await?;
    let admins = count_admins_locked(tx.conn()).await?;
    // Locked first (PostgreSQL): a login committing a session for this user
    // waits, or is waited for, so no session escapes the ends below.
    let Some(user) = db::for_update(user::Entity::find_by_id(id.uuid()), tx.conn()).unique_row(tx.conn()).await? else {
        tx.rollback().await?;
        return Ok(false);
    };
    if user.role == Role::Admin && !matches!(proof.actor, Actor::Admin(_)) {
        tx.rollback().await?;
        return Err(AppError::Forbidden("Only an admin can delete an admin account"));
    }
    if user.role == Role::Admin && admins <= 1 {
        tx.rollback().await?;
        return Err(last_admin());
    }
    // Ended first, so each session is remembered as ended; the rows then go
    // with the user (cascade).
    tx.end_user_sessions(id, None).await?;
    let deleted = user::Entity::delete_by_id(id.uuid()).exec(tx.conn()).await?.rows_affected;
    tx.record(Event::new(EventKind::UserDeleted, Some(id), proof.actor.into(), client)).await?;
    tx.user_deleted(id);
    tx.commit().await?;
    tracing::info!(user_id = %id, "user deleted");
    Ok(deleted > 0)
}

/// Forced logout: ends every session of the user. Returns how many were live.
///
/// An admin's sessions can be ended by an admin only: a service key's
/// `SESSIONS_REVOKE` covers ordinary users, so a leaked key cannot keep the
/// people who could revoke it logged out. Errors: `FORBIDDEN` for a key and an
/// admin account.
pub async fn revoke_user_sessions(
    svc: &Services,
    proof: &Granted<SessionsRevoke>,
    id: UserId,
    client: &ClientInfo,
) -> AppResult<u64> {
    // The role is read in the transaction that ends the sessions.
    let mut tx = store::Write::begin(svc).await?;
    if !matches!(proof.actor, Actor::Admin(_))
        && user::Entity::find_by_id(id.uuid()).unique_row(tx.conn()).await?.is_some_and(|u| u.role == Role::Admin)
    {
        tx.rollback().await?;
        return Err(AppError::Forbidden("Only an admin can end an admin's sessions"));
    }
    // Challenges before sessions, the order a second-factor login takes them.
    let ended = tx.revoke_user(id, None).await?;
    let event = Event::new(EventKind::SessionsRevoked, Some(id), proof.actor.into(), client)
        .detail(format!("{ended} sessions ended"));
    tx.record(event).await?;
    tx.commit().await?;
    tracing::info!(user_id = %id, sessions = ended, "sessions revoked by an administrator");
    Ok(ended)
}

/// `authgraph create-admin`: creates an admin, or promotes an existing account.
/// Returns the user and whether it was created.
pub async fn create_or_promote_admin(
    svc: &Services,
    email: &str,
    name: Option<&str>,
    password: impl FnOnce() -> AppResult<String>,
) -> AppResult<(Account, bool)> {
    let email = super::core::validate::email(email)?;
    if let Some(existing) =
        user::Entity::find().filter(user::Column::EmailNormalized.eq(email.key())).unique_row(&svc.db).await?
    {
        // Through the store: on a shared database the running instances see
        // the new role at once, as after setUserRole.
        let mut tx = store::Write::begin(svc).await?;
        let mut active: user::ActiveModel = existing.into();
        active.role = Set(Role::Admin);
        active.updated_at = Set(svc.clock.now());
        let promoted = Account::from(active.update(tx.conn()).await?);
        tx.user_changed(promoted.id);
        tx.commit().await?;
        return Ok((promoted, false));
    }
    let password = password()?;
    let new = users::validate_new_user(email.display(), &password, name)?;
    let hash = svc.hasher.hash(password).await?;
    let now = svc.clock.now();
    let mut row = users::new_user_row(new, hash, Role::Admin, now, None);
    // The operator typed the address: an admin made here is not locked out by
    // REQUIRE_EMAIL_VERIFICATION before any mail could reach them.
    row.email_verified_at = Set(Some(now));
    row.address_proven_at = Set(Some(now));
    let user = row.insert(&svc.db).await?;
    Ok((user.into(), true))
}
