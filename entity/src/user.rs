use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The address as the user typed it (trimmed).
    pub email: String,
    /// The address's key ([`crate::keys::email_key`]: NFC, case folding, IDNA);
    /// unique, so every spelling of one mailbox is one account.
    #[sea_orm(unique)]
    pub email_normalized: String,
    pub name: String,
    /// The folded name and address the admin search matches ([`crate::keys::search_key`]).
    pub search_key: String,
    /// PHC string (argon2id). Read only by the service layer, which hands out
    /// `authgraph::domain::Account` (no hash) instead of this row.
    pub password_hash: String,
    pub role: Role,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub last_login_at: Option<DateTimeUtc>,
    /// When the current address was confirmed (a verification, reset or
    /// address-change link); `None` until then.
    pub email_verified_at: Option<DateTimeUtc>,
    /// When a mailbox of the account was first proven; never moved after (an
    /// address change moves `email_verified_at`, not this). A password reset
    /// removes the second factors added before it.
    pub address_proven_at: Option<DateTimeUtc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum Role {
    #[sea_orm(string_value = "user")]
    User,
    #[sea_orm(string_value = "admin")]
    Admin,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::session::Entity")]
    Session,
}

impl Related<super::session::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Session.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
