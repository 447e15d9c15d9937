//! The authenticator app (TOTP, RFC 6238) and its recovery codes: enrolling,
//! confirming and removing it, replacing the codes, and spending a code.
//!
//! Every code is used at most once, by one conditional update: a TOTP code's
//! time step must be later than the last accepted one (`last_used_step`), a
//! recovery code must be unused, a challenge must be unspent. Of two requests
//! with the same code, one wins.

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, Set, SqlErr, sea_query::Expr};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use entity::{recovery_code, totp_factor};

use crate::service::{
    ClientInfo, Services,
    core::{
        events::{Actor, Event, EventKind},
        factors, limits, one_time, store, users,
    },
};
use crate::{
    auth::principal::UserPrincipal,
    db::UniqueRow,
    domain::{Account, SessionId, UserId},
    error::{AppError, AppResult},
    mail::Kind,
};

/// RFC 6238 parameters. SHA-1, 6 digits and 30 s, because many authenticator
/// apps silently ignore any others (and would then show wrong codes).
const TOTP_STEP_SECS: u64 = 30;
const TOTP_DIGITS: usize = 6;
/// The shared key's size: 160 bits, RFC 4226 §4's recommended length.
const TOTP_SECRET_BYTES: usize = 20;
/// Steps of clock drift accepted either way (RFC 6238 §5.2).
const TOTP_SKEW_STEPS: u16 = 1;

/// Recovery codes made at enrolment (and by each regeneration).
pub const RECOVERY_CODES: usize = 10;
/// A recovery code's random part: 80 bits, as 16 characters of RFC 4648
/// base32, shown in four groups (`ABCD-EFGH-IJKL-MNOP`).
const RECOVERY_CODE_BYTES: usize = 10;

/// A new authenticator's key, for the app that will show the codes.
pub struct TotpEnrollment {
    /// The key in RFC 4648 base32 without padding, for typing by hand.
    pub secret: String,
    /// `otpauth://totp/<issuer>:<email>?secret=…&issuer=…` (the Key URI
    /// format authenticator apps read).
    pub otpauth_uri: String,
    /// The URI as a QR code: an SVG image as a `data:image/svg+xml;base64,…` URL.
    pub qr_code_svg: String,
}

/// The associated data a TOTP key is sealed with: the account, so that a key
/// copied onto another account's row does not open.
fn seal_identity(user_id: UserId) -> String {
    format!("totp\n{user_id}")
}

fn not_enrolled(message: &str) -> AppError {
    AppError::Refused { reason: crate::error::Reason::TotpNotEnrolled, message: message.to_owned() }
}

fn already_enabled() -> AppError {
    AppError::Refused {
        reason: crate::error::Reason::TotpAlreadyEnabled,
        message: "An authenticator is active already; disable it first".to_owned(),
    }
}

/// The RFC 6238 generator for `key`; `account` (an address) labels it in
/// the otpauth:// URI.
pub(super) fn totp(key: Vec<u8>, issuer: &str, account: &str) -> AppResult<totp_rs::Totp> {
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(TOTP_DIGITS as u8)
        .with_skew(TOTP_SKEW_STEPS)
        .with_step_duration(TOTP_STEP_SECS)
        .with_secret(totp_rs::Secret::new(key.into_boxed_slice()))
        .with_issuer(Some(issuer))
        .with_account_name(account)
        .build()
        .map_err(|e| AppError::internal(format!("totp: {e}")))
}

/// The time step of `now` (Unix seconds / 30).
#[cfg(test)]
fn step_of(now: DateTime<Utc>) -> i64 {
    now.timestamp().div_euclid(TOTP_STEP_SECS as i64)
}

/// The step within the allowed skew (±1) whose code is `code`, if any
/// (totp-rs compares the codes as numbers, in constant time per step).
fn matching_step(key: &[u8], code: &str, now: DateTime<Utc>) -> AppResult<Option<i64>> {
    let Ok(time) = u64::try_from(now.timestamp()) else { return Ok(None) };
    let generator = totp(key.to_vec(), "authgraph", "account")?;
    Ok(generator.check(code, time).and_then(|step| i64::try_from(step).ok()))
}

