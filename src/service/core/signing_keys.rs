//! The signing keys every instance shares: kept in `signing_keys`, sealed at
//! rest (see `auth::keys`), rotated without a refused token.
//!
//! A key is `next` (published, not yet signing), `current` (signing) or
//! `retired` (published until `published_until`, no longer signing). Which key
//! signs is a matter of time, not of who noticed first: at any moment it is the
//! newest key, not retired, whose `signs_from` has come. A rotation makes a
//! `next` key that signs [`KeyPolicy::lead`] later, so that every verifier that
//! caches the JWK Set has fetched it by then; when its time comes the key
//! before it is retired, and stays published for [`KeyPolicy::linger`] (longer
//! than any token it signed lives). Each instance reloads the set every
//! [`REFRESH`], so a key made by another instance or by `authgraph keys` is
//! known long before it signs.
//!
//! Every change happens in a write transaction that the others wait for
//! (SQLite's write lock; a transaction-scoped advisory lock on PostgreSQL): the
//! first instance to start on an empty database makes the key, the others find
//! it, and two rotations at once make one key.

use std::{borrow::Borrow, sync::Arc};

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait, QueryOrder,
    Set, Statement,
};

use entity::signing_key;

use crate::{
    auth::{
        access::{AdminOnly, Granted},
        keys::{self, Sealer},
        tokens::KeySet,
    },
    config::SigningAlgorithm,
    db, domain,
    error::{AppError, AppResult, Reason},
    service::Services,
};

/// The advisory lock that serialises key changes on PostgreSQL ("agkeys").
const KEYS_LOCK: i64 = 0x6167_6b65_7973;

/// How often a serving instance reloads the key set.
pub use crate::config::KEY_REFRESH as REFRESH;

pub const STATE_NEXT: &str = "next";
pub const STATE_CURRENT: &str = "current";
pub const STATE_RETIRED: &str = "retired";

/// How keys come and go.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    /// The algorithm new keys are made for (`JWT_ALGORITHM`).
    pub alg: SigningAlgorithm,
    /// How long a new key is published before it signs (`JWT_KEY_LEAD_TIME`).
    pub lead: chrono::Duration,
    /// How long a key stays published after it stops signing: the access-token
    /// lifetime and a margin.
    pub linger: chrono::Duration,
    /// A new key when the signing one has signed this long (`JWT_KEY_ROTATION_INTERVAL`); `None`: only on demand.
    pub rotate_every: Option<chrono::Duration>,
}

/// The stored keys of an ES256 or EdDSA install, and how to open them.
pub struct SigningKeys {
    pub sealer: Sealer,
    pub policy: KeyPolicy,
}

/// Begins a key change: a write transaction holding the keys lock.
async fn begin(db: &DatabaseConnection) -> AppResult<DatabaseTransaction> {
    let txn = db::begin_write(db).await?;
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [KEYS_LOCK.into()],
        ))
        .await?;
    }
    Ok(txn)
}

/// Which of `live` (keys not retired, oldest `signs_from` first) signs at
/// `now`: the newest whose time has come.
fn signing_at<K: Borrow<signing_key::Model>>(live: &[K], now: DateTime<Utc>) -> Option<usize> {
    live.iter().rposition(|k| k.borrow().signs_from <= now)
}

/// Whether a scheduled rotation is due at `now` among `live` (as for
/// [`signing_at`]): no key is waiting, and the one that signs has signed for
/// the policy's interval.
fn rotation_due<K: Borrow<signing_key::Model>>(live: &[K], policy: &KeyPolicy, now: DateTime<Utc>) -> bool {
    let Some(every) = policy.rotate_every else { return false };
    let waiting = live.iter().any(|k| k.borrow().signs_from > now);
    !waiting && signing_at(live, now).is_some_and(|i| live[i].borrow().signs_from + every <= now)
}

/// Whether [`settle`] has anything to write at `now` in `rows` (every stored
/// key): a key whose time has come that is not `current` yet, one before it
/// not retired, or a retired key published for less than this instance's
/// tokens live.
fn unsettled(rows: &[signing_key::Model], policy: &KeyPolicy, now: DateTime<Utc>) -> bool {
    let mut live: Vec<&signing_key::Model> = rows.iter().filter(|k| k.state != STATE_RETIRED).collect();
    live.sort_by_key(|k| k.signs_from);
    signing_at(&live, now).is_some_and(|i| i > 0 || live[i].state != STATE_CURRENT)
        || rows.iter().any(|k| short(k, policy, now))
}

