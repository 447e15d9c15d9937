//! A second factor: TOTP with recovery codes, the challenges a login hands
//! out while a factor is missing, and when a session last proved its holder.
//!
//! - `totp_factors`: one per account. `secret` is the RFC 6238 key sealed
//!   with AES-256-GCM under a key derived from `KEY_ENCRYPTION_SECRET` (or the
//!   server secret), bound to the account's id. `confirmed_at` is `NULL` while
//!   the enrolment waits for its first code. `last_used_step` is the highest
//!   time step (Unix seconds / 30) a code was accepted for; a code is taken
//!   only for a later step, by one conditional update, so none is used twice.
//! - `recovery_codes`: ten per account, each the SHA-256 (base64) of an 80-bit
//!   random code, used once (`used_at`).
//! - `second_factor_challenges`: handed out by a login whose password held;
//!   the SHA-256 (base64) of the challenge, its expiry, the codes tried
//!   against it (`failures`: a try is counted before its code is checked),
//!   and `used_at` once it was exchanged, or once its tries ran out.
//! - `sessions.authenticated_at`: when the session's holder last proved who
//!   they are (the login, or a re-authentication); sensitive operations need
//!   it to be recent. `NULL` on sessions older than this column: they count as
//!   authenticated when they were created.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    AuthenticatedAt,
}

#[derive(DeriveIden, Clone)]
enum TotpFactors {
    Table,
    UserId,
    Secret,
    CreatedAt,
    ConfirmedAt,
    LastUsedStep,
}

#[derive(DeriveIden, Clone)]
enum RecoveryCodes {
    Table,
    Id,
    UserId,
    CodeHash,
    CreatedAt,
    UsedAt,
}

#[derive(DeriveIden, Clone)]
enum SecondFactorChallenges {
    Table,
    Id,
    UserId,
    ChallengeHash,
    CreatedAt,
    ExpiresAt,
    Failures,
    UsedAt,
}

fn owned_by_user<T: IntoIden + Clone>(table: T, column: T) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(table.clone(), column)
        .to(Users::Table, Users::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
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
                    .table(Sessions::Table)
                    .add_column(timestamp_with_time_zone_null(Sessions::AuthenticatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(TotpFactors::Table)
                    .col(uuid(TotpFactors::UserId).primary_key())
                    .col(binary(TotpFactors::Secret))
                    .col(timestamp_with_time_zone(TotpFactors::CreatedAt))
                    .col(timestamp_with_time_zone_null(TotpFactors::ConfirmedAt))
                    .col(big_integer(TotpFactors::LastUsedStep).default(0))
                    .foreign_key(&mut owned_by_user(TotpFactors::Table, TotpFactors::UserId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RecoveryCodes::Table)
                    .col(uuid(RecoveryCodes::Id).primary_key())
                    .col(uuid(RecoveryCodes::UserId))
                    .col(string_len(RecoveryCodes::CodeHash, 64))
                    .col(timestamp_with_time_zone(RecoveryCodes::CreatedAt))
                    .col(timestamp_with_time_zone_null(RecoveryCodes::UsedAt))
                    .foreign_key(&mut owned_by_user(RecoveryCodes::Table, RecoveryCodes::UserId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_recovery_codes_user")
                    .table(RecoveryCodes::Table)
                    .col(RecoveryCodes::UserId)
                    .col(RecoveryCodes::CodeHash)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SecondFactorChallenges::Table)
                    .col(uuid(SecondFactorChallenges::Id).primary_key())
                    .col(uuid(SecondFactorChallenges::UserId))
                    .col(string_len(SecondFactorChallenges::ChallengeHash, 64).unique_key())
                    .col(timestamp_with_time_zone(SecondFactorChallenges::CreatedAt))
                    .col(timestamp_with_time_zone(SecondFactorChallenges::ExpiresAt))
                    .col(integer(SecondFactorChallenges::Failures).default(0))
                    .col(timestamp_with_time_zone_null(SecondFactorChallenges::UsedAt))
                    .foreign_key(&mut owned_by_user(SecondFactorChallenges::Table, SecondFactorChallenges::UserId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_second_factor_challenges_user")
                    .table(SecondFactorChallenges::Table)
                    .col(SecondFactorChallenges::UserId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(SecondFactorChallenges::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(RecoveryCodes::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(TotpFactors::Table).to_owned()).await?;
        manager
            .alter_table(Table::alter().table(Sessions::Table).drop_column(Sessions::AuthenticatedAt).to_owned())
            .await
    }
}
