//! `users.address_proven_at`: when a mailbox of the account was first proven
//! (a verification, reset or address-change link used, or an admin made by
//! the operator), never moved after. Second factors added before it may have
//! been added by whoever registered the address before its owner proved it,
//! and a password reset removes them; an address change, which moves
//! `email_verified_at`, leaves it. Existing accounts take their
//! `email_verified_at`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    AddressProvenAt,
    EmailVerifiedAt,
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
                    .table(Users::Table)
                    .add_column(timestamp_with_time_zone_null(Users::AddressProvenAt))
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::update()
                    .table(Users::Table)
                    .value(Users::AddressProvenAt, Expr::col(Users::EmailVerifiedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Users::Table).drop_column(Users::AddressProvenAt).to_owned()).await
    }
}
