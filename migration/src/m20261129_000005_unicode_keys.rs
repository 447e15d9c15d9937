//! Re-keys every account by the Unicode rules of `entity::keys`: the address key
//! becomes NFC + case folding (local part) and IDNA UTS #46 (domain), and a folded
//! `search_key` is stored beside the display values for the admin search.
//!
//! Two accounts whose addresses were distinct under the old key (lower-casing
//! only) may be one mailbox under the new one (`josé` typed composed and
//! decomposed), and an address the old rules let in may be refused by the new
//! ones (a zero-width space in it, a domain IDNA refuses), which would lock its
//! account out. Neither is resolved silently: the migration stops before
//! changing anything and names the accounts by id, so that an operator decides
//! (change an `email` or delete the account, then run `authgraph migrate`
//! again).

use std::collections::BTreeMap;

use entity::user;
use sea_orm_migration::{
    prelude::*,
    schema::*,
    sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, prelude::Uuid},
};

use crate::m20261122_000001_create_users::Users;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Keys {
    SearchKey,
}

struct Row {
    id: Uuid,
    email: String,
    email_normalized: String,
    name: String,
}

/// New keys of every row; or, when some rows cannot be keyed, the report that
/// names them: groups of rows that would share one key, and rows whose address
/// the new rules refuse (an invisible character, a domain UTS #46 refuses, a key
/// too long), which could no longer log in.
fn rekey(rows: &[Row]) -> Result<Vec<(&Row, String, String)>, String> {
    let mut by_key: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    let mut unkeyable = Vec::new();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(key) = entity::keys::email_key(&row.email) else {
            unkeyable.push(row.id.to_string());
            continue;
        };
        by_key.entry(key.clone()).or_default().push(row);
        out.push((row, key, entity::keys::search_key(&row.name, &row.email)));
    }
    let collisions: Vec<String> = by_key
        .values()
        .filter(|group| group.len() > 1)
        .map(|group| group.iter().map(|r| r.id.to_string()).collect::<Vec<_>>().join(", "))
        .collect();
    if collisions.is_empty() && unkeyable.is_empty() {
        return Ok(out);
    }
    let mut report = String::from(
        "some accounts cannot be keyed by the Unicode rules for addresses; nothing was changed. Accounts by id:",
    );
    if !collisions.is_empty() {
        report.push_str(&format!(
            "\n- {} group(s) that are one address under normalisation (one group per line); give all but one \
             account of each group another email, or delete it:\n  {}",
            collisions.len(),
            collisions.join("\n  ")
        ));
    }
    if !unkeyable.is_empty() {
        report.push_str(&format!(
            "\n- {} whose address the rules refuse (an invisible character, a domain IDNA refuses, or too long \
             once encoded); give each a valid email:\n  {}",
            unkeyable.len(),
            unkeyable.join(", ")
        ));
    }
    report.push_str("\nThen run `authgraph migrate` again.");
    Err(report)
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
        let db = manager.get_connection();
        let rows: Vec<Row> = user::Entity::find()
            .select_only()
            .columns([user::Column::Id, user::Column::Email, user::Column::EmailNormalized, user::Column::Name])
            .order_by_asc(user::Column::Id)
            .into_tuple::<(Uuid, String, String, String)>()
            .all(db)
            .await?
            .into_iter()
            .map(|(id, email, email_normalized, name)| Row { id, email, email_normalized, name })
            .collect();
        // Checked before any change, so a refused run leaves the database as it was.
        let rekeyed = rekey(&rows).map_err(DbErr::Migration)?;

        manager
            .alter_table(Table::alter().table(Users::Table).add_column(text(Keys::SearchKey).default("")).to_owned())
            .await?;
        // Keys that change first move aside to a value no address can have, so a
        // row's new key never meets another row's old one under the unique index.
        for (row, key, _) in &rekeyed {
            if *key != row.email_normalized {
                user::Entity::update_many()
                    .col_expr(user::Column::EmailNormalized, Expr::value(format!("rekey {}", row.id)))
                    .filter(user::Column::Id.eq(row.id))
                    .exec(db)
                    .await?;
            }
        }
        for (row, key, search) in &rekeyed {
            user::Entity::update_many()
                .col_expr(user::Column::EmailNormalized, Expr::value(key.clone()))
                .col_expr(user::Column::SearchKey, Expr::value(search.clone()))
                .filter(user::Column::Id.eq(row.id))
                .exec(db)
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Users::Table).drop_column(Keys::SearchKey).to_owned()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u128, email: &str) -> Row {
        Row { id: Uuid::from_u128(id), email: email.into(), email_normalized: email.to_lowercase(), name: "n".into() }
    }

    #[test]
    fn collisions_are_reported_not_merged() {
        let rows = [row(1, "jos\u{e9}@example.com"), row(2, "jose\u{301}@example.com"), row(3, "c@example.com")];
        let err = rekey(&rows).err().expect("a collision");
        assert!(err.contains(&format!("{}, {}", Uuid::from_u128(1), Uuid::from_u128(2))), "{err}");
        assert!(!err.contains(&Uuid::from_u128(3).to_string()), "{err}");
        assert!(!err.contains("c@"), "addresses stay out of the message: {err}");
        let hidden = [row(1, "ad\u{200b}min@example.com"), row(3, "c@example.com")];
        let err = rekey(&hidden).err().expect("an unkeyable address");
        assert!(err.contains(&Uuid::from_u128(1).to_string()) && err.contains("refuse"), "{err}");
        let fine = [row(1, "JOSÉ@Bücher.example"), row(3, "c@example.com")];
        let keys = rekey(&fine).unwrap();
        assert_eq!(keys[0].1, "josé@xn--bcher-kva.example");
    }
}
