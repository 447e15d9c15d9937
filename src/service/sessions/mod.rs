//! Sessions and refresh-token rotation.
//!
//! Every state change is one conditional statement (or one write transaction)
//! whose row count says whether it happened: `UPDATE … WHERE rotated_at IS NULL`,
//! never read-then-write. That is what keeps two concurrent refreshes of one
//! token from minting two live successors on either backend.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set, sea_query::Expr};
use uuid::Uuid;

use entity::{refresh_token, session, user};

use super::{
    ClientInfo, Issued, Services,
    core::{
        events::{Actor, Event, EventKind},
        store::{self, Ended, timed_out},
        users,
    },
};
use crate::{
    auth::{
        principal::{Principal, RejectReason},
        secrets::{hash_token, well_formed},
        tokens::Verified,
    },
    db::UniqueRow,
    domain::{Account, SessionId, UserId},
    error::{AppError, AppResult},
};

/// How many successors a presented token may be followed through inside the
/// grace window (tab A refreshed twice while tab B still held the first token).
const MAX_GRACE_HOPS: usize = 4;

/// Exchanges a refresh token for a new access token and the token's successor.
#[tracing::instrument(skip_all)]
pub async fn refresh(svc: &Services, presented: &str, client: &ClientInfo) -> AppResult<Issued> {
    if !well_formed(presented) {
        return Err(AppError::InvalidToken);
    }
    let now = svc.clock.now();
    // Taken before the session is read: what ends it after is not undone.
    let ticket = svc.registry.ticket();
    let grace = ChronoDuration::from_std(svc.policy.reuse_grace).unwrap_or(ChronoDuration::zero());
    let mut current = presented.to_owned();
    let mut hops = 0;
    loop {
        let Some((row, Some(session))) = token_and_session(svc, &current).await? else {
            return Err(AppError::InvalidToken);
        };
        match ended(svc, &row, &session, now) {
            Some(Ended::Revoked) => return Err(AppError::TokenRevoked),
            Some(Ended::Expired) => return Err(AppError::RefreshTokenExpired),
            Some(Ended::Idle) => {
                store::end_session(svc, session.id.into()).await?;
                return Err(AppError::RefreshTokenExpired);
            }
            None => {}
        }
        match row.rotated_at {
            // The presented token is live: rotate it.
            None if current == presented => match rotate(svc, &row, &session, presented, now).await? {
                Some(successor) => {
                    let user = load_user(svc, session.user_id.into()).await?;
                    store::refreshed(svc, &session, ticket).await;
                    return store::issue(svc, user, &session, successor, now);
                }
                // Someone rotated it between our read and our write: look again.
                None => continue,
            },
            // A successor reached inside the grace window: hand it out as it is.
            None => {
                let user = load_user(svc, session.user_id.into()).await?;
                store::refreshed(svc, &session, ticket).await;
                return store::issue(svc, user, &session, current, now);
            }
            Some(rotated_at) if now - rotated_at <= grace && hops < MAX_GRACE_HOPS => {
                hops += 1;
                current = svc.secrets.successor(&current);
            }
            Some(_) => {
                // A rotated token came back after its window: it was copied. End
                // the whole session, the thief's copy and the owner's alike.
                tracing::warn!(session_id = %session.id, "refresh token reuse detected; session revoked");
                let mut tx = store::Write::begin(svc).await?;
                tx.end_session(session.id.into(), None).await?;
                reuse_event(svc, &tx, &session, client).await?;
                tx.commit().await?;
                return Err(AppError::RefreshTokenReused);
            }
        }
    }
}

/// Records that a rotated refresh token of `session` came back (RFC 9700
/// §4.14.2): the session was ended by the system, for the account's holder
/// to see.
async fn reuse_event(
    _svc: &Services,
    tx: &store::Write<'_>,
    session: &session::Model,
    client: &ClientInfo,
) -> AppResult<()> {
    let user = UserId::from(session.user_id);
    let event = Event::new(EventKind::RefreshTokenReused, Some(user), Actor::System, client).session(session.id.into());
    tx.record(event).await
}

/// Whether the session of a refresh token has ended, and how; `None` while it
/// is live. The one judgement `refresh` and `logout` both apply.
fn ended(svc: &Services, row: &refresh_token::Model, session: &session::Model, now: DateTime<Utc>) -> Option<Ended> {
    if session.revoked_at.is_some() {
        return Some(Ended::Revoked);
    }
    if row.expires_at <= now {
        return Some(Ended::Expired);
    }
    timed_out(&svc.policy, session, now)
}

