//! The signing keys every instance shares: kept in `signing_keys`, sealed at
//! rest (see `auth::keys`), loaded at start.
//!
//! At start an instance makes sure the database holds a `current` key of the
//! configured algorithm: the first instance to start on a database generates
//! it, in a write transaction that every other instance waits for (SQLite's
//! write lock; a transaction-scoped advisory lock on PostgreSQL), so all of
//! them sign with the same key. Switching `JWT_ALGORITHM` retires the old
//! current key: it stops signing at once and stays published until every token
//! it signed has expired.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter, Set,
    Statement,
};

use entity::signing_key;

use crate::{
    auth::{
        keys::{self, Sealer, SigningAlgorithm},
        tokens::KeySet,
    },
    db,
    error::{AppError, AppResult},
};

/// The advisory lock that serialises key changes on PostgreSQL ("agkeys").
const KEYS_LOCK: i64 = 0x6167_6b65_7973;

pub const STATE_NEXT: &str = "next";
pub const STATE_CURRENT: &str = "current";
pub const STATE_RETIRED: &str = "retired";

/// Ensures a current key of `alg` (generating one if there is none), then
/// loads the key set: the current key to sign with, and every key still
/// published to verify with. `token_lifetime` is how long a retired key stays
/// published (the access-token lifetime, at least). Errors: `INTERNAL` when a
/// stored key does not open under `sealer` (another `KEY_ENCRYPTION_SECRET`),
/// or a database error.
pub async fn load_or_create(
    db: &DatabaseConnection,
    sealer: &Sealer,
    alg: SigningAlgorithm,
    now: DateTime<Utc>,
    token_lifetime: chrono::Duration,
) -> AppResult<KeySet> {
    let txn = db::begin_write(db).await?;
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [KEYS_LOCK.into()],
        ))
        .await?;
    }
    let current = signing_key::Entity::find().filter(signing_key::Column::State.eq(STATE_CURRENT)).all(&txn).await?;
    if !current.iter().any(|k| k.alg == alg.name()) {
        for old in current {
            let mut retired: signing_key::ActiveModel = old.into();
            retired.state = Set(STATE_RETIRED.to_owned());
            retired.retired_at = Set(Some(now));
            retired.published_until = Set(Some(now + token_lifetime));
            retired.update(&txn).await?;
        }
        let kid = uuid::Uuid::now_v7().simple().to_string();
        let generated = keys::generate(alg, &kid)?;
        signing_key::Entity::insert(signing_key::ActiveModel {
            kid: Set(kid.clone()),
            alg: Set(alg.name().to_owned()),
            state: Set(STATE_CURRENT.to_owned()),
            private_key: Set(sealer.seal(&kid, &generated.pkcs8)?),
            public_jwk: Set(generated.public_jwk.to_string()),
            created_at: Set(now),
            signs_from: Set(now),
            retired_at: Set(None),
            published_until: Set(None),
        })
        .exec_without_returning(&txn)
        .await?;
        tracing::info!(kid = %kid, alg = alg.name(), "generated a signing key");
    }
    let rows = signing_key::Entity::find().all(&txn).await?;
    txn.commit().await?;
    key_set(rows, sealer, alg, now)
}

fn key_set(
    rows: Vec<signing_key::Model>,
    sealer: &Sealer,
    alg: SigningAlgorithm,
    now: DateTime<Utc>,
) -> AppResult<KeySet> {
    let mut signing = None;
    let mut published = Vec::new();
    for row in rows {
        if row.published_until.is_some_and(|until| until <= now) {
            continue;
        }
        let Some(row_alg) = SigningAlgorithm::from_name(&row.alg) else {
            return Err(AppError::internal(format!("signing key {} has an unknown alg", row.kid)));
        };
        let jwk: serde_json::Value = serde_json::from_str(&row.public_jwk)
            .map_err(|e| AppError::internal(format!("signing key {}: {e}", row.kid)))?;
        if row.state == STATE_CURRENT && row_alg == alg {
            let pkcs8 = sealer.open(&row.kid, &row.private_key)?;
            let (encoding, _) = keys::jwt_keys(alg, &pkcs8, &jwk)?;
            signing = Some((row.kid.clone(), encoding));
        }
        published.push((row.kid, row_alg, keys::decoding_key(row_alg, &jwk)?, jwk));
    }
    let (signing_kid, signing) =
        signing.ok_or_else(|| AppError::internal(format!("no current {} signing key", alg.name())))?;
    Ok(KeySet { signing_kid, signing_alg: alg, signing, published })
}

