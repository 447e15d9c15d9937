//! One error type for the whole service, mapped once to the `extensions.code` and
//! `extensions.reason` of the contract. Internal failures show the client a
//! generic message; the detail goes to the log, inside the request's span
//! (which carries the request id that the client also sees).

use async_graphql::{ErrorExtensions, Value};
use sea_orm::DbErr;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unauthenticated,
    Forbidden,
    BadUserInput,
    RateLimited,
    ServiceUnavailable,
    InternalServerError,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Forbidden => "FORBIDDEN",
            Code::BadUserInput => "BAD_USER_INPUT",
            Code::RateLimited => "RATE_LIMITED",
            Code::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            Code::InternalServerError => "INTERNAL_SERVER_ERROR",
        }
    }
}

/// Every `extensions.reason` the server sends: the one catalogue. Each reason
/// has one code; the README's table of reasons is generated from [`Reason::ALL`]
/// and a test holds the two equal. Errors without a reason (a generic
/// `FORBIDDEN`, `RATE_LIMITED` with its `retryAfter`, `SERVICE_UNAVAILABLE` and
/// `INTERNAL_SERVER_ERROR` with their `requestId`, and a malformed HTTP
/// request) carry no `reason`.
macro_rules! reasons {
    ($($variant:ident => ($wire:literal, $code:ident, $legacy:expr, $meaning:literal),)+) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Reason {
            $($variant,)+
        }

        impl Reason {
            /// Every reason, in the order of the README's table.
            pub const ALL: &[Reason] = &[$(Reason::$variant,)+];

            /// The wire name (`extensions.reason`), its code, the older numeric
            /// name some clients know it by, and what it means to a client.
            const fn entry(self) -> (&'static str, Code, Option<&'static str>, &'static str) {
                match self {
                    $(Reason::$variant => ($wire, Code::$code, $legacy, $meaning),)+
                }
            }
        }
    };
}