/// One write transaction: mark the token rotated (only if nobody else did),
/// store its successor, touch the session (only if it is still live).
async fn rotate(
    svc: &Services,
    row: &refresh_token::Model,
    session: &session::Model,
    presented: &str,
    now: DateTime<Utc>,
) -> AppResult<Option<String>> {
    let successor = svc.secrets.successor(presented);
    let successor_id = Uuid::now_v7();
    let txn = store::Write::begin(svc).await?;
    let marked = refresh_token::Entity::update_many()
        .col_expr(refresh_token::Column::RotatedAt, Expr::value(now))
        .col_expr(refresh_token::Column::ReplacedBy, Expr::value(successor_id))
        .filter(refresh_token::Column::Id.eq(row.id))
        .filter(refresh_token::Column::RotatedAt.is_null())
        .exec(txn.conn())
        .await?;
    if marked.rows_affected != 1 {
        txn.rollback().await?;
        return Ok(None);
    }
    if !store::touch(txn.conn(), session.id.into(), now).await? {
        txn.rollback().await?;
        return Err(AppError::TokenRevoked);
    }
    refresh_token::Entity::insert(refresh_token::ActiveModel {
        id: Set(successor_id),
        session_id: Set(session.id),
        token_hash: Set(hash_token(&successor)),
        issued_at: Set(now),
        expires_at: Set(session.expires_at),
        rotated_at: Set(None),
        replaced_by: Set(None),
    })
    .exec_without_returning(txn.conn())
    .await?;
    txn.commit().await?;
    Ok(Some(successor))
}

/// A refresh token's row, found by the token's hash, with its session.
async fn token_and_session(
    svc: &Services,
    token: &str,
) -> AppResult<Option<(refresh_token::Model, Option<session::Model>)>> {
    Ok(refresh_token::Entity::find()
        .filter(refresh_token::Column::TokenHash.eq(hash_token(token)))
        .find_also_related(session::Entity)
        .unique_row(&svc.db)
        .await?)
}

async fn load_user(svc: &Services, user_id: UserId) -> AppResult<Account> {
    let profile = users::account(svc, user_id).await?.ok_or(AppError::InvalidToken)?;
    Ok(Arc::unwrap_or_clone(profile))
}

/// Logs out: the caller's current session (from the access token, the refresh
/// token, or both), or every session of that user. Idempotent: nothing to end is
/// still a success.
///
/// A refresh token has here exactly the power `refreshToken` would give it. A
/// live one (or a rotated one inside the grace window) names its session. A
/// token of an ended, expired or idle-expired session names nothing. A rotated token past the
/// window is a copy (RFC 9700 §4.14.2): its own session is ended, as reuse
/// detection does, and the call fails with `REFRESH_TOKEN_REUSED`. It never
/// ends the user's other sessions, `everywhere` or not.
#[tracing::instrument(skip_all, fields(everywhere))]
pub async fn logout(
    svc: &Services,
    principal: &Principal,
    refresh_token: Option<&str>,
    everywhere: bool,
    client: &ClientInfo,
) -> AppResult<()> {
    let mut targets: Vec<(SessionId, UserId)> = Vec::new(); // (session, user)
    if let Some(me) = principal.user() {
        targets.push((me.session_id, me.user_id));
    }
    let mut reused: Option<session::Model> = None;
    if let Some(token) = refresh_token.filter(|t| well_formed(t))
        && let Some((row, Some(session))) = token_and_session(svc, token).await?
    {
        let now = svc.clock.now();
        let grace = ChronoDuration::from_std(svc.policy.reuse_grace).unwrap_or(ChronoDuration::zero());
        match row.rotated_at {
            _ if ended(svc, &row, &session, now).is_some() => {}
            Some(rotated_at) if now - rotated_at > grace => reused = Some(session),
            _ => targets.push((session.id.into(), session.user_id.into())),
        }
    }
    // The access token and the cookie usually name the same session: end it once.
    let key = |&(session, user): &(SessionId, UserId)| if everywhere { user.uuid() } else { session.uuid() };
    targets.sort_unstable_by_key(key);
    targets.dedup_by_key(|t| key(t));
    let mut tx = store::Write::begin(svc).await?;
    for (session_id, user_id) in targets {
        let ended = if everywhere {
            // Challenges before sessions, the order a second-factor login takes them.
            tx.revoke_user(user_id, None).await?
        } else {
            u64::from(tx.end_session(session_id, None).await?)
        };
        if ended > 0 {
            let mut event =
                Event::new(EventKind::LoggedOut, Some(user_id), Actor::User(user_id), client).session(session_id);
            if everywhere {
                event = event.detail(format!("everywhere: {ended} sessions ended"));
            }
            tx.record(event).await?;
        }
    }
    if let Some(session) = &reused {
        tracing::warn!(session_id = %session.id, "rotated refresh token presented to logout; session revoked");
        tx.end_session(session.id.into(), None).await?;
        reuse_event(svc, &tx, session, client).await?;
    }
    tx.commit().await?;
    if reused.is_some() {
        return Err(AppError::RefreshTokenReused);
    }
    Ok(())
}

