//! `api_keys.replaced_by`: the key a rotation issued in this key's place. A key
//! has at most one successor: rotation sets it with one conditional update
//! (`WHERE replaced_by IS NULL`) in the transaction that inserts the successor,
//! so a second or concurrent rotation of the same key finds it set and is
//! refused, and a crash leaves either no rotation or a whole one.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    ReplacedBy,
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
        manager
            .alter_table(Table::alter().table(ApiKeys::Table).add_column(uuid_null(ApiKeys::ReplacedBy)).to_owned())
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(ApiKeys::Table).drop_column(ApiKeys::ReplacedBy).to_owned()).await
    }
}