/// A code as typed, without spaces and dashes, upper case.
fn canonical(code: &str) -> String {
    code.chars().filter(|c| !c.is_whitespace() && *c != '-').flat_map(char::to_uppercase).collect()
}

fn recovery_hash(canonical: &str) -> String {
    B64.encode(Sha256::digest(canonical.as_bytes()))
}

/// Ten new recovery codes, as shown (`ABCD-EFGH-IJKL-MNOP`).
fn new_recovery_codes() -> AppResult<Vec<String>> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; RECOVERY_CODE_BYTES];
            getrandom::fill(&mut bytes).map_err(|e| AppError::internal(format!("getrandom: {e}")))?;
            let text = totp_rs::Secret::new(Box::new(bytes)).to_base32();
            Ok(text.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("-"))
        })
        .collect()
}

/// Replaces the account's recovery codes with ten new ones, in `conn`'s
/// transaction, and returns them (the only time they are shown).
async fn replace_recovery_codes(
    conn: &impl ConnectionTrait,
    user_id: UserId,
    now: DateTime<Utc>,
) -> AppResult<Vec<String>> {
    recovery_code::Entity::delete_many().filter(recovery_code::Column::UserId.eq(user_id)).exec(conn).await?;
    let codes = new_recovery_codes()?;
    let rows = codes.iter().map(|code| recovery_code::ActiveModel {
        id: Set(Uuid::now_v7()),
        user_id: Set(user_id.uuid()),
        code_hash: Set(recovery_hash(&canonical(code))),
        created_at: Set(now),
        used_at: Set(None),
    });
    recovery_code::Entity::insert_many(rows).exec_without_returning(conn).await?;
    Ok(codes)
}

/// Starts enrolling an authenticator for the caller: a new key, kept sealed
/// and unconfirmed until [`confirm_totp`] sees a code from it. An earlier
/// unconfirmed key is replaced.
///
/// Errors: `REAUTHENTICATION_REQUIRED`, `TOTP_ALREADY_ENABLED`,
/// `TOKEN_REVOKED` when the account is gone.
#[tracing::instrument(skip_all)]
pub async fn enroll_totp(svc: &Services, me: &UserPrincipal) -> AppResult<TotpEnrollment> {
    factors::require_recent_auth(svc, me.session_id).await?;
    let account = users::me(svc, me.user_id).await?;
    let mut key = vec![0u8; TOTP_SECRET_BYTES];
    getrandom::fill(&mut key).map_err(|e| AppError::internal(format!("getrandom: {e}")))?;
    let sealed = svc.second_factor.sealer.seal(&seal_identity(me.user_id), &key)?;
    let now = svc.clock.now();
    let tx = store::Write::begin(svc).await?;
    totp_factor::Entity::delete_many()
        .filter(totp_factor::Column::UserId.eq(me.user_id))
        .filter(totp_factor::Column::ConfirmedAt.is_null())
        .exec(tx.conn())
        .await?;
    let inserted = totp_factor::Entity::insert(totp_factor::ActiveModel {
        user_id: Set(me.user_id.uuid()),
        secret: Set(sealed),
        created_at: Set(now),
        confirmed_at: Set(None),
        last_used_step: Set(0),
    })
    .exec_without_returning(tx.conn())
    .await;
    match inserted {
        Ok(_) => {}
        // The row that is left is a confirmed one.
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            tx.rollback().await?;
            return Err(already_enabled());
        }
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    let generator = totp(key, &svc.second_factor.totp_issuer, account.email.display())?;
    let otpauth_uri = generator.to_url().map_err(|e| AppError::internal(format!("otpauth uri: {e}")))?;
    let svg = qrcode::QrCode::new(otpauth_uri.as_bytes())
        .map_err(|e| AppError::internal(format!("qr code: {e}")))?
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build();
    Ok(TotpEnrollment {
        secret: generator.secret().to_base32(),
        otpauth_uri,
        qr_code_svg: format!("data:image/svg+xml;base64,{}", B64.encode(svg)),
    })
}

