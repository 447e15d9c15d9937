//! Database connection and migrations.

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait, DatabaseTransaction,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};

/// Opens the pool. SQLite runs in WAL mode (readers never wait for the writer),
/// with foreign keys on and a busy timeout, so concurrent writers queue instead of
/// failing with `database is locked`.
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
        })
        .map_sqlx_postgres_opts(|o| o.application_name("authgraph"));
    Database::connect(opts).await
}

pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
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

/// Whether the database can serve us (for `/readyz`): a query on our schema, and
/// on SQLite the write lock too, since readers there keep working while another
/// process holds the database locked against every write.
pub async fn ping(db: &DatabaseConnection) -> bool {
    let check = async {
        let txn = begin_write(db).await?;
        txn.execute_unprepared("SELECT 1 FROM users LIMIT 1").await?;
        txn.rollback().await
    };
    check.await.is_ok()
}