/// A retired key that signed, still published, but for less than `policy`'s
/// linger after it stopped: an instance whose tokens live longer than those of
/// whoever retired it (another `ACCESS_TOKEN_TTL`) keeps it published longer.
fn short(k: &signing_key::Model, policy: &KeyPolicy, now: DateTime<Utc>) -> bool {
    match (k.retired_at, k.published_until) {
        (Some(retired), Some(until)) => until > now && retired < until && until < retired + policy.linger,
        _ => false,
    }
}

/// Brings the stored states up to `now`: the key that signs now is `current`,
/// those before it are retired from the moment it began to sign, and no
/// retired key leaves the set before this instance's tokens signed by it have
/// expired. Returns the keys not retired, oldest first.
async fn settle(
    txn: &DatabaseTransaction,
    policy: &KeyPolicy,
    now: DateTime<Utc>,
) -> AppResult<Vec<signing_key::Model>> {
    let rows = signing_key::Entity::find().order_by_asc(signing_key::Column::SignsFrom).all(txn).await?;
    let (retired, live): (Vec<_>, Vec<_>) = rows.into_iter().partition(|k| k.state == STATE_RETIRED);
    for key in retired.into_iter().filter(|k| short(k, policy, now)) {
        let until = key.retired_at.map(|r| r + policy.linger);
        let mut longer: signing_key::ActiveModel = key.into();
        longer.published_until = Set(until);
        longer.update(txn).await?;
    }
    let Some(signer) = signing_at(&live, now) else { return Ok(live) };
    let since = live[signer].signs_from;
    let mut kept = Vec::new();
    for (i, key) in live.into_iter().enumerate() {
        if i < signer {
            let mut retired: signing_key::ActiveModel = key.into();
            retired.state = Set(STATE_RETIRED.to_owned());
            retired.retired_at = Set(Some(since));
            retired.published_until = Set(Some(since + policy.linger));
            retired.update(txn).await?;
        } else if i == signer && key.state != STATE_CURRENT {
            let mut current: signing_key::ActiveModel = key.into();
            current.state = Set(STATE_CURRENT.to_owned());
            kept.push(current.update(txn).await?);
        } else {
            kept.push(key);
        }
    }
    Ok(kept)
}

/// Refuses to go on when `keys.sealer` does not open the stored keys (another
/// `KEY_ENCRYPTION_SECRET`): a key made now would be one the servers cannot
/// open. Errors: `INTERNAL`, naming the key that does not open.
fn check_opens(keys: &SigningKeys, live: &[signing_key::Model]) -> AppResult<()> {
    for row in live {
        keys.sealer.open(&keys::identity(&row.kid, &row.alg, &row.public_jwk), &row.private_key)?;
    }
    Ok(())
}

/// Makes a key of `policy.alg` that signs from `signs_from`.
async fn make(
    txn: &DatabaseTransaction,
    keys: &SigningKeys,
    now: DateTime<Utc>,
    signs_from: DateTime<Utc>,
) -> AppResult<signing_key::Model> {
    let alg = keys.policy.alg;
    let kid = uuid::Uuid::now_v7().simple().to_string();
    let generated = keys::generate(alg, &kid)?;
    let public_jwk = generated.public_jwk.to_string();
    let row = signing_key::Model {
        kid: kid.clone(),
        alg: alg.name().to_owned(),
        state: (if signs_from <= now { STATE_CURRENT } else { STATE_NEXT }).to_owned(),
        private_key: keys.sealer.seal(&keys::identity(&kid, alg.name(), &public_jwk), &generated.pkcs8)?,
        public_jwk,
        created_at: now,
        signs_from,
        retired_at: None,
        published_until: None,
    };
    signing_key::Entity::insert(signing_key::ActiveModel::from(row.clone())).exec_without_returning(txn).await?;
    tracing::info!(kid = %kid, alg = alg.name(), signs_from = %signs_from, "signing key made");
    Ok(row)
}