/// Activates the enrolled authenticator with a code from it, and returns ten
/// new recovery codes (shown this once; only their hashes are kept). Sends a
/// notice to the account's address and records `SECOND_FACTOR_ENABLED`.
///
/// The code spends the password-check budget (the client's and the
/// account's), as a login does.
///
/// Errors: `REAUTHENTICATION_REQUIRED`, `RATE_LIMITED`, `TOTP_NOT_ENROLLED`,
/// `TOTP_ALREADY_ENABLED`, `INVALID_SECOND_FACTOR` (a wrong code).
#[tracing::instrument(skip_all)]
pub async fn confirm_totp(
    svc: &Services,
    me: &UserPrincipal,
    client: &ClientInfo,
    code: &str,
) -> AppResult<Vec<String>> {
    let account = before_code_check(svc, me, client).await?;
    let Some(factor) = totp_factor::Entity::find_by_id(me.user_id.uuid()).unique_row(&svc.db).await? else {
        return Err(not_enrolled("No authenticator is being enrolled: call enrollTotp first"));
    };
    if factor.confirmed_at.is_some() {
        return Err(already_enabled());
    }
    let key = svc.second_factor.sealer.open(&seal_identity(me.user_id), &factor.secret)?;
    let now = svc.clock.now();
    let Some(step) = matching_step(&key, &canonical(code), now)? else { return Err(invalid()) };
    let mut tx = store::Write::begin(svc).await?;
    let confirmed = totp_factor::Entity::update_many()
        .col_expr(totp_factor::Column::ConfirmedAt, Expr::value(now))
        .col_expr(totp_factor::Column::LastUsedStep, Expr::value(step))
        .filter(totp_factor::Column::UserId.eq(me.user_id))
        .filter(totp_factor::Column::ConfirmedAt.is_null())
        .filter(totp_factor::Column::Secret.eq(factor.secret.clone()))
        .exec(tx.conn())
        .await?
        .rows_affected;
    if confirmed != 1 {
        // Confirmed by another request, or replaced by a new enrolment.
        tx.rollback().await?;
        return Err(invalid());
    }
    let codes = replace_recovery_codes(tx.conn(), me.user_id, now).await?;
    tx.enqueue_mail(Kind::SecondFactorEnabled, Some(me.user_id), &account.email, None).await?;
    let event = Event::new(EventKind::SecondFactorEnabled, Some(me.user_id), Actor::User(me.user_id), client)
        .session(me.session_id)
        .detail("TOTP");
    tx.record(event).await?;
    tx.commit().await?;
    tracing::info!(user_id = %me.user_id, "authenticator enrolled");
    Ok(codes)
}

/// Checks `code` for `user_id` in `conn`'s transaction and spends it: a TOTP
/// code of a step later than the last one accepted (within ±1 step of now),
/// or an unused recovery code. `None` for anything else (wrong, replayed,
/// used, or no active authenticator).
pub(super) async fn spend_code(
    svc: &Services,
    conn: &impl ConnectionTrait,
    user_id: UserId,
    code: &str,
) -> AppResult<Option<Used>> {
    let code = canonical(code);
    let now = svc.clock.now();
    if code.len() == TOTP_DIGITS && code.bytes().all(|b| b.is_ascii_digit()) {
        let factor = totp_factor::Entity::find_by_id(user_id.uuid())
            .filter(totp_factor::Column::ConfirmedAt.is_not_null())
            .unique_row(conn)
            .await?;
        let Some(factor) = factor else { return Ok(None) };
        let key = svc.second_factor.sealer.open(&seal_identity(user_id), &factor.secret)?;
        let Some(step) = matching_step(&key, &code, now)? else { return Ok(None) };
        // The replay guard: a step is taken once, and only after the last one.
        let taken = totp_factor::Entity::update_many()
            .col_expr(totp_factor::Column::LastUsedStep, Expr::value(step))
            .filter(totp_factor::Column::UserId.eq(user_id))
            .filter(totp_factor::Column::ConfirmedAt.is_not_null())
            .filter(totp_factor::Column::LastUsedStep.lt(step))
            .exec(conn)
            .await?
            .rows_affected;
        return Ok((taken == 1).then_some(Used::Totp));
    }
    if code.len() == 16 && code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        // Recovery codes stand in for an active authenticator only.
        if !factors::totp_active(conn, user_id).await? {
            return Ok(None);
        }
        let spent = recovery_code::Entity::update_many()
            .col_expr(recovery_code::Column::UsedAt, Expr::value(now))
            .filter(recovery_code::Column::UserId.eq(user_id))
            .filter(recovery_code::Column::CodeHash.eq(recovery_hash(&code)))
            .filter(recovery_code::Column::UsedAt.is_null())
            .exec(conn)
            .await?
            .rows_affected;
        return Ok((spent == 1).then_some(Used::RecoveryCode));
    }
    Ok(None)
}

