//! `session_changes`: the log of session and user changes that every instance
//! on one PostgreSQL database applies to its live-session registry, in id
//! order (ids follow commit order: writers take one advisory lock for the
//! moment of their insert). `LISTEN/NOTIFY` wakes the instances; the log is
//! what they read, so a notification lost while a listener was down is caught
//! up from it. Rows are pruned after an hour. SQLite, served by one instance,
//! leaves the table empty.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SessionChanges {
    Table,
    Id,
    CreatedAt,
    Payload,
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
                    .table(SessionChanges::Table)
                    .col(big_integer(SessionChanges::Id).auto_increment().primary_key())
                    .col(timestamp_with_time_zone(SessionChanges::CreatedAt))
                    .col(text(SessionChanges::Payload))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(SessionChanges::Table).to_owned()).await
    }
}