/// At start: makes sure a key signs, then loads the set. A new install gets a
/// key that signs at once. When the key that signs is not of `policy.alg`
/// (`JWT_ALGORITHM` changed), a key of the new algorithm is made to sign after
/// the lead time, like any rotation, so no verifier meets a key it has not
/// fetched. Errors: `INTERNAL` when a stored key does not open (another
/// `KEY_ENCRYPTION_SECRET`), or a database error.
pub async fn ensure(db: &DatabaseConnection, keys: &SigningKeys, now: DateTime<Utc>) -> AppResult<KeySet> {
    let txn = begin(db).await?;
    let live = settle(&txn, &keys.policy, now).await?;
    check_opens(keys, &live)?;
    if live.is_empty() {
        make(&txn, keys, now, now).await?;
    } else if !live.iter().any(|k| k.alg == keys.policy.alg.name()) {
        // A waiting key of the old algorithm would take over from the new one
        // when its time came: it is called off.
        for waiting in live.into_iter().filter(|k| k.signs_from > now) {
            let mut off: signing_key::ActiveModel = waiting.into();
            off.state = Set(STATE_RETIRED.to_owned());
            off.retired_at = Set(Some(now));
            off.published_until = Set(Some(now));
            off.update(&txn).await?;
        }
        let row = make(&txn, keys, now, now + keys.policy.lead).await?;
        tracing::warn!(
            kid = %row.kid,
            signs_from = %row.signs_from,
            "JWT_ALGORITHM changed: the new key is published now and signs after the lead time"
        );
    }
    txn.commit().await?;
    load(db, keys, now).await
}

/// Starts a rotation: a `next` key that signs after the lead time. When one is
/// waiting already, that one is returned (so two rotations at once, or a
/// rotation repeated, make one key).
pub async fn rotate(db: &DatabaseConnection, keys: &SigningKeys, now: DateTime<Utc>) -> AppResult<signing_key::Model> {
    let txn = begin(db).await?;
    let live = settle(&txn, &keys.policy, now).await?;
    check_opens(keys, &live)?;
    let row = if live.is_empty() {
        // Nothing signs yet (no server has started on this database): nobody
        // can have cached a set, so the first key signs at once.
        make(&txn, keys, now, now).await?
    } else {
        match live.into_iter().find(|k| k.signs_from > now) {
            Some(waiting) => waiting,
            None => make(&txn, keys, now, now + keys.policy.lead).await?,
        }
    };
    txn.commit().await?;
    Ok(row)
}

/// Why `retire` refused.
#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    #[error("no signing key {0}")]
    Unknown(String),
    #[error(
        "{0} is the key that signs now: rotate first (`authgraph keys rotate`); it retires when its successor starts to sign"
    )]
    Signing(String),
    #[error(
        "{0} signs from {1}, too soon to call it off: running instances may sign with it before they learn of it; let it sign, then rotate"
    )]
    TooLate(String, DateTime<Utc>),
    #[error(transparent)]
    App(#[from] AppError),
}

/// Retires a key that does not sign now: a waiting `next` key (a rotation
/// called off) is unpublished at once, since it signed nothing; a retired one
/// is left as it is. The key that signs cannot be retired (rotate first).
pub async fn retire(
    db: &DatabaseConnection,
    keys: &SigningKeys,
    kid: &str,
    now: DateTime<Utc>,
) -> Result<signing_key::Model, RetireError> {
    let txn = begin(db).await?;
    let live = settle(&txn, &keys.policy, now).await?;
    let row = signing_key::Entity::find_by_id(kid.to_owned())
        .one(&txn)
        .await
        .map_err(AppError::from)?
        .ok_or_else(|| RetireError::Unknown(kid.to_owned()))?;
    if row.state == STATE_RETIRED {
        txn.commit().await.map_err(AppError::from)?;
        return Ok(row);
    }
    if signing_at(&live, now).is_some_and(|i| live[i].kid == kid) {
        return Err(RetireError::Signing(kid.to_owned()));
    }
    // Instances reload the set every REFRESH: one that has not yet learned
    // of the retirement would sign with the key once its time came.
    let margin = chrono::Duration::from_std(REFRESH).unwrap_or_default() * 2;
    if row.signs_from <= now + margin {
        return Err(RetireError::TooLate(kid.to_owned(), row.signs_from));
    }
    let mut retired: signing_key::ActiveModel = row.into();
    retired.state = Set(STATE_RETIRED.to_owned());
    retired.retired_at = Set(Some(now));
    retired.published_until = Set(Some(now));
    let row = retired.update(&txn).await.map_err(AppError::from)?;
    txn.commit().await.map_err(AppError::from)?;
    Ok(row)
}

/// Every stored key, states brought up to `now`, newest first.
pub async fn list(
    db: &DatabaseConnection,
    keys: &SigningKeys,
    now: DateTime<Utc>,
) -> AppResult<Vec<signing_key::Model>> {
    let txn = begin(db).await?;
    settle(&txn, &keys.policy, now).await?;
    let rows = signing_key::Entity::find().order_by_desc(signing_key::Column::SignsFrom).all(&txn).await?;
    txn.commit().await?;
    Ok(rows)
}

