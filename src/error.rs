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
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("Cross-site request refused")]
    CrossSiteRequest,
    #[error("This email address is already registered")]
    EmailTaken,
    #[error("{message}")]
    InvalidInput { reason: &'static str, field: &'static str, message: String },
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
            InvalidCredentials | AccessTokenExpired | RefreshTokenExpired | TokenRevoked | InvalidToken
            | RefreshTokenReused | MissingToken => Code::Unauthenticated,
            Forbidden(_) | CrossSiteRequest => Code::Forbidden,
            EmailTaken | InvalidInput { .. } => Code::BadUserInput,
            RateLimited { .. } => Code::RateLimited,
            Unavailable(_) => Code::ServiceUnavailable,
            Internal(_) => Code::InternalServerError,
        }
    }

    pub fn reason(&self) -> Option<&'static str> {
        use AppError::*;
        Some(match self {
            InvalidCredentials => "INVALID_CREDENTIALS",
            AccessTokenExpired => "ACCESS_TOKEN_EXPIRED",
            RefreshTokenExpired => "REFRESH_TOKEN_EXPIRED",
            TokenRevoked => "TOKEN_REVOKED",
            InvalidToken => "INVALID_TOKEN",
            RefreshTokenReused => "REFRESH_TOKEN_REUSED",
            MissingToken => "MISSING_TOKEN",
            CrossSiteRequest => "CROSS_SITE_REQUEST",
            EmailTaken => "EMAIL_TAKEN",
            InvalidInput { reason, .. } => reason,
            Forbidden(_) | RateLimited { .. } | Unavailable(_) | Internal(_) => return None,
        })
    }

    /// The older numeric names some clients know these reasons by.
    fn legacy_code(&self) -> Option<&'static str> {
        use AppError::*;
        Some(match self {
            InvalidCredentials => "AUTH_001",
            AccessTokenExpired => "AUTH_002",
            RefreshTokenExpired => "AUTH_003",
            TokenRevoked => "AUTH_004",
            InvalidToken => "AUTH_005",
            _ => return None,
        })
    }

    pub fn invalid_input(reason: &'static str, field: &'static str, message: impl Into<String>) -> Self {
        AppError::InvalidInput { reason, field, message: message.into() }
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        AppError::Internal(detail.to_string())
    }
}

/// Database failures: lost connections and pool time-outs are outages the client
/// may retry (SERVICE_UNAVAILABLE); anything else is a bug (INTERNAL).
impl From<DbErr> for AppError {
    fn from(err: DbErr) -> Self {
        if is_outage(&err) { AppError::Unavailable(err) } else { AppError::Internal(format!("database: {err}")) }
    }
}

pub fn is_outage(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(e) | DbErr::Query(e) => {
            let s = e.to_string();
            // SQLite busy past the busy timeout, or a dropped connection mid-statement.
            s.contains("database is locked")
                || s.contains("database is busy")
                || s.contains("Connection refused")
                || s.contains("connection closed")
                || s.contains("broken pipe")
                || s.contains("terminating connection")
                || s.contains("PoolTimedOut")
                || s.contains("pool timed out")
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
        async_graphql::Error::new(self.to_string()).extend_with(|_, e| {
            e.set("code", self.code().as_str());
            if let Some(reason) = self.reason() {
                e.set("reason", reason);
            }
            if let Some(legacy) = self.legacy_code() {
                e.set("legacyCode", legacy);
            }
            match self {
                AppError::InvalidInput { field, .. } => e.set("field", *field),
                AppError::EmailTaken => e.set("field", "email"),
                AppError::RateLimited { retry_after } => e.set("retryAfter", Value::from(*retry_after)),
                _ => {}
            }
        })
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(err: AppError) -> Self {
        err.extend()
    }
}

pub type AppResult<T> = Result<T, AppError>;
