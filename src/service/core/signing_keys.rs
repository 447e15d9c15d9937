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
mod tests {
    use sea_orm::PaginatorTrait;

    use super::*;
    use crate::{auth::tokens::TokenKeys, config::Secret, service::testkit::TestKit};

    fn keys(alg: SigningAlgorithm) -> SigningKeys {
        SigningKeys {
            sealer: Sealer::new(&Secret::new(vec![9; 32])),
            policy: KeyPolicy {
                alg,
                lead: chrono::Duration::minutes(15),
                linger: chrono::Duration::minutes(20),
                rotate_every: None,
            },
        }
    }

    fn kids(set: &KeySet) -> Vec<String> {
        set.published.iter().map(|(kid, ..)| kid.clone()).collect()
    }

    fn tokens(set: KeySet) -> TokenKeys {
        TokenKeys::from_key_set(set, "authgraph", "authgraph", std::time::Duration::from_secs(900))
    }

    /// Instances starting at once on one database end up with one key, and a
    /// restart finds it again.
    #[tokio::test]
    async fn instances_starting_together_share_one_key() {
        let kit = TestKit::new().await;
        let k = keys(SigningAlgorithm::Es256);
        let now = kit.svc.clock.now();
        let (a, b) = tokio::join!(ensure(&kit.svc.db, &k, now), ensure(&kit.svc.db, &k, now));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(kids(&a), kids(&b));
        assert_eq!(signing_key::Entity::find().count(&kit.svc.db).await.unwrap(), 1);
        assert_eq!(kids(&ensure(&kit.svc.db, &k, now).await.unwrap()), kids(&a));
    }

    /// The stored private key is sealed: its PKCS#8 bytes are not in the row,
    /// and another secret cannot open it.
    #[tokio::test]
    async fn the_private_key_is_stored_sealed() {
        let kit = TestKit::new().await;
        let k = keys(SigningAlgorithm::EdDsa);
        let set = ensure(&kit.svc.db, &k, kit.svc.clock.now()).await.unwrap();
        let kid = kids(&set).remove(0);
        let row = signing_key::Entity::find_by_id(kid.clone()).one(&kit.svc.db).await.unwrap().unwrap();
        let pkcs8 = k.sealer.open(&keys::identity(&row.kid, &row.alg, &row.public_jwk), &row.private_key).unwrap();
        assert!(!row.private_key.windows(32).any(|w| pkcs8.windows(32).any(|p| p == w)), "stored in the clear");
        let other = SigningKeys { sealer: Sealer::new(&Secret::new(vec![8; 32])), policy: k.policy.clone() };
        let err = load(&kit.svc.db, &other, kit.svc.clock.now()).await.err().expect("opened under another secret");
        assert!(err.detail().contains(&kid) && err.detail().contains("KEY_ENCRYPTION_SECRET"), "{}", err.detail());
    }

    /// A rotation publishes the new key at once and signs with it after the
    /// lead time; the old one then stops signing and stays published until its
    /// tokens have expired. Repeating the rotation makes no second key.
    #[tokio::test]
    async fn a_rotation_publishes_first_signs_later_and_retires_the_old_key_after_its_tokens() {
        let kit = TestKit::new().await;
        let k = keys(SigningAlgorithm::Es256);
        // Whole seconds: PostgreSQL keeps microseconds.
        let t0 = chrono::SubsecRound::trunc_subsecs(kit.svc.clock.now(), 0);
        let first = kids(&ensure(&kit.svc.db, &k, t0).await.unwrap()).remove(0);
        let next = rotate(&kit.svc.db, &k, t0).await.unwrap();
        assert_eq!(next.state, STATE_NEXT);
        assert_eq!(rotate(&kit.svc.db, &k, t0).await.unwrap().kid, next.kid, "a second rotation made another key");

        let set = load(&kit.svc.db, &k, t0).await.unwrap();
        assert_eq!(kids(&set).len(), 2, "the next key is published at once");
        let tk = tokens(set);
        let before = (t0 + k.policy.lead - chrono::Duration::seconds(1)).timestamp();
        let after = (t0 + k.policy.lead).timestamp();
        assert_eq!(tk.signing_kid(before).as_deref(), Some(first.as_str()));
        assert_eq!(tk.signing_kid(after).as_deref(), Some(next.kid.as_str()));

        let t1 = t0 + k.policy.lead;
        let listed = list(&kit.svc.db, &k, t1).await.unwrap();
        let old = listed.iter().find(|r| r.kid == first).unwrap();
        assert_eq!(old.state, STATE_RETIRED);
        assert_eq!(old.published_until, Some(t1 + k.policy.linger));
        assert_eq!(listed.iter().find(|r| r.kid == next.kid).unwrap().state, STATE_CURRENT);
        assert_eq!(
            kids(&load(&kit.svc.db, &k, t1 + k.policy.linger - chrono::Duration::seconds(1)).await.unwrap()).len(),
            2
        );
        assert_eq!(kids(&load(&kit.svc.db, &k, t1 + k.policy.linger).await.unwrap()), vec![next.kid.clone()]);
    }