/// Ends one of the caller's own sessions. `false` when there is no such live
/// session of theirs (another user's id included: nothing is revealed).
pub async fn revoke_own(
    svc: &Services,
    user_id: UserId,
    session_id: SessionId,
    client: &ClientInfo,
) -> AppResult<bool> {
    let mut tx = store::Write::begin(svc).await?;
    let ended = tx.end_session(session_id, Some(user_id)).await?;
    if ended {
        let event =
            Event::new(EventKind::SessionRevoked, Some(user_id), Actor::User(user_id), client).session(session_id);
        tx.record(event).await?;
    }
    tx.commit().await?;
    Ok(ended)
}

/// The live sessions of each of `user_ids`, newest first, in one query (a page
/// of users asking for their sessions is one round trip, not one per user).
/// Users without live sessions are absent from the map.
pub async fn list_for_users(svc: &Services, user_ids: &[UserId]) -> AppResult<HashMap<UserId, Vec<session::Model>>> {
    let rows = session::Entity::find()
        .filter(session::Column::UserId.is_in(user_ids.iter().map(|id| id.uuid())))
        .filter(session::Column::RevokedAt.is_null())
        .filter(session::Column::ExpiresAt.gt(svc.clock.now()))
        .order_by_desc(session::Column::CreatedAt)
        .all(&svc.db)
        .await?;
    tracing::debug!(users = user_ids.len(), sessions = rows.len(), "live sessions read");
    let mut by_user: HashMap<UserId, Vec<session::Model>> = HashMap::new();
    for row in rows {
        by_user.entry(row.user_id.into()).or_default().push(row);
    }
    Ok(by_user)
}

/// What `tokenInfo` reports about an access token.
pub struct TokenInfo {
    pub active: bool,
    pub user_id: Option<UserId>,
    pub role: Option<user::Role>,
    pub session_id: Option<SessionId>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Checks an access token for a service: signature, claims, and whether its
/// session is still live (revocation included). The role is the current one.
pub async fn introspect(
    svc: &Services,
    _proof: &crate::auth::access::Granted<crate::auth::access::TokensIntrospect>,
    token: &str,
) -> TokenInfo {
    match live_access(svc, token).await {
        Ok((v, role)) => TokenInfo {
            active: true,
            user_id: Some(v.user_id),
            role: Some(role),
            session_id: Some(v.session_id),
            expires_at: DateTime::from_timestamp(v.exp, 0),
        },
        Err(_) => TokenInfo { active: false, user_id: None, role: None, session_id: None, expires_at: None },
    }
}

/// What an access token proves: its claims and the user's current role, if it
/// verifies and its session is live; otherwise why not. Answered from memory
/// (the registry) when it holds the session, and otherwise from one database
/// read that fills it ([`store::read_through`]).
pub async fn live_access(svc: &Services, token: &str) -> Result<(Verified, user::Role), RejectReason> {
    let now = svc.clock.unix();
    let v = svc.tokens.check(token, now).map_err(|e| match e {
        AppError::AccessTokenExpired => RejectReason::Expired,
        _ => RejectReason::Invalid,
    })?;
    match store::session_role(svc, v.session_id, v.user_id).await {
        Some(role) => Ok((v, role)),
        None => Err(RejectReason::Revoked),
    }
}