/// Records a recovery code's use and tells the account's address, in `tx`.
pub(super) async fn recovery_code_used(
    tx: &mut store::Write<'_>,
    account: &Account,
    session: Option<SessionId>,
    client: &ClientInfo,
) -> AppResult<()> {
    let left = recovery_code::Entity::find()
        .filter(recovery_code::Column::UserId.eq(account.id))
        .filter(recovery_code::Column::UsedAt.is_null())
        .count(tx.conn())
        .await?;
    tx.enqueue_mail(Kind::RecoveryCodeUsed, Some(account.id), &account.email, None).await?;
    let mut event = Event::new(EventKind::RecoveryCodeUsed, Some(account.id), Actor::User(account.id), client)
        .detail(format!("{left} left"));
    if let Some(session) = session {
        event = event.session(session);
    }
    tx.record(event).await
}

/// Removes the caller's authenticator and recovery codes, with a code from
/// the authenticator or a recovery code. Ends pending second-factor
/// challenges, sends a notice and records `SECOND_FACTOR_DISABLED`.
///
/// Errors: `REAUTHENTICATION_REQUIRED`, `RATE_LIMITED`, `TOTP_NOT_ENROLLED`
/// (none active), `INVALID_SECOND_FACTOR`.
#[tracing::instrument(skip_all)]
pub async fn disable_totp(svc: &Services, me: &UserPrincipal, client: &ClientInfo, code: &str) -> AppResult<()> {
    let account = before_code_check(svc, me, client).await?;
    if !factors::totp_active(&svc.db, me.user_id).await? {
        return Err(not_enrolled("No authenticator is active"));
    }
    let mut tx = store::Write::begin(svc).await?;
    let Some(used) = spend_code(svc, tx.conn(), me.user_id, code).await? else {
        tx.rollback().await?;
        return Err(invalid());
    };
    totp_factor::Entity::delete_by_id(me.user_id.uuid()).exec(tx.conn()).await?;
    recovery_code::Entity::delete_many().filter(recovery_code::Column::UserId.eq(me.user_id)).exec(tx.conn()).await?;
    one_time::void_challenges(tx.conn(), me.user_id, svc.clock.now()).await?;
    tx.enqueue_mail(Kind::SecondFactorDisabled, Some(me.user_id), &account.email, None).await?;
    let event = Event::new(EventKind::SecondFactorDisabled, Some(me.user_id), Actor::User(me.user_id), client)
        .session(me.session_id)
        .detail(format!("TOTP, proven with {}", used.as_str()));
    tx.record(event).await?;
    tx.commit().await?;
    tracing::info!(user_id = %me.user_id, "authenticator removed");
    Ok(())
}

