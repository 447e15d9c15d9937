//! Which second factors an account has, read and removed the same way by
//! every feature: an authenticator app (`totp_factors`, confirmed), its
//! recovery codes, and passkeys.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, ExprTrait, PaginatorTrait, QueryFilter, sea_query::Expr};

use entity::{passkey, recovery_code, totp_factor, user};

use crate::{domain::UserId, error::AppResult, service::Services};

/// Whether a password login of `user_id` needs a second factor (an active
/// authenticator or a passkey).
pub(in crate::service) async fn required(svc: &Services, user_id: UserId) -> AppResult<bool> {
    Ok(totp_active(&svc.db, user_id).await? || passkey_count(&svc.db, user_id).await? > 0)
}

/// A condition on a `users` row: the account has no second factor (no
/// confirmed authenticator and no passkey), as [`required`] would answer.
/// A write that starts a session on the password alone carries it, so that a
/// factor confirmed while the password was being checked is not skipped; the
/// write then changes no row and the caller asks [`required`].
pub(in crate::service) fn not_required() -> sea_orm::sea_query::SimpleExpr {
    use sea_orm::sea_query::Query;
    let user_id = Expr::col((user::Entity, user::Column::Id));
    let authenticator = Query::select()
        .expr(Expr::val(1))
        .from(totp_factor::Entity)
        .and_where(Expr::col((totp_factor::Entity, totp_factor::Column::UserId)).eq(user_id.clone()))
        .and_where(Expr::col((totp_factor::Entity, totp_factor::Column::ConfirmedAt)).is_not_null())
        .to_owned();
    let passkey = Query::select()
        .expr(Expr::val(1))
        .from(passkey::Entity)
        .and_where(Expr::col((passkey::Entity, passkey::Column::UserId)).eq(user_id))
        .to_owned();
    Expr::exists(authenticator).not().and(Expr::exists(passkey).not())
}

/// Whether `user_id` has a confirmed authenticator, read through `conn`.
pub(in crate::service) async fn totp_active(conn: &impl ConnectionTrait, user_id: UserId) -> AppResult<bool> {
    Ok(totp_factor::Entity::find_by_id(user_id.uuid())
        .filter(totp_factor::Column::ConfirmedAt.is_not_null())
        .count(conn)
        .await?
        > 0)
}

/// Removes, in `conn`, the second factors of `user_id` added before
/// `cutoff`, or every one with `None` (an admin's reset). A password reset
/// passes `users.address_proven_at`, when a mailbox of the account was first
/// proven: a factor added before that (by whoever registered the address
/// before its owner proved it) must not stay a way in that the owner never
/// set up. The authenticator goes with its recovery codes (with `None`, the
/// codes go whatever else there is). Returns whether an authenticator was
/// removed, and how many passkeys.
pub(in crate::service) async fn remove_factors_added_before(
    conn: &impl ConnectionTrait,
    user_id: UserId,
    cutoff: Option<DateTime<Utc>>,
) -> AppResult<(bool, u64)> {
    let mut totp = totp_factor::Entity::delete_many().filter(totp_factor::Column::UserId.eq(user_id));
    if let Some(cutoff) = cutoff {
        totp = totp.filter(totp_factor::Column::CreatedAt.lt(cutoff));
    }
    let totp_removed = totp.exec(conn).await?.rows_affected > 0;
    if totp_removed || cutoff.is_none() {
        recovery_code::Entity::delete_many().filter(recovery_code::Column::UserId.eq(user_id)).exec(conn).await?;
    }
    let passkeys = delete_passkeys_added_before(conn, user_id, cutoff).await?;
    Ok((totp_removed, passkeys))
}

/// Deletes the passkeys of `user_id` added before `cutoff` (every one with
/// `None`), in `conn`. Returns how many.
pub(in crate::service) async fn delete_passkeys_added_before(
    conn: &impl ConnectionTrait,
    user_id: UserId,
    cutoff: Option<DateTime<Utc>>,
) -> AppResult<u64> {
    let mut delete = passkey::Entity::delete_many().filter(passkey::Column::UserId.eq(user_id));
    if let Some(cutoff) = cutoff {
        delete = delete.filter(passkey::Column::CreatedAt.lt(cutoff));
    }
    Ok(delete.exec(conn).await?.rows_affected)
}

/// How many passkeys `user_id` has, read through `conn`.
pub(in crate::service) async fn passkey_count(conn: &impl ConnectionTrait, user_id: UserId) -> AppResult<u64> {
    Ok(passkey::Entity::find().filter(passkey::Column::UserId.eq(user_id)).count(conn).await?)
}