/// The set to sign and verify with at `now`: every key not retired signs from
/// its own time; every key still published verifies. Errors: `INTERNAL` when
/// a key does not open under the sealer.
pub async fn load(db: &DatabaseConnection, keys: &SigningKeys, now: DateTime<Utc>) -> AppResult<KeySet> {
    let rows = signing_key::Entity::find().all(db).await?;
    let mut set = KeySet { signers: Vec::new(), published: Vec::new() };
    for row in rows {
        if row.published_until.is_some_and(|until| until <= now) {
            continue;
        }
        let Some(alg) = SigningAlgorithm::from_name(&row.alg) else {
            return Err(AppError::internal(format!("signing key {} has an unknown alg", row.kid)));
        };
        let jwk: serde_json::Value = serde_json::from_str(&row.public_jwk)
            .map_err(|e| AppError::internal(format!("signing key {}: {e}", row.kid)))?;
        // Every published key is opened, retired ones too: a row whose public
        // key or algorithm was changed does not open, and is not trusted.
        let pkcs8 = keys.sealer.open(&keys::identity(&row.kid, &row.alg, &row.public_jwk), &row.private_key)?;
        let (encoding, _) = keys::jwt_keys(alg, &pkcs8, &jwk)?;
        if row.state != STATE_RETIRED {
            set.signers.push((row.kid.clone(), alg, encoding, row.signs_from.timestamp()));
        }
        set.published.push((row.kid, alg, keys::decoding_key(alg, &jwk)?, jwk));
    }
    if set.signers.is_empty() {
        return Err(AppError::internal("no signing key: start the server once to make one"));
    }
    Ok(set)
}

/// Every stored key, newest first, for an admin. An HS256 install has none.
pub async fn list_keys(svc: &Services, _proof: &Granted<AdminOnly>) -> AppResult<Vec<domain::SigningKey>> {
    let Some(keys) = &svc.signing else { return Ok(Vec::new()) };
    Ok(list(&svc.db, keys, svc.clock.now()).await?.into_iter().map(Into::into).collect())
}

/// Starts a rotation for an admin (see [`rotate`]) and publishes the new key
/// from this instance at once (the others load it within [`REFRESH`]).
/// Errors: `NO_SIGNING_KEYS` on an HS256 install.
pub async fn rotate_key(svc: &Services, _proof: &Granted<AdminOnly>) -> AppResult<domain::SigningKey> {
    let Some(keys) = &svc.signing else {
        return Err(AppError::Refused {
            reason: Reason::NoSigningKeys,
            message: "This install signs HS256: there is no key pair to rotate".into(),
        });
    };
    let now = svc.clock.now();
    let row = rotate(&svc.db, keys, now).await?;
    svc.tokens.replace(load(&svc.db, keys, now).await?);
    tracing::info!(kid = %row.kid, signs_from = %row.signs_from, "signing key rotation started");
    Ok(row.into())
}

/// One round of the background work: the stored states brought up to date
/// when a key's time has come, a scheduled rotation when one is due, then the
/// set reloaded into `tokens`. The write lock is taken only when there is
/// something to write.
pub async fn refresh(
    db: &DatabaseConnection,
    keys: &SigningKeys,
    tokens: &crate::auth::tokens::TokenKeys,
    now: DateTime<Utc>,
) -> AppResult<()> {
    let rows = signing_key::Entity::find().all(db).await?;
    let mut live: Vec<&signing_key::Model> = rows.iter().filter(|k| k.state != STATE_RETIRED).collect();
    live.sort_by_key(|k| k.signs_from);
    if unsettled(&rows, &keys.policy, now) || rotation_due(&live, &keys.policy, now) {
        let txn = begin(db).await?;
        let live = settle(&txn, &keys.policy, now).await?;
        // Asked again under the lock: another instance may have rotated.
        if rotation_due(&live, &keys.policy, now) {
            check_opens(keys, &live)?;
            make(&txn, keys, now, now + keys.policy.lead).await?;
        }
        txn.commit().await?;
    }
    tokens.replace(load(db, keys, now).await?);
    Ok(())
}

/// Runs [`refresh`] every `every` ([`REFRESH`] on a server) until the task is
/// aborted; failures are logged and retried at the next tick (the keys in
/// memory keep working).
pub fn spawn_refresher(
    svc: Services,
    keys: Arc<SigningKeys>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = refresh(&svc.db, &keys, &svc.tokens, svc.clock.now()).await {
                tracing::warn!(error = %e.detail(), "reloading the signing keys failed; will retry");
            }
        }
    })
}

#[cfg(test)]
#[path = "signing_keys_tests.rs"]
mod tests;
