//! `mail_outbox.claimed_until`: while a sender holds a row, when its claim
//! lapses (the sender renews it while the send is in flight, so a dead
//! sender's claim lapses within seconds and another sender takes the row
//! over); null otherwise. It tells a row being sent from one waiting out a
//! retry's backoff, which the sender brings forward as soon as the mail
//! server answers again.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum MailOutbox {
    Table,
    ClaimedUntil,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// All or nothing on SQLite too.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(MailOutbox::Table)
                    .add_column(timestamp_with_time_zone_null(MailOutbox::ClaimedUntil))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(MailOutbox::Table).drop_column(MailOutbox::ClaimedUntil).to_owned())
            .await
    }
}
