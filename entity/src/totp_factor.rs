use sea_orm::entity::prelude::*;

/// An account's TOTP authenticator (RFC 6238): at most one per account.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "totp_factors")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: Uuid,
    /// The shared key, sealed (AES-256-GCM, bound to the account's id); never
    /// stored in the clear.
    pub secret: Vec<u8>,
    pub created_at: DateTimeUtc,
    /// `None` while the enrolment waits for its first code.
    pub confirmed_at: Option<DateTimeUtc>,
    /// The highest time step (Unix seconds / 30) a code was accepted for.
    pub last_used_step: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::user::Entity",
        from = "Column::UserId",
        to = "super::user::Column::Id",
        on_delete = "Cascade"
    )]
    User,
}

impl ActiveModelBehavior for ActiveModel {}
