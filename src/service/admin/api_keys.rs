//! Service API keys: `sk_live_` + 16 hex characters of lookup prefix + 43
//! characters of secret. Only the SHA-256 of the whole key is stored; the key is
//! shown once, at creation or rotation. Revocation and expiry are checked on
//! every use. `lastUsedAt` is kept in memory and written in batches, so using a
//! key costs no database write; a write never moves it backwards.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, ExprTrait, QueryFilter, QueryOrder, Set,
    sea_query::Expr,
};
use sha2::{Digest, Sha256};

use entity::api_key;

use crate::service::{
    ClientInfo, Services,
    core::{
        events::{Event, EventKind},
        store,
    },
};
use crate::{
    auth::{
        access::{Actor, AdminOnly, ApiScope, Granted},
        principal::{RejectReason, ServicePrincipal},
    },
    db::UniqueRow,
    domain::{ApiKey, ApiKeyId, UserId},
    error::{AppError, AppResult, Reason},
};

pub const KEY_PREFIX: &str = "sk_live_";
const LOOKUP_HEX_LEN: usize = 16;
const SECRET_LEN: usize = 43;
const MAX_LIFETIME_DAYS: i32 = 3650;
const MAX_GRACE_DAYS: i32 = 365;

fn hash_key(raw: &str) -> String {
    B64.encode(Sha256::digest(raw.as_bytes()))
}

/// Splits a presented key into its stored prefix, if it has the right shape.
fn prefix_of(raw: &str) -> Option<&str> {
    let rest = raw.strip_prefix(KEY_PREFIX)?;
    if rest.len() != LOOKUP_HEX_LEN + SECRET_LEN || !rest.is_ascii() {
        return None;
    }
    let (lookup, secret) = rest.split_at(LOOKUP_HEX_LEN);
    let hex_ok = lookup.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let secret_ok = secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (hex_ok && secret_ok).then(|| &raw[..KEY_PREFIX.len() + LOOKUP_HEX_LEN])
}

fn generate_key() -> AppResult<String> {
    let mut lookup = [0u8; LOOKUP_HEX_LEN / 2];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut lookup).map_err(|e| AppError::internal(format!("getrandom: {e}")))?;
    getrandom::fill(&mut secret).map_err(|e| AppError::internal(format!("getrandom: {e}")))?;
    let hex: String = lookup.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{KEY_PREFIX}{hex}{}", B64.encode(secret)))
}

/// Checks a presented `X-API-Key`.
pub async fn authenticate(svc: &Services, raw: &str) -> Result<ServicePrincipal, AuthFailure> {
    let prefix = prefix_of(raw).ok_or(AuthFailure::Rejected(RejectReason::Invalid))?;
    let key = api_key::Entity::find()
        .filter(api_key::Column::Prefix.eq(prefix))
        .unique_row(&svc.db)
        .await
        .map_err(|e| AuthFailure::Error(e.into()))?
        .ok_or(AuthFailure::Rejected(RejectReason::Invalid))?;
    if key.secret_hash != hash_key(raw) {
        return Err(AuthFailure::Rejected(RejectReason::Invalid));
    }
    let now = svc.clock.now();
    if key.revoked_at.is_some() {
        return Err(AuthFailure::Rejected(RejectReason::Revoked));
    }
    if key.expires_at.is_some_and(|at| at <= now) {
        return Err(AuthFailure::Rejected(RejectReason::Expired));
    }
    svc.api_key_usage.touch(key.id.into(), now);
    Ok(ServicePrincipal { key_id: key.id.into(), scopes: ApiScope::parse_list(&key.scopes) })
}

/// Why a key did not authenticate: a bad key, or the database failing.
#[derive(Debug)]
pub enum AuthFailure {
    Rejected(RejectReason),
    Error(AppError),
}

fn lifetime(expires_in_days: Option<i32>) -> AppResult<Option<ChronoDuration>> {
    match expires_in_days {
        None => Ok(None),
        Some(d) if (1..=MAX_LIFETIME_DAYS).contains(&d) => Ok(Some(ChronoDuration::days(i64::from(d)))),
        Some(_) => Err(AppError::invalid_input(
            Reason::InvalidExpiry,
            "expiresInDays",
            format!("expiresInDays must be between 1 and {MAX_LIFETIME_DAYS}, or null for no expiry"),
        )),
    }
}