reasons! {
    InvalidCredentials => ("INVALID_CREDENTIALS", Unauthenticated, Some("AUTH_001"), "Wrong email or password (the same answer for an unknown email)."),
    AccessTokenExpired => ("ACCESS_TOKEN_EXPIRED", Unauthenticated, Some("AUTH_002"), "Refresh, then retry the request."),
    RefreshTokenExpired => ("REFRESH_TOKEN_EXPIRED", Unauthenticated, Some("AUTH_003"), "The session ended by age or idleness: log in again."),
    TokenRevoked => ("TOKEN_REVOKED", Unauthenticated, Some("AUTH_004"), "The session was ended (logout, revocation, password change, deletion): log in again."),
    InvalidToken => ("INVALID_TOKEN", Unauthenticated, Some("AUTH_005"), "The token is malformed, forged or unknown: log in again."),
    RefreshTokenReused => ("REFRESH_TOKEN_REUSED", Unauthenticated, None, "A rotated refresh token came back after its grace window; the session was ended."),
    MissingToken => ("MISSING_TOKEN", Unauthenticated, None, "The operation needs an access token."),
    CrossSiteRequest => ("CROSS_SITE_REQUEST", Forbidden, None, "A cookie-using operation came from a site that is neither this one nor an allowed origin."),
    EmailTaken => ("EMAIL_TAKEN", BadUserInput, None, "The address already has an account (field `email`)."),
    InvalidEmail => ("INVALID_EMAIL", BadUserInput, None, "The address is malformed or has invisible characters."),
    WeakPassword => ("WEAK_PASSWORD", BadUserInput, None, "The password is shorter than 8 or longer than 128 characters."),
    InvalidName => ("INVALID_NAME", BadUserInput, None, "The name is empty, too long, or has control or invisible characters."),
    InvalidId => ("INVALID_ID", BadUserInput, None, "The `ID` argument is not one of this server's ids."),
    NotFound => ("NOT_FOUND", BadUserInput, None, "No such user, or no such live API key."),
    LastAdmin => ("LAST_ADMIN", BadUserInput, None, "The last admin cannot be demoted or deleted."),
    InvalidCursor => ("INVALID_CURSOR", BadUserInput, None, "`after`/`before` is not a cursor of this listing."),
    InvalidPageSize => ("INVALID_PAGE_SIZE", BadUserInput, None, "`first`/`last` is outside 0 to 100, or both were given."),
    InvalidSearch => ("INVALID_SEARCH", BadUserInput, None, "The search term is over 256 characters or has control characters."),
    InvalidScopes => ("INVALID_SCOPES", BadUserInput, None, "An API key needs at least one scope."),
    InvalidExpiry => ("INVALID_EXPIRY", BadUserInput, None, "`expiresInDays` is outside 1 to 3650."),
    InvalidGrace => ("INVALID_GRACE", BadUserInput, None, "`graceDays` is outside 0 to 365."),
    AlreadyRotated => ("ALREADY_ROTATED", BadUserInput, None, "The API key was already rotated: rotate its successor."),
    NoSigningKeys => ("NO_SIGNING_KEYS", BadUserInput, None, "This install signs HS256 under `JWT_SECRET`: it has no key pairs to rotate (see `JWT_ALGORITHM`)."),
    LinkInvalidOrExpired => ("LINK_INVALID_OR_EXPIRED", BadUserInput, None, "The mailed link's token is unknown, used, expired, replaced by a newer mail, or for another purpose (field `token`): ask for a new mail."),
    EmailNotVerified => ("EMAIL_NOT_VERIFIED", Forbidden, None, "The address is not confirmed yet (`REQUIRE_EMAIL_VERIFICATION`): use the link mailed to it (a refused login mails a new one, at most one a minute), then log in. No session was started."),
    SecondFactorRequired => ("SECOND_FACTOR_REQUIRED", Unauthenticated, None, "The password held and the account has a second factor: send `extensions.challenge` to `verifySecondFactor` with a TOTP or recovery code (or use it for a passkey sign-in) within 5 minutes. No session was started."),
    InvalidSecondFactor => ("INVALID_SECOND_FACTOR", Unauthenticated, None, "The code is wrong, was used already, or the challenge is spent, expired or died of 5 wrong codes: ask again (a dead challenge needs a new login)."),
    ReauthenticationRequired => ("REAUTHENTICATION_REQUIRED", Forbidden, None, "A sensitive operation needs a sign-in within `REAUTHENTICATION_MAX_AGE` (10 minutes by default): call `reauthenticate`, then retry."),
    TotpAlreadyEnabled => ("TOTP_ALREADY_ENABLED", BadUserInput, None, "The account has an authenticator already: disable it first to enrol another."),
    TotpNotEnrolled => ("TOTP_NOT_ENROLLED", BadUserInput, None, "No authenticator waits for confirmation (call `enrollTotp` first), or none is active (for `disableTotp` and `regenerateRecoveryCodes`)."),
    PasskeysUnavailable => ("PASSKEYS_UNAVAILABLE", Forbidden, None, "Passkeys are off on this server: its origin is not one WebAuthn allows (an IP address, or plain http other than localhost); see `WEBAUTHN_RP_ID` and `WEBAUTHN_ORIGINS`."),
    PasskeyRefused => ("PASSKEY_REFUSED", BadUserInput, None, "The passkey's answer does not verify: another origin or relying party, a replayed or expired ceremony, an unknown or cloned credential (field `credential`)."),
    TooManyAliases => ("TOO_MANY_ALIASES", BadUserInput, None, "The operation has more aliases than the server allows."),
    TooManyCredentialFields => ("TOO_MANY_CREDENTIAL_FIELDS", BadUserInput, None, "More than one credential-checking field (login, register, changePassword, resetPassword, verifySecondFactor, confirmTotp, disableTotp, regenerateRecoveryCodes, reauthenticate, finishPasskeyLogin, finishPasskeyRegistration, finishPasskeyReauthentication) in one HTTP request."),
    IntrospectionDisabled => ("INTROSPECTION_DISABLED", BadUserInput, None, "Introspection is off on this server."),
    GraphqlValidationFailed => ("GRAPHQL_VALIDATION_FAILED", BadUserInput, None, "The document does not parse or validate against the schema, or exceeds the depth or complexity limit."),
}

