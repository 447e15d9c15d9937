//! Mail: account recovery, address verification and address changes.
//!
//! - `users.email_verified_at`: when the current address was confirmed (a
//!   verification link, a reset link, or a confirmed change); `NULL` until then.
//! - `mail_tokens`: one-time link tokens. Only the SHA-256 of a token is stored
//!   (hex, unique); `purpose` is `verify_email`, `reset_password` or
//!   `confirm_email_change`; `email_key` is the key of the address the token
//!   was sent to (for a change, the new address, whose typed form is
//!   `new_email`). A token is used once: `used_at` is set by one conditional
//!   update, and a newer token of the same purpose for the same account sets it
//!   on the older ones.
//! - `mail_outbox`: mail to send, written in the transaction of the change
//!   that causes it and shared by every instance. A row is due while
//!   `next_attempt_at` is set and past; a sender claims it by moving
//!   `next_attempt_at` ahead (so a crashed sender's claim lapses) and counting
//!   `attempts`; `sent_at` or `failed_at` ends it (`next_attempt_at` then
//!   `NULL`). Rows hold no token: a link's token is made when its mail is sent.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    EmailVerifiedAt,
}

#[derive(DeriveIden)]
enum MailTokens {
    Table,
    Id,
    UserId,
    Purpose,
    TokenHash,
    EmailKey,
    NewEmail,
    CreatedAt,
    ExpiresAt,
    UsedAt,
}

#[derive(DeriveIden)]
enum MailOutbox {
    Table,
    Id,
    Kind,
    UserId,
    Recipient,
    RecipientKey,
    NewEmail,
    CreatedAt,
    NextAttemptAt,
    Attempts,
    SentAt,
    FailedAt,
    LastError,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(timestamp_with_time_zone_null(Users::EmailVerifiedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(MailTokens::Table)
                    .col(uuid(MailTokens::Id).primary_key())
                    .col(uuid(MailTokens::UserId))
                    .col(string_len(MailTokens::Purpose, 32))
                    .col(string_len(MailTokens::TokenHash, 64).unique_key())
                    .col(string(MailTokens::EmailKey))
                    .col(string_null(MailTokens::NewEmail))
                    .col(timestamp_with_time_zone(MailTokens::CreatedAt))
                    .col(timestamp_with_time_zone(MailTokens::ExpiresAt))
                    .col(timestamp_with_time_zone_null(MailTokens::UsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(MailTokens::Table, MailTokens::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_mail_tokens_user_purpose")
                    .table(MailTokens::Table)
                    .col(MailTokens::UserId)
                    .col(MailTokens::Purpose)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(MailOutbox::Table)
                    .col(uuid(MailOutbox::Id).primary_key())
                    .col(string_len(MailOutbox::Kind, 32))
                    .col(uuid_null(MailOutbox::UserId))
                    .col(string(MailOutbox::Recipient))
                    .col(string(MailOutbox::RecipientKey))
                    .col(string_null(MailOutbox::NewEmail))
                    .col(timestamp_with_time_zone(MailOutbox::CreatedAt))
                    .col(timestamp_with_time_zone_null(MailOutbox::NextAttemptAt))
                    .col(integer(MailOutbox::Attempts).default(0))
                    .col(timestamp_with_time_zone_null(MailOutbox::SentAt))
                    .col(timestamp_with_time_zone_null(MailOutbox::FailedAt))
                    .col(string_null(MailOutbox::LastError))
                    .foreign_key(
                        ForeignKey::create()
                            .from(MailOutbox::Table, MailOutbox::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_mail_outbox_due")
                    .table(MailOutbox::Table)
                    .col(MailOutbox::NextAttemptAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(MailOutbox::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(MailTokens::Table).to_owned()).await?;
        manager.alter_table(Table::alter().table(Users::Table).drop_column(Users::EmailVerifiedAt).to_owned()).await
    }
}
