use sea_orm::entity::prelude::*;

/// The server's half of a WebAuthn registration or sign-in, between its two
/// requests; used once.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webauthn_ceremonies")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// `register`, `second_factor`, `discoverable` or `reauthenticate`.
    pub purpose: String,
    /// The account, except for a discoverable sign-in.
    pub user_id: Option<Uuid>,
    /// The login's second-factor challenge it answers, if any.
    pub challenge_id: Option<Uuid>,
    /// webauthn-rs's ceremony state, JSON.
    pub state: String,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    pub used_at: Option<DateTimeUtc>,
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