async fn insert_key(
    svc: &Services,
    conn: &impl ConnectionTrait,
    name: String,
    scopes: &[ApiScope],
    created_by: Option<UserId>,
    expires_at: Option<DateTime<Utc>>,
) -> AppResult<(ApiKey, String)> {
    let secret = generate_key()?;
    let prefix = prefix_of(&secret).ok_or_else(|| AppError::internal("generated key has the wrong shape"))?;
    let scopes: Vec<&str> = ApiScope::ALL.into_iter().filter(|s| scopes.contains(s)).map(ApiScope::as_str).collect();
    let model = api_key::ActiveModel {
        id: Set(ApiKeyId::new().uuid()),
        name: Set(name),
        prefix: Set(prefix.to_owned()),
        secret_hash: Set(hash_key(&secret)),
        scopes: Set(scopes.join(",")),
        created_by: Set(created_by.map(UserId::uuid)),
        created_at: Set(svc.clock.now()),
        expires_at: Set(expires_at),
        last_used_at: Set(None),
        revoked_at: Set(None),
        replaced_by: Set(None),
    }
    .insert(conn)
    .await?;
    Ok((model.into(), secret))
}

fn admin_id(proof: &Granted<AdminOnly>) -> Option<UserId> {
    match proof.actor {
        Actor::Admin(id) => Some(id),
        Actor::Service(_) => None,
    }
}

pub async fn create(
    svc: &Services,
    proof: &Granted<AdminOnly>,
    name: &str,
    scopes: &[ApiScope],
    expires_in_days: Option<i32>,
    client: &ClientInfo,
) -> AppResult<(ApiKey, String)> {
    // Admins read key names in listings: the rules of a person's name apply, so
    // invisible and direction-changing characters are refused here too.
    let name = crate::service::core::validate::name(name)?;
    if scopes.is_empty() {
        return Err(AppError::invalid_input(Reason::InvalidScopes, "scopes", "Give the key at least one scope"));
    }
    let expires_at = lifetime(expires_in_days)?.map(|d| svc.clock.now() + d);
    let txn = store::Write::begin(svc).await?;
    let created = insert_key(svc, txn.conn(), name, scopes, admin_id(proof), expires_at).await?;
    let event = Event::new(EventKind::ApiKeyCreated, None, proof.actor.into(), client).detail(created.0.id.to_string());
    txn.record(event).await?;
    txn.commit().await?;
    tracing::info!(api_key_id = %created.0.id, "API key created");
    Ok(created)
}

/// Issues a new key with the same name, scopes and lifetime; the old one keeps
/// working for `grace_days`, then expires.
///
/// One write transaction: the old key is marked replaced only if it is live and
/// has no successor yet (a conditional update whose row count decides), and the
/// successor is inserted beside it. A key therefore has at most one successor,
/// a second or concurrent rotation of it is refused, and a crash leaves either
/// the old state or the new one.
///
/// Errors (`BAD_USER_INPUT`, field `id` unless said): `INVALID_GRACE`
/// (`graceDays` outside 0 to 365), `ALREADY_ROTATED` (rotate its successor
/// instead), `NOT_FOUND` (unknown, revoked or expired).
pub async fn rotate(
    svc: &Services,
    proof: &Granted<AdminOnly>,
    id: ApiKeyId,
    grace_days: i32,
    client: &ClientInfo,
) -> AppResult<(ApiKey, String)> {
    if !(0..=MAX_GRACE_DAYS).contains(&grace_days) {
        return Err(AppError::invalid_input(
            Reason::InvalidGrace,
            "graceDays",
            format!("graceDays must be between 0 and {MAX_GRACE_DAYS}"),
        ));
    }
    let now = svc.clock.now();
    let not_found = || AppError::invalid_input(Reason::NotFound, "id", "No such live API key");
    let already = || {
        AppError::invalid_input(
            Reason::AlreadyRotated,
            "id",
            "This API key was already rotated; rotate its successor instead",
        )
    };
    let old = api_key::Entity::find_by_id(id.uuid())
        .unique_row(&svc.db)
        .await?
        .filter(|k| k.revoked_at.is_none() && k.expires_at.is_none_or(|at| at > now))
        .ok_or_else(not_found)?;
    if old.replaced_by.is_some() {
        return Err(already());
    }
    let expires_at = old.expires_at.map(|at| now + (at - old.created_at));
    let scopes = ApiScope::parse_list(&old.scopes);
    let grace_end = now + ChronoDuration::days(i64::from(grace_days));
    let old_end = old.expires_at.map_or(grace_end, |at| Ord::min(at, grace_end));
    let txn = store::Write::begin(svc).await?;
    let created = insert_key(svc, txn.conn(), old.name.clone(), &scopes, admin_id(proof), expires_at).await?;
    let marked = api_key::Entity::update_many()
        .col_expr(api_key::Column::ExpiresAt, Expr::value(old_end))
        .col_expr(api_key::Column::ReplacedBy, Expr::value(created.0.id))
        .filter(api_key::Column::Id.eq(old.id))
        .filter(api_key::Column::ReplacedBy.is_null())
        .filter(api_key::Column::RevokedAt.is_null())
        .filter(api_key::Column::ExpiresAt.is_null().or(api_key::Column::ExpiresAt.gt(now)))
        .exec(txn.conn())
        .await?;
    if marked.rows_affected != 1 {
        // Rotated (or revoked) by someone else since the read: nothing is kept.
        txn.rollback().await?;
        let current = api_key::Entity::find_by_id(id.uuid()).unique_row(&svc.db).await?;
        return Err(if current.is_some_and(|k| k.replaced_by.is_some()) { already() } else { not_found() });
    }
    let event = Event::new(EventKind::ApiKeyRotated, None, proof.actor.into(), client)
        .detail(format!("{} -> {}", old.id, created.0.id));
    txn.record(event).await?;
    txn.commit().await?;
    tracing::info!(old = %old.id, new = %created.0.id, grace_days, "API key rotated");
    Ok(created)
}