#[cfg(test)]
mod tests {
    use sea_orm::PaginatorTrait;

    use super::*;
    use crate::{config::Secret, service::testkit::TestKit};

    fn lifetime() -> chrono::Duration {
        chrono::Duration::minutes(20)
    }

    /// Instances starting at once on one database end up with one key, and a
    /// restart finds it again.
    #[tokio::test]
    async fn instances_starting_together_share_one_key() {
        let kit = TestKit::new().await;
        let sealer = Sealer::new(&Secret::new(vec![9; 32]));
        let now = kit.svc.clock.now();
        let (a, b) = tokio::join!(
            load_or_create(&kit.svc.db, &sealer, SigningAlgorithm::Es256, now, lifetime()),
            load_or_create(&kit.svc.db, &sealer, SigningAlgorithm::Es256, now, lifetime()),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.signing_kid, b.signing_kid);
        assert_eq!(signing_key::Entity::find().count(&kit.svc.db).await.unwrap(), 1);
        let again = load_or_create(&kit.svc.db, &sealer, SigningAlgorithm::Es256, now, lifetime()).await.unwrap();
        assert_eq!(again.signing_kid, a.signing_kid);
    }

    /// The stored private key is sealed: its PKCS#8 bytes are not in the row.
    #[tokio::test]
    async fn the_private_key_is_stored_sealed() {
        let kit = TestKit::new().await;
        let sealer = Sealer::new(&Secret::new(vec![9; 32]));
        let set = load_or_create(&kit.svc.db, &sealer, SigningAlgorithm::EdDsa, kit.svc.clock.now(), lifetime())
            .await
            .unwrap();
        let row = signing_key::Entity::find_by_id(set.signing_kid.clone()).one(&kit.svc.db).await.unwrap().unwrap();
        let pkcs8 = sealer.open(&row.kid, &row.private_key).unwrap();
        assert!(!row.private_key.windows(pkcs8.len()).any(|w| w == pkcs8.as_slice()), "stored in the clear");
        assert!(!row.private_key.windows(32).any(|w| pkcs8.windows(32).any(|p| p == w)), "a part is in the clear");
        let other = Sealer::new(&Secret::new(vec![8; 32]));
        let err = load_or_create(&kit.svc.db, &other, SigningAlgorithm::EdDsa, kit.svc.clock.now(), lifetime())
            .await
            .err()
            .expect("opened under another secret");
        assert!(err.detail().contains(&set.signing_kid), "{}", err.detail());
    }

    /// A change of algorithm retires the old key: it no longer signs, and it is
    /// published until its tokens have expired, then no more.
    #[tokio::test]
    async fn a_retired_key_is_published_while_its_tokens_live() {
        let kit = TestKit::new().await;
        let sealer = Sealer::new(&Secret::new(vec![9; 32]));
        let now = kit.svc.clock.now();
        let es = load_or_create(&kit.svc.db, &sealer, SigningAlgorithm::Es256, now, lifetime()).await.unwrap();
        let ed = load_or_create(&kit.svc.db, &sealer, SigningAlgorithm::EdDsa, now, lifetime()).await.unwrap();
        assert_ne!(ed.signing_kid, es.signing_kid);
        assert_eq!(ed.signing_alg, SigningAlgorithm::EdDsa);
        let published: Vec<&str> = ed.published.iter().map(|(kid, ..)| kid.as_str()).collect();
        assert!(published.contains(&es.signing_kid.as_str()), "{published:?}");
        let later = now + lifetime() + chrono::Duration::seconds(1);
        let ed = load_or_create(&kit.svc.db, &sealer, SigningAlgorithm::EdDsa, later, lifetime()).await.unwrap();
        assert_eq!(ed.published.len(), 1, "the retired key is still published after its tokens expired");
    }
}
