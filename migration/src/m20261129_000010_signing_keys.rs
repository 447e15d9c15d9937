//! `signing_keys`: the asymmetric keys access tokens are signed with (ES256 or
//! EdDSA), shared by every instance on one database. The private key is stored
//! sealed (AES-256-GCM under a key derived from `KEY_ENCRYPTION_SECRET`, bound
//! to its `kid`); the public half is stored as the JWK the server publishes.
//! `state` is `next` (published, not yet signing), `current` (signing) or
//! `retired` (published until `published_until`, no longer signing). An HS256
//! install leaves the table empty.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SigningKeys {
    Table,
    Kid,
    Alg,
    State,
    PrivateKey,
    PublicJwk,
    CreatedAt,
    SignsFrom,
    RetiredAt,
    PublishedUntil,
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
                    .table(SigningKeys::Table)
                    .col(string_len(SigningKeys::Kid, 64).primary_key())
                    .col(string_len(SigningKeys::Alg, 16))
                    .col(string_len(SigningKeys::State, 16))
                    .col(binary(SigningKeys::PrivateKey))
                    .col(text(SigningKeys::PublicJwk))
                    .col(timestamp_with_time_zone(SigningKeys::CreatedAt))
                    .col(timestamp_with_time_zone(SigningKeys::SignsFrom))
                    .col(timestamp_with_time_zone_null(SigningKeys::RetiredAt))
                    .col(timestamp_with_time_zone_null(SigningKeys::PublishedUntil))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(SigningKeys::Table).to_owned()).await
    }
}