/// Revokes a key at once. False when it was unknown, already revoked or
/// already expired: true says a working key stopped working.
pub async fn revoke(svc: &Services, proof: &Granted<AdminOnly>, id: ApiKeyId, client: &ClientInfo) -> AppResult<bool> {
    let txn = store::Write::begin(svc).await?;
    let now = svc.clock.now();
    let revoked = api_key::Entity::update_many()
        .col_expr(api_key::Column::RevokedAt, Expr::value(now))
        .filter(api_key::Column::Id.eq(id))
        .filter(api_key::Column::RevokedAt.is_null())
        .exec_with_returning(txn.conn())
        .await?;
    let live = revoked.iter().any(|k| k.expires_at.is_none_or(|at| at > now));
    if live {
        let event = Event::new(EventKind::ApiKeyRevoked, None, proof.actor.into(), client).detail(id.to_string());
        txn.record(event).await?;
    }
    txn.commit().await?;
    if live {
        tracing::info!(api_key_id = %id, "API key revoked");
    }
    Ok(live)
}

/// All keys, newest first, with last-use times that may not be written yet.
pub async fn list(svc: &Services, _proof: &Granted<AdminOnly>) -> AppResult<Vec<ApiKey>> {
    let mut keys: Vec<ApiKey> = api_key::Entity::find()
        .order_by_desc(api_key::Column::Id)
        .all(&svc.db)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    for k in &mut keys {
        if let Some(at) = svc.api_key_usage.peek(k.id) {
            k.last_used_at = Some(at);
        }
    }
    Ok(keys)
}

/// Writes pending last-use times. On failure they are kept for the next try.
/// A stored time is only ever moved forward (the update is conditional), so a
/// late or retried write, or another instance's, never replaces a newer one.
pub async fn flush_usage(svc: &Services) -> AppResult<usize> {
    let pending = svc.api_key_usage.take();
    let n = pending.len();
    for (i, (id, at)) in pending.iter().enumerate() {
        let res = api_key::Entity::update_many()
            .col_expr(api_key::Column::LastUsedAt, Expr::value(*at))
            .filter(api_key::Column::Id.eq(*id))
            .filter(api_key::Column::LastUsedAt.is_null().or(api_key::Column::LastUsedAt.lt(*at)))
            .exec(&svc.db)
            .await;
        if let Err(e) = res {
            for (id, at) in pending.iter().skip(i) {
                svc.api_key_usage.touch(*id, *at);
            }
            return Err(e.into());
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_a_fixed_shape() {
        let k = generate_key().unwrap();
        assert_eq!(k.len(), KEY_PREFIX.len() + LOOKUP_HEX_LEN + SECRET_LEN, "{}", k.len());
        assert_eq!(prefix_of(&k), Some(&k[..24]));
        assert_ne!(generate_key().unwrap(), k);
        assert_eq!(prefix_of("sk_live_short"), None);
        assert_eq!(prefix_of(&k.replace("sk_live_", "sk_test_")), None);
        let mut upper = k.clone();
        upper.replace_range(8..9, "G");
        assert_eq!(prefix_of(&upper), None);
    }
}