/// Replaces the caller's recovery codes with ten new ones (the old set stops
/// working) and returns them, with a code from the authenticator or a
/// recovery code (new codes are a new factor: a session alone does not make
/// them). Sends a notice and records `RECOVERY_CODES_REGENERATED`. The code
/// spends the password-check budget.
///
/// Errors: `REAUTHENTICATION_REQUIRED`, `RATE_LIMITED`, `TOTP_NOT_ENROLLED`
/// (none active), `INVALID_SECOND_FACTOR`.
#[tracing::instrument(skip_all)]
pub async fn regenerate_recovery_codes(
    svc: &Services,
    me: &UserPrincipal,
    client: &ClientInfo,
    code: &str,
) -> AppResult<Vec<String>> {
    let account = before_code_check(svc, me, client).await?;
    if !factors::totp_active(&svc.db, me.user_id).await? {
        return Err(not_enrolled("No authenticator is active"));
    }
    let now = svc.clock.now();
    let mut tx = store::Write::begin(svc).await?;
    // Checked in the transaction: an authenticator removed meanwhile takes no new codes.
    let Some(used) = spend_code(svc, tx.conn(), me.user_id, code).await? else {
        tx.rollback().await?;
        return Err(invalid());
    };
    let codes = replace_recovery_codes(tx.conn(), me.user_id, now).await?;
    tx.enqueue_mail(Kind::RecoveryCodesRegenerated, Some(me.user_id), &account.email, None).await?;
    let event = Event::new(EventKind::RecoveryCodesRegenerated, Some(me.user_id), Actor::User(me.user_id), client)
        .session(me.session_id)
        .detail(format!("proven with {}", used.as_str()));
    tx.record(event).await?;
    tx.commit().await?;
    Ok(codes)
}

/// How a code proved the factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Used {
    /// A TOTP code (its time step is now spent).
    Totp,
    /// A recovery code (now spent).
    RecoveryCode,
    /// A passkey's assertion.
    Passkey,
}

impl Used {
    /// The name events record (`TOTP`, `RECOVERY_CODE`, `PASSKEY`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Used::Totp => "TOTP",
            Used::RecoveryCode => "RECOVERY_CODE",
            Used::Passkey => "PASSKEY",
        }
    }
}

pub(super) fn invalid() -> AppError {
    AppError::InvalidSecondFactor
}

/// What every operation that checks a code of the signed-in caller does
/// first: a recent sign-in, the caller's account, and one unit of the
/// password-check budget (the client's and the account's), as a login spends.
/// Errors: `REAUTHENTICATION_REQUIRED`, `TOKEN_REVOKED`, `RATE_LIMITED`.
pub(super) async fn before_code_check(
    svc: &Services,
    me: &UserPrincipal,
    client: &ClientInfo,
) -> AppResult<std::sync::Arc<Account>> {
    factors::require_recent_auth(svc, me.session_id).await?;
    let account = users::me(svc, me.user_id).await?;
    limits::spend_password(svc, client, account.email.key()).await?;
    Ok(account)
}

#[cfg(test)]
mod tests {
    use chrono::Duration as ChronoDuration;

    use super::*;

    /// RFC 6238 Appendix B's SHA-1 vectors (the 8-digit codes' last six digits
    /// are the 6-digit codes): the generator and the step arithmetic agree
    /// with the standard.
    #[test]
    fn codes_match_rfc_6238_vectors() {
        let key = b"12345678901234567890".to_vec();
        for (time, code) in [(59, "287082"), (1_111_111_109, "081804"), (1_234_567_890, "005924")] {
            let now = DateTime::from_timestamp(time, 0).unwrap();
            assert_eq!(matching_step(&key, code, now).unwrap(), Some(step_of(now)), "t={time}");
        }
        // One step either side is accepted; two are not.
        let now = DateTime::from_timestamp(1_234_567_890, 0).unwrap();
        assert!(matching_step(&key, "005924", now + ChronoDuration::seconds(30)).unwrap().is_some());
        assert!(matching_step(&key, "005924", now - ChronoDuration::seconds(30)).unwrap().is_some());
        assert!(matching_step(&key, "005924", now + ChronoDuration::seconds(60)).unwrap().is_none());
        assert!(matching_step(&key, "005925", now).unwrap().is_none());
    }

    #[test]
    fn recovery_codes_are_distinct_and_typed_loosely() {
        let codes = new_recovery_codes().unwrap();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), RECOVERY_CODES);
        for code in &codes {
            assert_eq!(code.len(), 19, "{code}");
            let typed = format!(" {} ", code.to_lowercase().replace('-', " "));
            assert_eq!(recovery_hash(&canonical(&typed)), recovery_hash(&canonical(code)));
        }
    }
}
