use sea_orm::entity::prelude::*;

/// One signing key (see the `signing_keys` migration). `private_key` is sealed:
/// it opens only with the key-encryption secret and for this `kid`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "signing_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub kid: String,
    /// JOSE `alg`: `ES256` or `EdDSA`.
    pub alg: String,
    /// `next`, `current` or `retired`.
    pub state: String,
    pub private_key: Vec<u8>,
    /// The public JWK as published (`kid`, `alg`, `use: sig`).
    pub public_jwk: String,
    pub created_at: DateTimeUtc,
    pub signs_from: DateTimeUtc,
    pub retired_at: Option<DateTimeUtc>,
    pub published_until: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
