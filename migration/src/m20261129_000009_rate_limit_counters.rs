//! `rate_limit_counters`: the rate-limit budgets that every instance on one
//! PostgreSQL database shares. One row per budget key (an action and a client
//! address, or an account; the key is stored as its SHA-256), holding the
//! GCRA "theoretical arrival time" in microseconds since the Unix epoch: a
//! check is one conditional upsert. Rows whose budget is full again are
//! purged. SQLite, served by one instance, counts in memory and leaves it empty.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RateLimitCounters {
    Table,
    Key,
    Tat,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RateLimitCounters::Table)
                    .col(string(RateLimitCounters::Key).primary_key())
                    .col(big_integer(RateLimitCounters::Tat))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(RateLimitCounters::Table).to_owned()).await
    }
}
