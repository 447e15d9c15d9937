//! Which second factors an account has, read and removed the same way by
//! every feature: an authenticator app (`totp_factors`, confirmed), its
//! recovery codes, and passkeys; what they need beyond the database
//! ([`SecondFactors`]); and step-up: whether the caller's session proved its
//! holder recently, and marking that it just did.

use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, ExprTrait, PaginatorTrait, QueryFilter, sea_query::Expr};

use entity::{passkey, recovery_code, session, totp_factor, user};

use crate::{
    auth::keys::Sealer,
    config::SecondFactorConfig,
    db::UniqueRow,
    domain::{SessionId, UserId},
    error::{AppError, AppResult},
    secret::Secret,
    service::Services,
};

/// What second factors need beyond the database: the sealer of TOTP keys,
/// the issuer, the step-up age and the WebAuthn relying party.
pub struct SecondFactors {
    pub(in crate::service) sealer: Sealer,
    pub totp_issuer: String,
    /// `REAUTHENTICATION_MAX_AGE`.
    pub reauthentication_max_age: Duration,
    /// `None` when no relying party can be served (an IP address as the
    /// origin's host, or plain http other than localhost: WebAuthn needs a
    /// domain in a secure context); passkey operations then answer
    /// `PASSKEYS_UNAVAILABLE`.
    pub webauthn: Option<webauthn_rs::Webauthn>,
}

impl SecondFactors {
    /// Errors: a relying party webauthn-rs refuses (named).
    pub fn new(config: &SecondFactorConfig, secret: &Secret) -> Result<Self, String> {
        let webauthn = if !config.passkeys_possible() {
            tracing::warn!(
                rp_id = %config.webauthn_rp_id,
                "passkeys are off: WebAuthn needs a domain as its relying-party id, not an IP address, and \
                 https origins (or http://localhost); set APP_URL to such a URL, or WEBAUTHN_RP_ID and \
                 WEBAUTHN_ORIGINS"
            );
            None
        } else {
            let first = &config.webauthn_origins[0];
            let mut builder = webauthn_rs::WebauthnBuilder::new(&config.webauthn_rp_id, first)
                .map_err(|e| format!("WEBAUTHN_RP_ID / WEBAUTHN_ORIGINS: {e}"))?
                .rp_name(&config.webauthn_rp_name);
            for origin in &config.webauthn_origins[1..] {
                builder = builder.append_allowed_origin(origin);
            }
            Some(builder.build().map_err(|e| format!("WEBAUTHN_RP_ID / WEBAUTHN_ORIGINS: {e}"))?)
        };
        Ok(Self {
            sealer: Sealer::for_second_factors(secret),
            totp_issuer: config.totp_issuer.clone(),
            reauthentication_max_age: config.reauthentication_max_age,
            webauthn,
        })
    }
}

/// Whether a password login of `user_id` needs a second factor (an active
/// authenticator or a passkey).
pub(in crate::service) async fn required(svc: &Services, user_id: UserId) -> AppResult<bool> {
    Ok(totp_active(&svc.db, user_id).await? || passkey_count(&svc.db, user_id).await? > 0)
}

/// A condition on a `users` row: the account has no second factor (no
/// confirmed authenticator and no passkey), as [`required`] would answer.
/// A write that starts a session on the password alone carries it, so the
/// factors are judged in the statement that starts the session rather than in
/// a read before it. On SQLite, where writers take turns, a factor confirmed
/// while the password was being checked is always seen; on PostgreSQL a
/// confirmation that commits while that statement runs is not (the statement
/// reads its own snapshot): the window is that statement, not the hash.
/// When the write changes no row the caller asks [`required`].
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

/// Refuses a sensitive operation unless the caller's session proved its
/// holder within `REAUTHENTICATION_MAX_AGE` (NIST SP 800-63B §4.1.3 and
/// OWASP ASVS V3.7.1: re-authenticate before sensitive changes), so that a
/// stolen access token alone cannot take over or lock out the account.
///
/// Errors: `REAUTHENTICATION_REQUIRED`, `TOKEN_REVOKED` when the session is gone.
pub async fn require_recent_auth(svc: &Services, session_id: SessionId) -> AppResult<()> {
    let row = session::Entity::find_by_id(session_id.uuid()).unique_row(&svc.db).await?;
    let Some(row) = row.filter(|s| s.revoked_at.is_none()) else { return Err(AppError::TokenRevoked) };
    let proven = row.authenticated_at.unwrap_or(row.created_at);
    let max_age = ChronoDuration::from_std(svc.second_factor.reauthentication_max_age)
        .map_err(|e| AppError::internal(format!("reauthentication age: {e}")))?;
    if svc.clock.now() - proven > max_age { Err(AppError::ReauthenticationRequired) } else { Ok(()) }
}

/// Marks the session as proven now (a re-authentication), in `conn`, if it
/// is still live. Errors: `TOKEN_REVOKED` when it ended (or expired) since
/// the request's token was checked: a re-authentication of an ended session
/// does not answer true.
pub(in crate::service) async fn stamp_authenticated(
    conn: &impl ConnectionTrait,
    session_id: SessionId,
    now: DateTime<Utc>,
) -> AppResult<()> {
    let stamped = session::Entity::update_many()
        .col_expr(session::Column::AuthenticatedAt, Expr::value(now))
        .filter(session::Column::Id.eq(session_id.uuid()))
        .filter(session::Column::RevokedAt.is_null())
        .filter(session::Column::ExpiresAt.gt(now))
        .exec(conn)
        .await?
        .rows_affected;
    if stamped == 1 { Ok(()) } else { Err(AppError::TokenRevoked) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A re-authentication stamps a live session only: one that ended after
    /// its token was checked is refused, not stamped.
    #[tokio::test]
    async fn an_ended_session_is_not_stamped() {
        let kit = crate::service::testkit::TestKit::new().await;
        let a = kit.register("stamp@example.com").await;
        let now = kit.svc.clock.now();
        stamp_authenticated(&kit.svc.db, a.session_id, now).await.expect("a live session");
        let mut tx = crate::service::core::store::Write::begin(&kit.svc).await.unwrap();
        tx.end_user_sessions(a.user.id, None).await.unwrap();
        tx.commit().await.unwrap();
        let e = stamp_authenticated(&kit.svc.db, a.session_id, now).await.expect_err("an ended session stamped");
        assert!(matches!(e, AppError::TokenRevoked), "{e:?}");
    }
}