    #[tokio::test]
    async fn only_a_key_that_does_not_sign_can_be_retired() {
        let kit = TestKit::new().await;
        let k = keys(SigningAlgorithm::Es256);
        let now = kit.svc.clock.now();
        let first = kids(&ensure(&kit.svc.db, &k, now).await.unwrap()).remove(0);
        assert!(matches!(retire(&kit.svc.db, &k, &first, now).await, Err(RetireError::Signing(_))));
        assert!(matches!(retire(&kit.svc.db, &k, "nope", now).await, Err(RetireError::Unknown(_))));
        let next = rotate(&kit.svc.db, &k, now).await.unwrap();
        // Too close to its time: an instance that has not reloaded would sign with it.
        let close = next.signs_from - chrono::Duration::seconds(30);
        assert!(matches!(retire(&kit.svc.db, &k, &next.kid, close).await, Err(RetireError::TooLate(..))));
        let called_off = retire(&kit.svc.db, &k, &next.kid, now).await.unwrap();
        assert_eq!(called_off.state, STATE_RETIRED);
        assert_eq!(
            kids(&load(&kit.svc.db, &k, now).await.unwrap()),
            vec![first.clone()],
            "a called-off key is published"
        );
        // With the waiting key gone, a rotation makes a new one.
        assert_ne!(rotate(&kit.svc.db, &k, now).await.unwrap().kid, next.kid);
    }

    /// A changed JWT_ALGORITHM is a rotation: the old key signs until the new
    /// one's lead time is over.
    #[tokio::test]
    async fn a_changed_algorithm_rotates_like_any_rotation() {
        let kit = TestKit::new().await;
        let now = kit.svc.clock.now();
        let es = kids(&ensure(&kit.svc.db, &keys(SigningAlgorithm::Es256), now).await.unwrap()).remove(0);
        let ed = keys(SigningAlgorithm::EdDsa);
        let set = ensure(&kit.svc.db, &ed, now).await.unwrap();
        assert_eq!(set.published.len(), 2);
        let tk = tokens(set);
        assert_eq!(tk.signing_kid(now.timestamp()).as_deref(), Some(es.as_str()));
        let later = tk.signing_kid((now + ed.policy.lead).timestamp()).unwrap();
        assert_ne!(later, es);
        // A restart with the same setting makes no third key.
        assert_eq!(ensure(&kit.svc.db, &ed, now).await.unwrap().published.len(), 2);
    }

