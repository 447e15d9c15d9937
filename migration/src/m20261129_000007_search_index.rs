//! An index for the admin search's substring match over `users.search_key`, so a
//! search does not read every row (at a million users that took seconds).
//!
//! - PostgreSQL: a GIN trigram index (`pg_trgm`, shipped with PostgreSQL and a
//!   trusted extension since 13, so the database owner may create it), which
//!   serves `search_key LIKE '%term%'` directly.
//! - SQLite: an FTS5 table with the trigram tokenizer (SQLite ≥ 3.34), matched
//!   with a phrase query. Its rows are keyed by `user_search_ids.id`, an integer
//!   that stays with its user: the implicit rowid of `users` would not (VACUUM may
//!   renumber it). Triggers keep both in step with every insert, change of
//!   `search_key` and delete on `users`, in the writing transaction itself.

use sea_orm_migration::{
    prelude::*,
    sea_orm::{ConnectionTrait, DbBackend},
};

#[derive(DeriveMigrationName)]
pub struct Migration;

const SQLITE_UP: &[&str] = &[
    "CREATE TABLE user_search_ids (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id NOT NULL UNIQUE)",
    "CREATE VIRTUAL TABLE users_fts USING fts5(search_key, tokenize = 'trigram')",
    "INSERT INTO user_search_ids (user_id) SELECT id FROM users ORDER BY id",
    "INSERT INTO users_fts (rowid, search_key) \
     SELECT m.id, u.search_key FROM user_search_ids m JOIN users u ON u.id = m.user_id",
    "CREATE TRIGGER users_search_insert AFTER INSERT ON users BEGIN \
       INSERT INTO user_search_ids (user_id) VALUES (new.id); \
       INSERT INTO users_fts (rowid, search_key) VALUES (last_insert_rowid(), new.search_key); \
     END",
    "CREATE TRIGGER users_search_update AFTER UPDATE OF search_key ON users BEGIN \
       UPDATE users_fts SET search_key = new.search_key \
         WHERE rowid = (SELECT id FROM user_search_ids WHERE user_id = new.id); \
     END",
    "CREATE TRIGGER users_search_delete AFTER DELETE ON users BEGIN \
       DELETE FROM users_fts WHERE rowid = (SELECT id FROM user_search_ids WHERE user_id = old.id); \
       DELETE FROM user_search_ids WHERE user_id = old.id; \
     END",
];

const SQLITE_DOWN: &[&str] = &[
    "DROP TRIGGER IF EXISTS users_search_insert",
    "DROP TRIGGER IF EXISTS users_search_update",
    "DROP TRIGGER IF EXISTS users_search_delete",
    "DROP TABLE IF EXISTS users_fts",
    "DROP TABLE IF EXISTS user_search_ids",
];

const POSTGRES_UP: &[&str] = &[
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX IF NOT EXISTS ix_users_search_key_trgm ON users USING gin (search_key gin_trgm_ops)",
];

const POSTGRES_DOWN: &[&str] = &["DROP INDEX IF EXISTS ix_users_search_key_trgm"];

async fn run(manager: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
    let db = manager.get_connection();
    for sql in statements {
        db.execute_unprepared(sql).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// All or nothing on SQLite too (sea-orm-migration wraps only PostgreSQL's
    /// migrations by default): a crash midway leaves the database as it was, and
    /// the next run starts again.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        match manager.get_database_backend() {
            DbBackend::Sqlite => run(manager, SQLITE_UP).await,
            DbBackend::Postgres => run(manager, POSTGRES_UP).await,
            other => Err(DbErr::Migration(format!("unsupported database backend {other:?}"))),
        }
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        match manager.get_database_backend() {
            DbBackend::Sqlite => run(manager, SQLITE_DOWN).await,
            DbBackend::Postgres => run(manager, POSTGRES_DOWN).await,
            _ => Ok(()),
        }
    }
}