impl Reason {
    /// The wire name, as in `extensions.reason`.
    pub const fn as_str(self) -> &'static str {
        self.entry().0
    }

    pub const fn code(self) -> Code {
        self.entry().1
    }

    /// The older numeric name (`extensions.legacyCode`), for the five reasons that have one.
    pub const fn legacy_code(self) -> Option<&'static str> {
        self.entry().2
    }

    /// What the reason tells a client, in one sentence.
    pub const fn meaning(self) -> &'static str {
        self.entry().3
    }

    /// The README's table of reasons, generated from [`Reason::ALL`].
    pub fn markdown_table() -> String {
        let mut out = String::from("| reason | code | also known as | meaning |\n|---|---|---|---|\n");
        for &r in Reason::ALL {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                r.as_str(),
                r.code().as_str(),
                r.legacy_code().unwrap_or(""),
                r.meaning()
            ));
        }
        out
    }
}

/// A secret an error carries to the client (a second-factor challenge),
/// shown as `[redacted]` by `Debug`, so that a logged error never holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Error)]
pub enum AppError {
    #[error("Invalid email or password")]
    InvalidCredentials,
    #[error("The access token has expired")]
    AccessTokenExpired,
    #[error("The refresh token has expired; log in again")]
    RefreshTokenExpired,
    #[error("The token has been revoked")]
    TokenRevoked,
    #[error("The token is invalid")]
    InvalidToken,
    #[error("The refresh token was already used; the session has been ended")]
    RefreshTokenReused,
    #[error("Authentication required")]
    MissingToken,
    /// Refused for who the caller is (a role or scope it lacks); no reason.
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("Cross-site request refused")]
    CrossSiteRequest,
    #[error("This email address is already registered")]
    EmailTaken,
    #[error("Confirm your email address first, with the link mailed to it")]
    EmailNotVerified,
    /// The password held; a second factor is needed. `challenge` goes to the
    /// client in `extensions.challenge` (and nowhere else: not in the message).
    #[error("A second factor is required to finish signing in")]
    SecondFactorRequired { challenge: Redacted },
    #[error("The second-factor code or challenge is not valid")]
    InvalidSecondFactor,
    #[error("This operation needs a recent sign-in: re-authenticate, then retry")]
    ReauthenticationRequired,
    /// A bad argument: `field` names it (GraphQL's argument name).
    #[error("{message}")]
    InvalidInput { reason: Reason, field: &'static str, message: String },
    /// A refusal with a reason and no argument to blame: a request the guard
    /// refuses for its shape (aliases, credential fields, introspection), the
    /// engine for its document, or the service for the account's state (an
    /// authenticator active already, none enrolled, no passkey).
    #[error("{message}")]
    Refused { reason: Reason, message: String },
    /// A malformed HTTP request, refused before GraphQL runs (wrong media type,
    /// body too large, not a GraphQL request); code only.
    #[error("{0}")]
    BadRequest(String),
    #[error("Too many requests; retry in {retry_after} seconds")]
    RateLimited { retry_after: u64 },
    #[error("The service is temporarily unavailable; retry shortly")]
    Unavailable(#[source] DbErr),
    #[error("Internal server error")]
    Internal(String),
}

impl AppError {
    pub fn code(&self) -> Code {
        use AppError::*;
        match self {
            Forbidden(_) => Code::Forbidden,
            BadRequest(_) => Code::BadUserInput,
            RateLimited { .. } => Code::RateLimited,
            Unavailable(_) => Code::ServiceUnavailable,
            Internal(_) => Code::InternalServerError,
            _ => self.reason().map_or(Code::InternalServerError, Reason::code),
        }
    }

    pub fn reason(&self) -> Option<Reason> {
        use AppError::*;
        Some(match self {
            InvalidCredentials => Reason::InvalidCredentials,
            AccessTokenExpired => Reason::AccessTokenExpired,
            RefreshTokenExpired => Reason::RefreshTokenExpired,
            TokenRevoked => Reason::TokenRevoked,
            InvalidToken => Reason::InvalidToken,
            RefreshTokenReused => Reason::RefreshTokenReused,
            MissingToken => Reason::MissingToken,
            CrossSiteRequest => Reason::CrossSiteRequest,
            EmailTaken => Reason::EmailTaken,
            EmailNotVerified => Reason::EmailNotVerified,
            SecondFactorRequired { .. } => Reason::SecondFactorRequired,
            InvalidSecondFactor => Reason::InvalidSecondFactor,
            ReauthenticationRequired => Reason::ReauthenticationRequired,
            InvalidInput { reason, .. } | Refused { reason, .. } => *reason,
            Forbidden(_) | BadRequest(_) | RateLimited { .. } | Unavailable(_) | Internal(_) => return None,
        })
    }

    /// A bad argument. `field` is the argument's GraphQL name.
    pub fn invalid_input(reason: Reason, field: &'static str, message: impl Into<String>) -> Self {
        AppError::InvalidInput { reason, field, message: message.into() }
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        AppError::Internal(detail.to_string())
    }

    /// What an operator is told (a start-up failure, a log line): an internal
    /// failure's own detail, which a client never sees; otherwise the message.
    pub fn detail(&self) -> String {
        match self {
            AppError::Internal(detail) => detail.clone(),
            other => other.to_string(),
        }
    }

    /// The `extensions` of this error, in the order they are written: `code`,
    /// then `reason`, `legacyCode`, `field` and `retryAfter` where they apply.
    /// The one mapping every error the server sends goes through: resolver
    /// errors, the guard's refusals and the HTTP layer's early answers.
    pub fn extensions(&self) -> Vec<(&'static str, Value)> {
        let mut ext = vec![("code", Value::from(self.code().as_str()))];
        if let Some(reason) = self.reason() {
            ext.push(("reason", Value::from(reason.as_str())));
            if let Some(legacy) = reason.legacy_code() {
                ext.push(("legacyCode", Value::from(legacy)));
            }
        }
        match self {
            AppError::InvalidInput { field, .. } => ext.push(("field", Value::from(*field))),
            AppError::EmailTaken => ext.push(("field", Value::from("email"))),
            AppError::RateLimited { retry_after } => ext.push(("retryAfter", Value::from(*retry_after))),
            AppError::SecondFactorRequired { challenge } => ext.push(("challenge", Value::from(challenge.0.as_str()))),
            _ => {}
        }
        ext
    }

    /// The error as the engine reports it from an extension (the guard).
    pub fn into_server_error(self) -> async_graphql::ServerError {
        let mut err = async_graphql::ServerError::new(self.to_string(), None);
        err.extensions = Some(self.extension_values());
        err
    }

    fn extension_values(&self) -> async_graphql::ErrorExtensionValues {
        let mut values = async_graphql::ErrorExtensionValues::default();
        for (name, value) in self.extensions() {
            values.set(name, value);
        }
        values
    }
}

/// Database failures: lost connections and pool time-outs are outages the client
/// may retry (SERVICE_UNAVAILABLE); anything else is a bug (INTERNAL).
impl From<DbErr> for AppError {
    fn from(err: DbErr) -> Self {
        if is_outage(&err) { AppError::Unavailable(err) } else { AppError::Internal(format!("database: {err}")) }
    }
}

/// Whether a database error is an outage (the database is unreachable, busy
/// or shutting down) rather than a bug, judged by the driver's error kinds,
/// never by its message:
/// - the pool gave no connection, or the connection broke (I/O, TLS, a
///   crashed SQLite worker, a closed pool);
/// - PostgreSQL SQLSTATE class 08 (connection exception), 53 (insufficient
///   resources: too many connections, out of memory or disk), 57P01 to 57P03
///   (the server is shutting down or starting), and the server ending a
///   session or transaction on a time-out (57P05, 25P03, 25P04);
/// - SQLite's primary result codes BUSY (5) and LOCKED (6) past the busy
///   timeout, IOERR (10), FULL (13) and CANTOPEN (14).
pub fn is_outage(err: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx::Error as Sqlx};
    let sqlx = match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => return true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => e,
        _ => return false,
    };
    match sqlx.as_ref() {
        Sqlx::Io(_) | Sqlx::Tls(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed => true,
        Sqlx::Database(db) => {
            let Some(code) = db.code() else { return false };
            if db.try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>().is_some() {
                // Extended result codes carry the primary code in their low byte.
                code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14))
            } else {
                code.starts_with("08")
                    || code.starts_with("53")
                    || matches!(&*code, "57P01" | "57P02" | "57P03" | "57P05" | "25P03" | "25P04")
            }
        }
        _ => false,
    }
}

