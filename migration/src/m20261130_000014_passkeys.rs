//! Passkeys (WebAuthn) and the ceremonies that make and use them.
//!
//! - `passkeys`: an account's credentials. `credential_id` is the
//!   authenticator's id for it (base64url, unique across accounts);
//!   `credential` is webauthn-rs's record of it as JSON (public key, signature
//!   counter, backup flags), replaced after each use that changes it.
//! - `webauthn_ceremonies`: the server's half of a registration or sign-in
//!   between its two requests (webauthn-rs's state as JSON), so that any
//!   instance can finish what another started. Used once (`used_at`), and
//!   only until `expires_at`. `user_id` is the account for a registration, a
//!   re-authentication or a second factor, and `NULL` for a sign-in with a
//!   discoverable passkey; `challenge_id` is the login's second-factor
//!   challenge the ceremony answers, if any.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Passkeys {
    Table,
    Id,
    UserId,
    CredentialId,
    Name,
    Credential,
    CreatedAt,
    LastUsedAt,
}

#[derive(DeriveIden)]
enum WebauthnCeremonies {
    Table,
    Id,
    Purpose,
    UserId,
    ChallengeId,
    State,
    CreatedAt,
    ExpiresAt,
    UsedAt,
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
                    .table(Passkeys::Table)
                    .col(uuid(Passkeys::Id).primary_key())
                    .col(uuid(Passkeys::UserId))
                    .col(string_len(Passkeys::CredentialId, 1400).unique_key())
                    .col(string_len(Passkeys::Name, 64))
                    .col(text(Passkeys::Credential))
                    .col(timestamp_with_time_zone(Passkeys::CreatedAt))
                    .col(timestamp_with_time_zone_null(Passkeys::LastUsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Passkeys::Table, Passkeys::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("idx_passkeys_user").table(Passkeys::Table).col(Passkeys::UserId).to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebauthnCeremonies::Table)
                    .col(uuid(WebauthnCeremonies::Id).primary_key())
                    .col(string_len(WebauthnCeremonies::Purpose, 32))
                    .col(uuid_null(WebauthnCeremonies::UserId))
                    .col(uuid_null(WebauthnCeremonies::ChallengeId))
                    .col(text(WebauthnCeremonies::State))
                    .col(timestamp_with_time_zone(WebauthnCeremonies::CreatedAt))
                    .col(timestamp_with_time_zone(WebauthnCeremonies::ExpiresAt))
                    .col(timestamp_with_time_zone_null(WebauthnCeremonies::UsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(WebauthnCeremonies::Table, WebauthnCeremonies::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webauthn_ceremonies_expiry")
                    .table(WebauthnCeremonies::Table)
                    .col(WebauthnCeremonies::ExpiresAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(WebauthnCeremonies::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Passkeys::Table).to_owned()).await
    }
}
