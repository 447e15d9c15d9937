//! `security_events`: what happened to accounts, written in the transaction
//! of the change it records. `kind` is the event's name (`LOGIN_SUCCEEDED`,
//! …); `user_id` the account it is about (no foreign key: an account's
//! deletion is recorded, and its events outlive it until the retention ends);
//! `actor_kind` and `actor_id` who did it (`user`, `admin`, `service` with the
//! API key's id, `system`, `anonymous`); `session_id`, `ip` and `user_agent`
//! where from; `detail` a reason or a count, never a secret. Ids are UUIDv7,
//! so they order events by time for paging.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SecurityEvents {
    Table,
    Id,
    OccurredAt,
    Kind,
    UserId,
    ActorKind,
    ActorId,
    SessionId,
    Ip,
    UserAgent,
    Detail,
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
                    .table(SecurityEvents::Table)
                    .col(uuid(SecurityEvents::Id).primary_key())
                    .col(timestamp_with_time_zone(SecurityEvents::OccurredAt))
                    .col(string_len(SecurityEvents::Kind, 40))
                    .col(uuid_null(SecurityEvents::UserId))
                    .col(string_len(SecurityEvents::ActorKind, 16))
                    .col(uuid_null(SecurityEvents::ActorId))
                    .col(uuid_null(SecurityEvents::SessionId))
                    .col(string_len_null(SecurityEvents::Ip, 64))
                    .col(string_len_null(SecurityEvents::UserAgent, 512))
                    .col(string_len_null(SecurityEvents::Detail, 256))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_security_events_user")
                    .table(SecurityEvents::Table)
                    .col(SecurityEvents::UserId)
                    .col(SecurityEvents::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_security_events_time")
                    .table(SecurityEvents::Table)
                    .col(SecurityEvents::OccurredAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(SecurityEvents::Table).to_owned()).await
    }
}