    /// The background round retires the old key once its successor signs, so
    /// that it leaves the set when its tokens are gone, with no admin action.
    #[tokio::test]
    async fn the_background_round_retires_a_replaced_key() {
        let kit = TestKit::new().await;
        let k = keys(SigningAlgorithm::Es256);
        let t0 = kit.svc.clock.now();
        let tk = tokens(ensure(&kit.svc.db, &k, t0).await.unwrap());
        let next = rotate(&kit.svc.db, &k, t0).await.unwrap();
        let t1 = t0 + k.policy.lead;
        refresh(&kit.svc.db, &k, &tk, t1).await.unwrap();
        assert_eq!(tk.jwks()["keys"].as_array().unwrap().len(), 2, "the old key left while its tokens live");
        refresh(&kit.svc.db, &k, &tk, t1 + k.policy.linger).await.unwrap();
        let jwks = tk.jwks();
        let left: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|j| j["kid"].as_str().unwrap()).collect();
        assert_eq!(left, vec![next.kid.as_str()]);
    }

    /// A command run with another KEY_ENCRYPTION_SECRET (or none, falling
    /// back to a generated one) makes no key the servers could not open.
    #[tokio::test]
    async fn no_key_is_made_under_a_secret_that_does_not_open_the_others() {
        let kit = TestKit::new().await;
        let k = keys(SigningAlgorithm::Es256);
        let now = kit.svc.clock.now();
        ensure(&kit.svc.db, &k, now).await.unwrap();
        let other = SigningKeys { sealer: Sealer::new(&Secret::new(vec![8; 32])), policy: k.policy.clone() };
        let err = rotate(&kit.svc.db, &other, now).await.expect_err("rotated under another secret");
        assert!(err.detail().contains("KEY_ENCRYPTION_SECRET"), "{}", err.detail());
        let mut ed = other.policy.clone();
        ed.alg = SigningAlgorithm::EdDsa;
        let other = SigningKeys { sealer: other.sealer.clone(), policy: ed };
        assert!(ensure(&kit.svc.db, &other, now).await.is_err());
        assert_eq!(signing_key::Entity::find().count(&kit.svc.db).await.unwrap(), 1, "a key was made anyway");
    }

    /// A row whose public key or algorithm was changed in the database does
    /// not open, and is not trusted: the set does not load.
    #[tokio::test]
    async fn a_stored_public_key_cannot_be_swapped() {
        let kit = TestKit::new().await;
        let k = keys(SigningAlgorithm::Es256);
        let now = kit.svc.clock.now();
        let set = ensure(&kit.svc.db, &k, now).await.unwrap();
        let kid = kids(&set).remove(0);
        let row = signing_key::Entity::find_by_id(kid.clone()).one(&kit.svc.db).await.unwrap().unwrap();
        let theirs = keys::generate(SigningAlgorithm::Es256, &kid).unwrap();
        let mut swapped: signing_key::ActiveModel = row.into();
        swapped.public_jwk = Set(theirs.public_jwk.to_string());
        swapped.update(&kit.svc.db).await.unwrap();
        let err = load(&kit.svc.db, &k, now).await.err().expect("a swapped public key was trusted");
        assert!(err.detail().contains(&kid), "{}", err.detail());
    }

    /// An instance whose tokens live longer than those of whoever retired a
    /// key (another ACCESS_TOKEN_TTL) keeps the key published that much longer.
    #[tokio::test]
    async fn a_retired_key_stays_published_for_the_longest_token_life() {
        let kit = TestKit::new().await;
        let short = keys(SigningAlgorithm::Es256);
        let t0 = chrono::SubsecRound::trunc_subsecs(kit.svc.clock.now(), 0);
        let first = kids(&ensure(&kit.svc.db, &short, t0).await.unwrap()).remove(0);
        rotate(&kit.svc.db, &short, t0).await.unwrap();
        let t1 = t0 + short.policy.lead;
        list(&kit.svc.db, &short, t1).await.unwrap();
        let mut long = keys(SigningAlgorithm::Es256);
        long.policy.linger = chrono::Duration::hours(1);
        let tk = tokens(load(&kit.svc.db, &long, t1).await.unwrap());
        refresh(&kit.svc.db, &long, &tk, t1 + chrono::Duration::minutes(1)).await.unwrap();
        let row = signing_key::Entity::find_by_id(first).one(&kit.svc.db).await.unwrap().unwrap();
        assert_eq!(row.published_until, Some(t1 + chrono::Duration::hours(1)));
    }

    /// A change of algorithm while a key of the old one waits: the waiting
    /// key is called off, so it cannot take over from the new one.
    #[tokio::test]
    async fn a_changed_algorithm_calls_off_a_waiting_key_of_the_old_one() {
        let kit = TestKit::new().await;
        let now = kit.svc.clock.now();
        let es = keys(SigningAlgorithm::Es256);
        ensure(&kit.svc.db, &es, now).await.unwrap();
        let waiting = rotate(&kit.svc.db, &es, now).await.unwrap();
        let ed = keys(SigningAlgorithm::EdDsa);
        let later = now + chrono::Duration::minutes(1);
        let tk = tokens(ensure(&kit.svc.db, &ed, later).await.unwrap());
        let signs = |t: DateTime<Utc>| tk.signing_kid(t.timestamp()).unwrap();
        let at_the_end = signs(later + ed.policy.lead + chrono::Duration::minutes(10));
        assert_ne!(at_the_end, waiting.kid, "the old algorithm's waiting key took over");
        let row = signing_key::Entity::find_by_id(at_the_end).one(&kit.svc.db).await.unwrap().unwrap();
        assert_eq!(row.alg, "EdDSA");
    }

    #[tokio::test]
    async fn a_scheduled_rotation_happens_once_when_due() {
        let kit = TestKit::new().await;
        let mut k = keys(SigningAlgorithm::Es256);
        k.policy.rotate_every = Some(chrono::Duration::days(30));
        let now = kit.svc.clock.now();
        let tk = tokens(ensure(&kit.svc.db, &k, now).await.unwrap());
        refresh(&kit.svc.db, &k, &tk, now + chrono::Duration::days(29)).await.unwrap();
        assert_eq!(tk.jwks()["keys"].as_array().unwrap().len(), 1, "rotated before it was due");
        let due = now + chrono::Duration::days(30);
        refresh(&kit.svc.db, &k, &tk, due).await.unwrap();
        refresh(&kit.svc.db, &k, &tk, due).await.unwrap();
        assert_eq!(tk.jwks()["keys"].as_array().unwrap().len(), 2, "{}", tk.jwks());
    }
}