impl ErrorExtensions for AppError {
    fn extend(&self) -> async_graphql::Error {
        match self {
            AppError::Internal(detail) => tracing::error!(error = %detail, "internal error"),
            AppError::Unavailable(err) => tracing::warn!(error = %err, "database unavailable"),
            _ => {}
        }
        let mut err = async_graphql::Error::new(self.to_string());
        err.extensions = Some(self.extension_values());
        err
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(err: AppError) -> Self {
        err.extend()
    }
}

pub type AppResult<T> = Result<T, AppError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's table of reasons is this enum's: set `UPDATE_README=1` to
    /// write it after adding a reason.
    #[test]
    fn reasons_table_matches_the_readme() {
        crate::readme_sections::check("reasons", &Reason::markdown_table());
    }

    #[test]
    fn every_reason_has_one_wire_name() {
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
        assert!(names.iter().all(|n| n.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')));
    }

    /// Outages are told by the driver's kinds: a pool time-out, a broken
    /// connection and SQLite's BUSY are; a constraint violation and a missing
    /// row are not.
    #[tokio::test]
    async fn outages_are_told_by_error_kind() {
        use std::sync::Arc;

        use sea_orm::{ConnectOptions, ConnectionTrait, Database, RuntimeErr, sqlx::Error as Sqlx};

        let wrap = |e: Sqlx| DbErr::Query(RuntimeErr::SqlxError(Arc::new(e)));
        assert!(is_outage(&wrap(Sqlx::PoolTimedOut)));
        assert!(is_outage(&wrap(Sqlx::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)))));
        assert!(!is_outage(&wrap(Sqlx::RowNotFound)));

        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("busy.db").display());
        // One connection each, so the pragma below holds for every statement.
        let single = || {
            let mut options = ConnectOptions::new(url.clone());
            options.max_connections(1).sqlx_logging(false);
            options
        };
        let holder = Database::connect(single()).await.unwrap();
        let other = Database::connect(single()).await.unwrap();
        holder.execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY)").await.unwrap();
        other.execute_unprepared("PRAGMA busy_timeout = 0").await.unwrap();
        // The first connection holds the write lock; the second's write is BUSY.
        holder.execute_unprepared("BEGIN IMMEDIATE").await.unwrap();
        let busy = other.execute_unprepared("INSERT INTO t (id) VALUES (1)").await.unwrap_err();
        assert!(is_outage(&busy), "{busy}");
        holder.execute_unprepared("INSERT INTO t (id) VALUES (1)").await.unwrap();
        holder.execute_unprepared("COMMIT").await.unwrap();
        let unique = other.execute_unprepared("INSERT INTO t (id) VALUES (1)").await.unwrap_err();
        assert!(!is_outage(&unique), "{unique}");
        assert!(matches!(AppError::from(unique), AppError::Internal(_)));
        assert!(matches!(AppError::from(busy), AppError::Unavailable(_)));
    }
}
