//! A second factor: TOTP (RFC 6238) with recovery codes, the challenge a
//! login hands out while the factor is missing, and step-up (a recent sign-in
//! for sensitive operations). Passkeys are in [`super::passkeys`]; they count
//! as a second factor too.
//!
//! Every code is used at most once, by one conditional update: a TOTP code's
//! time step must be later than the last accepted one (`last_used_step`), a
//! recovery code must be unused, a challenge must be unspent. Of two requests
//! with the same code, one wins.

use std::{collections::HashMap, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, ExprTrait, PaginatorTrait, QueryFilter, QuerySelect, Set, SqlErr,
    sea_query::Expr,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use entity::{passkey, recovery_code, second_factor_challenge, session, totp_factor, user};

use crate::service::{
    ClientInfo, Issued, Services,
    core::{
        events::{self, Actor, Event, EventKind},
        factors, limits, one_time, store, users,
    },
};
use crate::{
    auth::{keys::Sealer, password::Verified, principal::UserPrincipal, refresh::hash_token},
    config::{SecondFactorConfig, Secret},
    db::UniqueRow,
    domain::{Account, Email, SessionId, UserId},
    error::{AppError, AppResult, Redacted},
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

/// How long a login's challenge can be exchanged, in seconds.
pub const CHALLENGE_TTL_SECS: i64 = 300;
/// Wrong codes a challenge survives; the next one ends it.
pub const CHALLENGE_MAX_FAILURES: i32 = 5;

/// What second factors need beyond the database: the sealer of TOTP keys,
/// the issuer, the step-up age and the WebAuthn relying party.
pub struct SecondFactors {
    sealer: Sealer,
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

/// What the account has, for its owner and admins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FactorStatus {
    pub totp: bool,
    pub recovery_codes_left: u64,
    pub passkeys: u64,
}

impl FactorStatus {
    /// Whether a login needs a second factor.
    pub fn any(self) -> bool {
        self.totp || self.passkeys > 0
    }
}

/// The associated data a TOTP key is sealed with: the account, so that a key
/// copied onto another account's row does not open.
fn seal_identity(user_id: UserId) -> String {
    format!("totp\n{user_id}")
}

fn invalid() -> AppError {
    AppError::InvalidSecondFactor
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
fn totp(key: Vec<u8>, issuer: &str, account: &str) -> AppResult<totp_rs::Totp> {
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

/// What factors each of `users` has, in three queries whatever their number
/// (an admin's listing page); a user without any is missing from the map.
pub async fn status_for_users(svc: &Services, users: &[UserId]) -> AppResult<HashMap<UserId, FactorStatus>> {
    status_for_users_in(&svc.db, users).await
}

/// [`status_for_users`], read through `conn` (inside a transaction).
async fn status_for_users_in(
    conn: &impl ConnectionTrait,
    users: &[UserId],
) -> AppResult<HashMap<UserId, FactorStatus>> {
    let ids: Vec<Uuid> = users.iter().map(|u| u.uuid()).collect();
    let mut out: HashMap<UserId, FactorStatus> = HashMap::new();
    let totp: Vec<Uuid> = totp_factor::Entity::find()
        .select_only()
        .column(totp_factor::Column::UserId)
        .filter(totp_factor::Column::UserId.is_in(ids.clone()))
        .filter(totp_factor::Column::ConfirmedAt.is_not_null())
        .into_tuple()
        .all(conn)
        .await?;
    for user in totp {
        out.entry(UserId::from(user)).or_default().totp = true;
    }
    let codes: Vec<Uuid> = recovery_code::Entity::find()
        .select_only()
        .column(recovery_code::Column::UserId)
        .filter(recovery_code::Column::UserId.is_in(ids.clone()))
        .filter(recovery_code::Column::UsedAt.is_null())
        .into_tuple()
        .all(conn)
        .await?;
    for user in codes {
        out.entry(UserId::from(user)).or_default().recovery_codes_left += 1;
    }
    let keys: Vec<Uuid> = passkey::Entity::find()
        .select_only()
        .column(passkey::Column::UserId)
        .filter(passkey::Column::UserId.is_in(ids))
        .into_tuple()
        .all(conn)
        .await?;
    for user in keys {
        out.entry(UserId::from(user)).or_default().passkeys += 1;
    }
    Ok(out)
}

/// What every operation that checks a code of the signed-in caller does
/// first: a recent sign-in, the caller's account, and one unit of the
/// password-check budget (the client's and the account's), as a login spends.
/// Errors: `REAUTHENTICATION_REQUIRED`, `TOKEN_REVOKED`, `RATE_LIMITED`.
async fn before_code_check(
    svc: &Services,
    me: &UserPrincipal,
    client: &ClientInfo,
) -> AppResult<std::sync::Arc<Account>> {
    require_recent_auth(svc, me.session_id).await?;
    let account = users::me(svc, me.user_id).await?;
    limits::spend_password(svc, client, account.email.key()).await?;
    Ok(account)
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
pub(super) async fn stamp_authenticated(
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

/// Starts enrolling an authenticator for the caller: a new key, kept sealed
/// and unconfirmed until [`confirm_totp`] sees a code from it. An earlier
/// unconfirmed key is replaced.
///
/// Errors: `REAUTHENTICATION_REQUIRED`, `TOTP_ALREADY_ENABLED`,
/// `TOKEN_REVOKED` when the account is gone.
#[tracing::instrument(skip_all)]
pub async fn enroll_totp(svc: &Services, me: &UserPrincipal) -> AppResult<TotpEnrollment> {
    require_recent_auth(svc, me.session_id).await?;
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
async fn recovery_code_used(
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

/// A new challenge for `user`, whose password `client` just proved, with
/// `SECOND_FACTOR_REQUIRED` recorded; `None`, and nothing written, when the
/// password changed since `user` was read.
///
/// It is written only while the stored hash is still the one the login
/// verified (a compare-and-set in the same transaction): a password change
/// or reset either commits first, and no challenge is made, or after, and
/// voids it ([`void_challenges`]).
pub(super) async fn challenge(svc: &Services, user: &user::Model, client: &ClientInfo) -> AppResult<Option<Redacted>> {
    let challenge = svc.refresh.generate()?;
    let now = svc.clock.now();
    let tx = store::Write::begin(svc).await?;
    let unchanged = user::Entity::update_many()
        .col_expr(user::Column::PasswordHash, Expr::col(user::Column::PasswordHash))
        .filter(user::Column::Id.eq(user.id))
        .filter(user::Column::PasswordHash.eq(user.password_hash.as_str()))
        .exec(tx.conn())
        .await?
        .rows_affected
        == 1;
    if !unchanged {
        tx.rollback().await?;
        return Ok(None);
    }
    second_factor_challenge::Entity::insert(second_factor_challenge::ActiveModel {
        id: Set(Uuid::now_v7()),
        user_id: Set(user.id),
        challenge_hash: Set(hash_token(&challenge)),
        created_at: Set(now),
        expires_at: Set(now + ChronoDuration::seconds(CHALLENGE_TTL_SECS)),
        failures: Set(0),
        used_at: Set(None),
    })
    .exec_without_returning(tx.conn())
    .await?;
    let user_id = UserId::from(user.id);
    tx.record(Event::new(EventKind::SecondFactorRequired, Some(user_id), Actor::User(user_id), client)).await?;
    tx.commit().await?;
    Ok(Some(Redacted(challenge)))
}

/// The open challenge `challenge` names and its account, or
/// `INVALID_SECOND_FACTOR` (malformed, unknown, spent, expired or dead).
pub(super) async fn open_challenge(
    svc: &Services,
    challenge: &str,
) -> AppResult<(second_factor_challenge::Model, user::Model)> {
    if !crate::auth::refresh::well_formed(challenge) {
        return Err(invalid());
    }
    let found = second_factor_challenge::Entity::find()
        .filter(second_factor_challenge::Column::ChallengeHash.eq(hash_token(challenge)))
        .filter(second_factor_challenge::Column::UsedAt.is_null())
        .filter(second_factor_challenge::Column::ExpiresAt.gt(svc.clock.now()))
        .unique_row(&svc.db)
        .await?;
    let Some(found) = found else { return Err(invalid()) };
    let Some(user) = users::row(svc, UserId::from(found.user_id)).await? else { return Err(invalid()) };
    Ok((found, user))
}

/// Spends the challenge in `conn`'s transaction: `false` when another request
/// spent it first, or it expired or died meanwhile.
pub(super) async fn claim_challenge(
    svc: &Services,
    conn: &impl ConnectionTrait,
    challenge: &second_factor_challenge::Model,
) -> AppResult<bool> {
    let now = svc.clock.now();
    Ok(second_factor_challenge::Entity::update_many()
        .col_expr(second_factor_challenge::Column::UsedAt, Expr::value(now))
        .filter(second_factor_challenge::Column::Id.eq(challenge.id))
        .filter(second_factor_challenge::Column::UsedAt.is_null())
        .filter(second_factor_challenge::Column::ExpiresAt.gt(now))
        .exec(conn)
        .await?
        .rows_affected
        == 1)
}

/// Takes one of the challenge's tries, with one conditional update: `false`
/// when none is left, or it was spent or expired.
async fn take_try(svc: &Services, challenge: &second_factor_challenge::Model) -> AppResult<bool> {
    Ok(second_factor_challenge::Entity::update_many()
        .col_expr(
            second_factor_challenge::Column::Failures,
            Expr::col(second_factor_challenge::Column::Failures).add(1),
        )
        .filter(second_factor_challenge::Column::Id.eq(challenge.id))
        .filter(second_factor_challenge::Column::UsedAt.is_null())
        .filter(second_factor_challenge::Column::ExpiresAt.gt(svc.clock.now()))
        .filter(second_factor_challenge::Column::Failures.lt(CHALLENGE_MAX_FAILURES))
        .exec(&svc.db)
        .await?
        .rows_affected
        == 1)
}

/// After a wrong code: ends the challenge once its tries are used up, and
/// records `LOGIN_FAILED`.
pub(super) async fn challenge_failed(
    svc: &Services,
    challenge: &second_factor_challenge::Model,
    client: &ClientInfo,
) -> AppResult<AppError> {
    let now = svc.clock.now();
    let tx = store::Write::begin(svc).await?;
    second_factor_challenge::Entity::update_many()
        .col_expr(second_factor_challenge::Column::UsedAt, Expr::value(now))
        .filter(second_factor_challenge::Column::Id.eq(challenge.id))
        .filter(second_factor_challenge::Column::UsedAt.is_null())
        .filter(second_factor_challenge::Column::Failures.gte(CHALLENGE_MAX_FAILURES))
        .exec(tx.conn())
        .await?;
    let user = UserId::from(challenge.user_id);
    let event =
        Event::new(EventKind::LoginFailed, Some(user), Actor::Anonymous, client).detail("INVALID_SECOND_FACTOR");
    tx.record(event).await?;
    tx.commit().await?;
    Ok(invalid())
}

/// Starts the session a challenge was waiting for, in `tx` (whose caller
/// spent the challenge and checked the factor), records `LOGIN_SUCCEEDED`
/// with the factor used, and commits.
pub(super) async fn finish_login(
    svc: &Services,
    mut tx: store::Write<'_>,
    user: user::Model,
    used: Used,
    client: &ClientInfo,
) -> AppResult<Issued> {
    let now = svc.clock.now();
    // Over the password the row had when the login began (the one that let
    // the challenge out, or the row a passkey sign-in read): a password
    // changed or reset meanwhile refuses this login, as it refuses a
    // password login. Writing the row also orders this session against any
    // end of the account's sessions (`store::Write::end_user_sessions`).
    let current = user::Entity::update_many()
        .col_expr(user::Column::LastLoginAt, Expr::value(now))
        .filter(user::Column::Id.eq(user.id))
        .filter(user::Column::PasswordHash.eq(user.password_hash.as_str()))
        .exec_with_returning(tx.conn())
        .await?
        .pop();
    let Some(current) = current else {
        tx.rollback().await?;
        return Err(invalid());
    };
    let current = Account::from(current);
    let (session, refresh) = tx.start_session(&current, client, now).await?;
    let session_id = SessionId::from(session.id);
    if used == Used::RecoveryCode {
        recovery_code_used(&mut tx, &current, Some(session_id), client).await?;
    }
    let logged_in = Event::new(EventKind::LoginSucceeded, Some(current.id), Actor::User(current.id), client)
        .session(session_id)
        .detail(used.as_str());
    tx.record(logged_in).await?;
    tx.commit().await?;
    store::issue(svc, current, &session, refresh, now)
}

/// Exchanges a login's challenge and a TOTP or recovery code for a session.
/// Each try spends the password-check budget (the client's and the
/// account's); a challenge takes [`CHALLENGE_MAX_FAILURES`] tries, and dies
/// at the last if it is wrong. A recovery code's
/// use is mailed to the account's address and recorded.
///
/// Errors: `INVALID_SECOND_FACTOR` (a wrong, replayed or used code; a
/// malformed, spent, expired or dead challenge), `RATE_LIMITED`.
#[tracing::instrument(skip_all)]
pub async fn verify_second_factor(
    svc: &Services,
    challenge: &str,
    code: &str,
    client: &ClientInfo,
) -> AppResult<Issued> {
    let (challenge, user) = open_challenge(svc, challenge).await?;
    limits::spend_password(svc, client, &user.email_normalized).await?;
    let user_id = UserId::from(user.id);
    // One of the challenge's tries is taken, and committed, before the code is
    // looked at: concurrent guesses cannot share a try.
    if !take_try(svc, &challenge).await? {
        return Err(invalid());
    }
    let tx = store::Write::begin(svc).await?;
    let Some(used) = spend_code(svc, tx.conn(), user_id, code).await? else {
        tx.rollback().await?;
        return Err(challenge_failed(svc, &challenge, client).await?);
    };
    if !claim_challenge(svc, tx.conn(), &challenge).await? {
        tx.rollback().await?;
        return Err(invalid());
    }
    finish_login(svc, tx, user, used, client).await
}

/// Proves the caller again (password, and a code when an authenticator is
/// active), so that sensitive operations work for `REAUTHENTICATION_MAX_AGE`.
/// An account whose second factor is a passkey alone re-authenticates with
/// the passkey (`passkeys::finish_reauthentication`): its password alone
/// no longer signs it in, so it does not re-authenticate it either.
/// Spends the password-check budget. Records `REAUTHENTICATED`, or
/// `REAUTHENTICATION_FAILED` with the reason.
///
/// Errors: `INVALID_CREDENTIALS`, `INVALID_SECOND_FACTOR` (a missing or
/// wrong code), `RATE_LIMITED`, `TOKEN_REVOKED`.
#[tracing::instrument(skip_all)]
pub async fn reauthenticate(
    svc: &Services,
    me: &UserPrincipal,
    client: &ClientInfo,
    password: String,
    code: Option<&str>,
) -> AppResult<()> {
    let user = users::row(svc, me.user_id).await?.ok_or(AppError::TokenRevoked)?;
    limits::spend_password(svc, client, &user.email_normalized).await?;
    let refused = |reason: &'static str| {
        Event::new(EventKind::ReauthenticationFailed, Some(me.user_id), Actor::User(me.user_id), client)
            .session(me.session_id)
            .detail(reason)
    };
    if matches!(svc.hasher.verify(password, Some(user.password_hash)).await?, Verified::No) {
        events::record(svc, &svc.db, refused("INVALID_CREDENTIALS")).await?;
        return Err(AppError::InvalidCredentials);
    }
    let totp = factors::totp_active(&svc.db, me.user_id).await?;
    if !totp && factors::passkey_count(&svc.db, me.user_id).await? > 0 {
        // A password alone signs this account in no more: neither does it re-authenticate.
        events::record(svc, &svc.db, refused("INVALID_SECOND_FACTOR")).await?;
        return Err(invalid());
    }
    let mut tx = store::Write::begin(svc).await?;
    let used = match (totp, code) {
        (false, _) => None,
        (true, Some(code)) => match spend_code(svc, tx.conn(), me.user_id, code).await? {
            Some(used) => Some(used),
            None => {
                tx.rollback().await?;
                events::record(svc, &svc.db, refused("INVALID_SECOND_FACTOR")).await?;
                return Err(invalid());
            }
        },
        (true, None) => {
            tx.rollback().await?;
            events::record(svc, &svc.db, refused("INVALID_SECOND_FACTOR")).await?;
            return Err(invalid());
        }
    };
    stamp_authenticated(tx.conn(), me.session_id, svc.clock.now()).await?;
    if used == Some(Used::RecoveryCode) {
        // Read in the transaction: on SQLite it holds the only connection.
        let row =
            user::Entity::find_by_id(me.user_id.uuid()).unique_row(tx.conn()).await?.ok_or(AppError::TokenRevoked)?;
        recovery_code_used(&mut tx, &Account::from(row), Some(me.session_id), client).await?;
    }
    let event = Event::new(EventKind::Reauthenticated, Some(me.user_id), Actor::User(me.user_id), client)
        .session(me.session_id)
        .detail(used.map_or("PASSWORD", Used::as_str));
    tx.record(event).await?;
    tx.commit().await?;
    Ok(())
}

/// An admin removes every second factor of `user_id` (a lost device): the
/// authenticator, recovery codes and passkeys; every session of the account
/// ends (the lost device may hold one), and so do open challenges and
/// mailed links. The
/// owner is told by mail when there was anything to remove;
/// `SECOND_FACTOR_RESET` is recorded with the admin either way.
///
/// Errors: `NOT_FOUND` (no such user), FORBIDDEN for an API key on an
/// admin's account.
pub async fn reset(
    svc: &Services,
    admin: crate::auth::access::Actor,
    user_id: UserId,
    client: &ClientInfo,
) -> AppResult<FactorStatus> {
    let user = users::row(svc, user_id)
        .await?
        .ok_or_else(|| AppError::invalid_input(crate::error::Reason::NotFound, "userId", "No such user"))?;
    // As for deleting one: a leaked key must not strip an admin's protection.
    if user.role == entity::user::Role::Admin && !matches!(admin, crate::auth::access::Actor::Admin(_)) {
        return Err(AppError::Forbidden("Only an admin can reset an admin's second factors"));
    }
    let email = Email::from_parts(user.email, user.email_normalized);
    let mut tx = store::Write::begin(svc).await?;
    // What is removed, read in the transaction that removes it.
    let before = status_for_users_in(tx.conn(), &[user_id]).await?.remove(&user_id).unwrap_or_default();
    factors::remove_factors_added_before(tx.conn(), user_id, None).await?;
    // A lost device may still hold a session: every session ends, as do
    // open challenges and links.
    let ended = tx.revoke_user(user_id, None).await?;
    // Told only when something was removed.
    if before != FactorStatus::default() {
        tx.enqueue_mail(Kind::SecondFactorsReset, Some(user_id), &email, None).await?;
    }
    let detail = format!(
        "authenticator: {}, passkeys: {}, {ended} sessions ended",
        if before.totp { "removed" } else { "none" },
        before.passkeys
    );
    let event = Event::new(EventKind::SecondFactorReset, Some(user_id), Actor::from(admin), client).detail(detail);
    tx.record(event).await?;
    tx.commit().await?;
    tracing::info!(%user_id, "second factors reset by an admin");
    Ok(before)
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
