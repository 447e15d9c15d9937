//! Rows that are spent once: the tokens of mailed links (`mail_tokens`), the
//! challenges a login's second step answers (`second_factor_challenges`) and
//! passkey ceremonies (`webauthn_ceremonies`).
//! Each is spent by one conditional update that sets `used_at` (of two
//! concurrent spends only one finds it unspent), and a recovery voids all of
//! an account's at once. Only their hashes are stored.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, ExprTrait, QueryFilter, Set, sea_query::Expr};
use uuid::Uuid;

use entity::{mail_outbox, mail_token, second_factor_challenge, webauthn_ceremony};

use crate::{auth::secrets::hash_token, domain::UserId, error::AppResult, mail::Kind, service::Services};

/// Voids every unused link token of `user_id`, in `conn`.
pub(in crate::service) async fn void_mail_tokens(
    conn: &impl ConnectionTrait,
    user_id: UserId,
    now: DateTime<Utc>,
) -> AppResult<()> {
    mail_token::Entity::update_many()
        .col_expr(mail_token::Column::UsedAt, Expr::value(now))
        .filter(mail_token::Column::UserId.eq(user_id))
        .filter(mail_token::Column::UsedAt.is_null())
        .exec(conn)
        .await?;
    Ok(())
}

/// Ends every open second-factor challenge of `user_id` (a password change
/// or reset, a factor removed, all sessions ended), in `conn`.
pub(in crate::service) async fn void_challenges(
    conn: &impl ConnectionTrait,
    user_id: UserId,
    now: DateTime<Utc>,
) -> AppResult<()> {
    second_factor_challenge::Entity::update_many()
        .col_expr(second_factor_challenge::Column::UsedAt, Expr::value(now))
        .filter(second_factor_challenge::Column::UserId.eq(user_id))
        .filter(second_factor_challenge::Column::UsedAt.is_null())
        .exec(conn)
        .await?;
    Ok(())
}

/// Stores `token` (its SHA-256) as the link of `purpose` that the outbox
/// `row` carries to its recipient, for `user_id`, valid for `ttl`; the
/// account's unused tokens of that purpose are voided first, in `conn`.
pub(in crate::service) async fn store_mail_token(
    conn: &impl ConnectionTrait,
    row: &mail_outbox::Model,
    purpose: Kind,
    user_id: UserId,
    token: &str,
    now: DateTime<Utc>,
    ttl: ChronoDuration,
) -> AppResult<()> {
    mail_token::Entity::update_many()
        .col_expr(mail_token::Column::UsedAt, Expr::value(now))
        .filter(mail_token::Column::UserId.eq(user_id))
        .filter(mail_token::Column::Purpose.eq(purpose.as_str()))
        .filter(mail_token::Column::UsedAt.is_null())
        .exec(conn)
        .await?;
    mail_token::Entity::insert(mail_token::ActiveModel {
        id: Set(Uuid::now_v7()),
        user_id: Set(user_id.uuid()),
        purpose: Set(purpose.as_str().to_owned()),
        token_hash: Set(hash_token(token)),
        email_key: Set(row.recipient_key.clone()),
        new_email: Set(row.new_email.clone()),
        created_at: Set(now),
        expires_at: Set(now + ttl),
        used_at: Set(None),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

/// Deletes link tokens used or expired before `cutoff`. Returns how many.
pub async fn purge_mail_tokens(svc: &Services, cutoff: DateTime<Utc>) -> AppResult<u64> {
    Ok(mail_token::Entity::delete_many()
        .filter(mail_token::Column::ExpiresAt.lt(cutoff).or(mail_token::Column::UsedAt.lt(cutoff)))
        .exec(&svc.db)
        .await?
        .rows_affected)
}

/// Deletes second-factor challenges that expired before `now`. Returns how many.
pub async fn purge_challenges(svc: &Services, now: DateTime<Utc>) -> AppResult<u64> {
    Ok(second_factor_challenge::Entity::delete_many()
        .filter(second_factor_challenge::Column::ExpiresAt.lt(now))
        .exec(&svc.db)
        .await?
        .rows_affected)
}

/// Deletes passkey ceremonies that expired before `now`. Returns how many.
pub async fn purge_ceremonies(svc: &Services, now: DateTime<Utc>) -> AppResult<u64> {
    Ok(webauthn_ceremony::Entity::delete_many()
        .filter(webauthn_ceremony::Column::ExpiresAt.lt(now))
        .exec(&svc.db)
        .await?
        .rows_affected)
}
