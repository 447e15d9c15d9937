//! The database schema of authgraph, as migrations. The same files run on SQLite
//! and PostgreSQL; tests apply them too, so what is tested is what ships.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_create_users;
mod m20261122_000002_create_sessions;
mod m20261122_000003_create_refresh_tokens;
mod m20261122_000004_create_api_keys;
mod m20261129_000005_unicode_keys;
mod m20261129_000006_api_key_successor;
mod m20261129_000007_search_index;
mod m20261129_000008_session_changes;
mod m20261129_000009_rate_limit_counters;
mod m20261129_000010_signing_keys;
mod m20261129_000011_mail;
mod m20261130_000012_security_events;
mod m20261130_000013_second_factor;
mod m20261130_000014_passkeys;
mod m20261207_000015_mail_claims;
mod m20261207_000016_address_proven;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_users::Migration),
            Box::new(m20261122_000002_create_sessions::Migration),
            Box::new(m20261122_000003_create_refresh_tokens::Migration),
            Box::new(m20261122_000004_create_api_keys::Migration),
            Box::new(m20261129_000005_unicode_keys::Migration),
            Box::new(m20261129_000006_api_key_successor::Migration),
            Box::new(m20261129_000007_search_index::Migration),
            Box::new(m20261129_000008_session_changes::Migration),
            Box::new(m20261129_000009_rate_limit_counters::Migration),
            Box::new(m20261129_000010_signing_keys::Migration),
            Box::new(m20261129_000011_mail::Migration),
            Box::new(m20261130_000012_security_events::Migration),
            Box::new(m20261130_000013_second_factor::Migration),
            Box::new(m20261130_000014_passkeys::Migration),
            Box::new(m20261207_000015_mail_claims::Migration),
            Box::new(m20261207_000016_address_proven::Migration),
        ]
    }
}
