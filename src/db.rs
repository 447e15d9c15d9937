//! Database connection and migrations.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    QuerySelect, Select, SelectTwo, SqliteTransactionMode, TransactionOptions, TransactionTrait,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};

/// Opens the pool. SQLite runs in WAL mode (readers never wait for the writer),
/// with foreign keys on, a busy timeout, so concurrent writers queue instead of
/// failing with `database is locked`, and a page cache of 64 MiB per connection.
pub async fn connect(url: &str, timeout: Duration, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(timeout)
        .acquire_timeout(timeout)
        .idle_timeout(Duration::from_secs(600))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(timeout)
                .create_if_missing(true)
                // 64 MiB of page cache per connection (SQLite's default is 2 MiB):
                // at a million accounts the indexes a login or refresh walks no
                // longer fit the default, and every miss is a read system call.
                .pragma("cache_size", "-65536")
        })
        .map_sqlx_postgres_opts(|o| o.application_name("authgraph"));
    Database::connect(opts).await
}

/// Reads the row that a filter on a primary key or unique index selects.
///
/// sea-orm's `one()` adds `LIMIT ?` with the limit as a bound parameter, and
/// SQLite re-prepares a statement whose LIMIT is bound every time it runs (the
/// plan may depend on the value): a full SQL parse for every login, refresh and
/// API-key check. A unique key selects at most one row without any LIMIT.
pub trait UniqueRow: Sized + Send {
    type Row: Send;
    fn unique_row<'a, C: ConnectionTrait>(
        self,
        db: &'a C,
    ) -> impl Future<Output = Result<Option<Self::Row>, DbErr>> + Send + 'a
    where
        Self: 'a;
}

impl<E: EntityTrait> UniqueRow for Select<E> {
    type Row = E::Model;
    async fn unique_row<'a, C: ConnectionTrait>(self, db: &'a C) -> Result<Option<Self::Row>, DbErr>
    where
        Self: 'a,
    {
        at_most_one(self.all(db).await?)
    }
}

impl<E: EntityTrait, F: EntityTrait> UniqueRow for SelectTwo<E, F> {
    type Row = (E::Model, Option<F::Model>);
    async fn unique_row<'a, C: ConnectionTrait>(self, db: &'a C) -> Result<Option<Self::Row>, DbErr>
    where
        Self: 'a,
    {
        at_most_one(self.all(db).await?)
    }
}

fn at_most_one<T>(mut rows: Vec<T>) -> Result<Option<T>, DbErr> {
    if rows.len() > 1 {
        return Err(DbErr::Custom("a unique key selected more than one row".to_owned()));
    }
    Ok(rows.pop())
}

pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

/// `q` with the rows it reads locked until `txn` ends (`FOR UPDATE`) on
/// PostgreSQL, where other transactions write concurrently. On SQLite a write
/// transaction ([`begin_write`]) already holds the database's only write lock.
pub fn for_update<E: EntityTrait>(q: Select<E>, txn: &impl ConnectionTrait) -> Select<E> {
    if txn.get_database_backend() == DbBackend::Postgres { q.lock_exclusive() } else { q }
}

/// Begins a transaction that writes. On SQLite it takes the write lock at BEGIN
/// (`BEGIN IMMEDIATE`), where the busy timeout applies; a deferred transaction
/// that first reads and then writes could instead fail at once with `database is
/// locked` when another writer got there first.
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    match db.get_database_backend() {
        DbBackend::Sqlite => {
            db.begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await
        }
        _ => db.begin().await,
    }
}

/// The readiness probe (`/readyz`): whether the database answers, checked on a
/// connection of its own.
///
/// The probe never takes a connection from the request pool (on SQLite that
/// pool has one connection by default, and a probe there queued behind every
/// write and held up the writes queued behind it), and it never waits long:
/// [`PROBE_TIMEOUT`] bounds each check. On SQLite it also takes the write lock
/// for two statements (readers keep working while another process holds the
/// database locked against every write, so a read alone would say ready), and
/// an answer is reused for [`PROBE_REUSE`], so a flood of probes takes that
/// lock at most once a second.
pub struct Readiness {
    conn: DatabaseConnection,
    last: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
}

/// The longest one readiness check waits (for its connection, the lock, the query).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a readiness answer is reused.
pub const PROBE_REUSE: Duration = Duration::from_secs(1);

impl Readiness {
    /// Opens the probe's connection. An in-memory SQLite database exists only in
    /// the connection that made it, so there the probe uses `main` (the request
    /// pool) instead.
    pub async fn open(url: &str, main: &DatabaseConnection) -> Result<Self, DbErr> {
        let in_memory = url.starts_with("sqlite:") && (url.contains(":memory:") || url.contains("mode=memory"));
        let conn = if in_memory { main.clone() } else { connect(url, PROBE_TIMEOUT, 1).await? };
        Ok(Self { conn, last: tokio::sync::Mutex::new(None) })
    }

    /// True while the database answers a query on authgraph's schema (and, on
    /// SQLite, grants the write lock) within [`PROBE_TIMEOUT`].
    pub async fn check(&self) -> bool {
        // Concurrent probes wait for the one in flight and share its answer.
        let mut last = self.last.lock().await;
        if let Some((at, ready)) = *last
            && at.elapsed() < PROBE_REUSE
        {
            return ready;
        }
        let probe = async {
            let conn = &self.conn;
            if conn.get_database_backend() == DbBackend::Sqlite {
                let txn = begin_write(conn).await?;
                txn.execute_unprepared("SELECT 1 FROM users LIMIT 1").await?;
                txn.rollback().await
            } else {
                conn.execute_unprepared("SELECT 1 FROM users LIMIT 1").await.map(|_| ())
            }
        };
        let ready = matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(())));
        *last = Some((std::time::Instant::now(), ready));
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unique_key_gives_its_row_or_none_and_never_picks_among_several() {
        assert_eq!(at_most_one(Vec::<u8>::new()).unwrap(), None);
        assert_eq!(at_most_one(vec![7]).unwrap(), Some(7));
        assert!(at_most_one(vec![7, 8]).is_err());
    }
}
