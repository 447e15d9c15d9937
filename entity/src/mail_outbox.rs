use sea_orm::entity::prelude::*;

/// A mail to send. Due while `next_attempt_at` is set and past; ended by
/// `sent_at` or `failed_at`. Holds no token: a link's token is made when the
/// mail is sent.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "mail_outbox")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// What the mail is (`verify_email`, `reset_password`, …).
    pub kind: String,
    /// The account it is about; `None` for a reset asked for an address
    /// that was not looked up yet.
    pub user_id: Option<Uuid>,
    /// The address as typed.
    pub recipient: String,
    /// The address's key.
    pub recipient_key: String,
    /// For an address change: the new address as typed.
    pub new_email: Option<String>,
    pub created_at: DateTimeUtc,
    pub next_attempt_at: Option<DateTimeUtc>,
    pub attempts: i32,
    pub sent_at: Option<DateTimeUtc>,
    pub failed_at: Option<DateTimeUtc>,
    /// Why the last attempt failed (never the message or a token).
    pub last_error: Option<String>,
    /// While a sender holds the row: when its claim lapses (renewed while
    /// the send is in flight). Null while the row waits, due or backing off.
    pub claimed_until: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
