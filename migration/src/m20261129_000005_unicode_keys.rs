//! Re-keys every account by the Unicode rules of `entity::keys`: the address key
//! becomes NFC + case folding (local part) and IDNA UTS #46 (domain), and a folded
//! `search_key` is stored beside the display values for the admin search.
//!
//! Two accounts whose addresses were distinct under the old key (lower-casing
//! only) may be one mailbox under the new one (`josé` typed composed and
//! decomposed). Such accounts are never merged silently: the migration stops
//! before changing anything and names them, so that an operator decides which
//! one keeps the address (change the other's `email` or delete it, then run
//! `authgraph migrate` again).

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

/// New keys of every row, or the groups of rows that would share one key.
fn rekey(rows: &[Row]) -> Result<Vec<(&Row, String, String)>, String> {
    let mut by_key: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        // An address the new rules cannot key (a domain UTS #46 refuses) keeps its
        // old key: it stays reachable as before.
        let key = entity::keys::email_key(&row.email).unwrap_or_else(|| row.email_normalized.clone());
        by_key.entry(key.clone()).or_default().push(row);
        out.push((row, key, entity::keys::search_key(&row.name, &row.email)));
    }
    let collisions: Vec<String> = by_key
        .values()
        .filter(|group| group.len() > 1)
        .map(|group| group.iter().map(|r| r.id.to_string()).collect::<Vec<_>>().join(", "))
        .collect();
    if collisions.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "{} group(s) of accounts are one address under Unicode normalisation and cannot all keep it; \
             nothing was changed. Accounts by id, one group per line:\n{}\n\
             Give all but one account of each group another email (or delete it), then run `authgraph migrate` again.",
            collisions.len(),
            collisions.join("\n")
        ))
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
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
            .alter_table(
                Table::alter().table(Users::Table).add_column(string_len(Keys::SearchKey, 512).default("")).to_owned(),
            )
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
        manager
            .alter_table(Table::alter().table(Users::Table).drop_column(Keys::SearchKey).to_owned())
            .await
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
        let fine = [row(1, "JOSÉ@Bücher.example"), row(3, "c@example.com")];
        let keys = rekey(&fine).unwrap();
        assert_eq!(keys[0].1, "josé@xn--bcher-kva.example");
    }
}
