//! Configuration: read once from the environment (and `.env`) or flags, validated
//! into typed values at start. A bad value stops the process with a message that
//! names the variable, instead of surfacing at the first request.

use std::{net::SocketAddr, num::NonZeroU32, path::PathBuf, str::FromStr, time::Duration};

use clap::{ArgAction, Args, ValueEnum};
use ipnet::IpNet;
use thiserror::Error;

use crate::{clock::Clock, secret::Secret};

/// The smallest argon2id parameters authgraph accepts (OWASP's minimum for argon2id).
pub const ARGON2_MIN_MEMORY_KIB: u32 = 19 * 1024;
pub const ARGON2_MIN_ITERATIONS: u32 = 2;
pub const JWT_SECRET_MIN_BYTES: usize = 32;

/// How often a serving instance reloads the signing keys: 30 s.
pub const KEY_REFRESH: Duration = Duration::from_secs(30);

/// How many live sessions, and as many profiles, an instance caches by
/// default (`SESSION_CACHE_CAPACITY`).
pub const SESSION_CACHE_CAPACITY: usize = 100_000;

/// How often a subscription's watcher looks at its session without being
/// told (`Services::watch_recheck`): 30 s.
pub const SESSION_WATCH_RECHECK: Duration = Duration::from_secs(30);

/// How long a verifier may cache the JWK Set (seconds; its `Cache-Control:
/// max-age`). A new key is published longer than this before it signs
/// (`JWT_KEY_LEAD_TIME` is at least this).
pub const JWKS_MAX_AGE_SECS: u64 = 300;

/// The algorithms authgraph signs access tokens with (`JWT_ALGORITHM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SigningAlgorithm {
    /// ECDSA P-256 with SHA-256: the default for a new install.
    #[value(name = "ES256")]
    Es256,
    /// Ed25519.
    #[value(name = "EdDSA")]
    EdDsa,
    /// HMAC with SHA-256 under `JWT_SECRET`: no public key to publish.
    #[value(name = "HS256")]
    Hs256,
}

impl SigningAlgorithm {
    /// The JOSE `alg` name (RFC 7518 section 3.1, RFC 8037 section 3.1).
    pub fn name(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
            Self::Hs256 => "HS256",
        }
    }

    /// The algorithm by its JOSE name.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Es256, Self::EdDsa, Self::Hs256].into_iter().find(|a| a.name() == name)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum AppEnv {
    Development,
    Production,
}

/// Where the database is. Shared by every command that touches it.
#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// SQLite (`sqlite://path?mode=rwc`, the embedded default) or `postgres://…`
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://authgraph.db?mode=rwc")]
    pub database_url: String,

    /// How long a request waits for the database before it answers SERVICE_UNAVAILABLE
    #[arg(long, env = "DATABASE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub database_timeout: Duration,

    /// Largest number of pooled database connections [default: 1 on SQLite, which
    /// writes one transaction at a time; 16 on PostgreSQL]
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS")]
    pub database_max_connections: Option<u32>,
}

/// Everything `authgraph serve` reads.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Address to serve HTTP on (port 0 picks a free port)
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8000")]
    pub listen_addr: SocketAddr,

    /// HS256 signing secret, at least 32 bytes. Without it, outside production, a
    /// random key is generated once and stored beside the database. An install
    /// that has one keeps signing HS256 unless JWT_ALGORITHM says otherwise
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Access-token signature: ES256 (the default without JWT_SECRET) or EdDSA,
    /// with key pairs generated and kept in the database (public keys at
    /// /.well-known/jwks.json), or HS256 under JWT_SECRET (the default with it)
    #[arg(long, env = "JWT_ALGORITHM", value_enum)]
    pub jwt_algorithm: Option<SigningAlgorithm>,

    /// How long a new signing key is published in the JWK Set before it signs:
    /// longer than any verifier caches the set (at least 6m: the set's 5m max-age
    /// and a minute for instances to reload it)
    #[arg(long, env = "JWT_KEY_LEAD_TIME", default_value = "15m", value_parser = parse_duration)]
    pub jwt_key_lead_time: Duration,

    /// Rotate the signing key on this schedule (e.g. 30d); unset: only on demand
    /// (`authgraph keys rotate`, the rotateSigningKey mutation)
    #[arg(long, env = "JWT_KEY_ROTATION_INTERVAL", value_parser = parse_duration)]
    pub jwt_key_rotation_interval: Option<Duration>,

    /// Add Hasura's claims to access tokens (`https://hasura.io/jwt/claims` with
    /// x-hasura-user-id, x-hasura-default-role, x-hasura-allowed-roles)
    #[arg(long, env = "JWT_HASURA_CLAIMS", default_value_t = false, action = ArgAction::Set)]
    pub jwt_hasura_claims: bool,

    /// Seals the signing keys stored in the database, at least 32 bytes; required
    /// in production with ES256 or EdDSA. Outside production, without it, the
    /// generated key beside the database seals them
    #[arg(long, env = "KEY_ENCRYPTION_SECRET", hide_env_values = true)]
    pub key_encryption_secret: Option<String>,

    /// `production` refuses a missing or weak secret and insecure cookies, and turns
    /// introspection and GraphiQL off unless enabled explicitly
    #[arg(long, env = "APP_ENV", value_enum, default_value = "development")]
    pub app_env: AppEnv,

    /// Access token lifetime (e.g. `15m`, `1h`)
    #[arg(long, env = "ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_duration)]
    pub access_token_ttl: Duration,

    /// Refresh token (session) absolute lifetime (e.g. `7d`)
    #[arg(long, env = "REFRESH_TOKEN_TTL", default_value = "7d", value_parser = parse_duration)]
    pub refresh_token_ttl: Duration,

    /// How long an already-rotated refresh token still yields the same successor
    /// (two tabs, a retry after a lost response); `0s` turns the window off
    #[arg(long, env = "REFRESH_REUSE_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub refresh_reuse_grace: Duration,

    /// End sessions unused for this long (e.g. `24h`); unset: only the absolute lifetime applies
    #[arg(long, env = "SESSION_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub session_idle_timeout: Option<Duration>,

    /// Mark cookies `Secure` (and name the refresh cookie `__Host-refresh_token`).
    /// Set `false` only for plain-http local development
    #[arg(long, env = "COOKIE_SECURE", default_value_t = true, action = ArgAction::Set)]
    pub cookie_secure: bool,

    /// Comma-separated exact origins (scheme://host[:port]) allowed to call with credentials
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',', default_value = "")]
    pub cors_allowed_origins: Vec<String>,

    /// Comma-separated CIDRs whose `X-Forwarded-For` is believed for client IPs
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', default_value = "")]
    pub trusted_proxies: Vec<String>,

    /// `iss` of issued access tokens, checked on every token, and `issuer` of
    /// /.well-known/openid-configuration. In production set it to the public
    /// base URL (https://auth.example.com), where gateways discover the keys
    #[arg(long, env = "JWT_ISSUER", default_value = "authgraph")]
    pub jwt_issuer: String,

    /// `aud` of issued access tokens, checked on every token
    #[arg(long, env = "JWT_AUDIENCE", default_value = "authgraph")]
    pub jwt_audience: String,

    /// argon2id memory cost in KiB (at least 19456)
    #[arg(long, env = "ARGON2_MEMORY_KIB", default_value_t = ARGON2_MIN_MEMORY_KIB)]
    pub argon2_memory_kib: u32,

    /// argon2id iterations (at least 2)
    #[arg(long, env = "ARGON2_ITERATIONS", default_value_t = ARGON2_MIN_ITERATIONS)]
    pub argon2_iterations: u32,

    /// argon2id parallelism (at least 1)
    #[arg(long, env = "ARGON2_PARALLELISM", default_value_t = 1)]
    pub argon2_parallelism: u32,

    /// Most password checks waiting for a hashing thread (one thread per core);
    /// past it, logins and other password checks answer RATE_LIMITED with
    /// retryAfter instead of waiting ever longer [default: 32 per core]
    #[arg(long, env = "PASSWORD_QUEUE_DEPTH")]
    pub password_queue_depth: Option<usize>,

    /// Serve GraphiQL at `/` (default: on, except in production)
    #[arg(long, env = "GRAPHIQL", action = ArgAction::Set)]
    pub graphiql: Option<bool>,

    /// Answer introspection queries (default: on, except in production)
    #[arg(long, env = "INTROSPECTION", action = ArgAction::Set)]
    pub introspection: Option<bool>,

    /// Largest accepted request body in bytes (chunked bodies included)
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Deepest accepted query
    #[arg(long, env = "QUERY_DEPTH_LIMIT", default_value_t = 15)]
    pub query_depth_limit: usize,

    /// Largest accepted query complexity (fields counted statically)
    #[arg(long, env = "QUERY_COMPLEXITY_LIMIT", default_value_t = 500)]
    pub query_complexity_limit: usize,

    /// Most operations in one array-batched request (1 turns batching off)
    #[arg(long, env = "MAX_BATCH_SIZE", default_value_t = 10)]
    pub max_batch_size: usize,

    /// Most aliases in one operation
    #[arg(long, env = "QUERY_ALIAS_LIMIT", default_value_t = 50)]
    pub query_alias_limit: usize,

    /// Logins per client IP (IPv6 per /64), as N/period
    #[arg(long, env = "RATE_LIMIT_LOGIN_PER_IP", default_value = "20/1m")]
    pub rate_limit_login_per_ip: QuotaSpec,

    /// Registrations per client IP (IPv6 per /64), as N/period
    #[arg(long, env = "RATE_LIMIT_REGISTER_PER_IP", default_value = "20/1h")]
    pub rate_limit_register_per_ip: QuotaSpec,

    /// Refreshes per client IP (IPv6 per /64), as N/period
    #[arg(long, env = "RATE_LIMIT_REFRESH_PER_IP", default_value = "120/1m")]
    pub rate_limit_refresh_per_ip: QuotaSpec,

    /// Password checks (login, changePassword) per account, known or not, as N/period
    #[arg(long, env = "RATE_LIMIT_LOGIN_PER_ACCOUNT", default_value = "100/1h")]
    pub rate_limit_login_per_account: QuotaSpec,

    /// Mail to one address (the key of a reset's, a verification's or a new
    /// address's recipient, registered or not), as comma-separated N/period
    /// quotas that must all admit it: by default one a minute and five an hour
    #[arg(long, env = "RATE_LIMIT_MAIL_PER_RECIPIENT", value_delimiter = ',', default_value = "1/1m,5/1h")]
    pub rate_limit_mail_per_recipient: Vec<QuotaSpec>,

    /// Mail asked for per client IP (IPv6 per /64): requestPasswordReset,
    /// sendVerificationEmail and address changes, as N/period
    #[arg(long, env = "RATE_LIMIT_MAIL_PER_IP", default_value = "20/1h")]
    pub rate_limit_mail_per_ip: QuotaSpec,

    /// Uses of mailed links per client IP (IPv6 per /64): verifyEmail,
    /// resetPassword and confirmEmailChange, right or wrong, as N/period
    #[arg(long, env = "RATE_LIMIT_LINK_PER_IP", default_value = "30/1h")]
    pub rate_limit_link_per_ip: QuotaSpec,

    /// Writes per client IP (IPv6 per /64) that check no credential: starting
    /// a passkey ceremony, enrolling an authenticator, revoking a session or
    /// a key, changing a profile or a role, as N/period
    #[arg(long, env = "RATE_LIMIT_WRITE_PER_IP", default_value = "300/1m")]
    pub rate_limit_write_per_ip: QuotaSpec,

    /// The same writes per account (the signed-in user, or the service key),
    /// as N/period
    #[arg(long, env = "RATE_LIMIT_WRITE_PER_ACCOUNT", default_value = "60/1m")]
    pub rate_limit_write_per_account: QuotaSpec,

    /// Base URL of the app that receives the links in mail (http or https, no
    /// query); a link is APP_URL + the purpose's path + ?token=…
    #[arg(long, env = "APP_URL", default_value = "http://127.0.0.1:8000")]
    pub app_url: String,

    /// Path of the app's page that takes a password-reset token
    #[arg(long, env = "RESET_PASSWORD_PATH", default_value = "/reset-password")]
    pub reset_password_path: String,

    /// Path of the app's page that takes an address-verification token
    #[arg(long, env = "VERIFY_EMAIL_PATH", default_value = "/verify-email")]
    pub verify_email_path: String,

    /// Path of the app's page that takes an address-change token
    #[arg(long, env = "CONFIRM_EMAIL_CHANGE_PATH", default_value = "/confirm-email-change")]
    pub confirm_email_change_path: String,

    /// How long a password-reset link works
    #[arg(long, env = "PASSWORD_RESET_TTL", default_value = "1h", value_parser = parse_duration)]
    pub password_reset_ttl: Duration,

    /// How long an address-verification link works
    #[arg(long, env = "EMAIL_VERIFICATION_TTL", default_value = "24h", value_parser = parse_duration)]
    pub email_verification_ttl: Duration,

    /// How long an address-change link works
    #[arg(long, env = "EMAIL_CHANGE_TTL", default_value = "1h", value_parser = parse_duration)]
    pub email_change_ttl: Duration,

    /// Refuse `login` (FORBIDDEN, reason EMAIL_NOT_VERIFIED) until the account's
    /// address is confirmed; registration then sends the verification mail
    #[arg(long, env = "REQUIRE_EMAIL_VERIFICATION", default_value_t = false, action = ArgAction::Set)]
    pub require_email_verification: bool,

    /// Where mail is sent, as lettre reads it: smtps://user:pass@host:465
    /// (implicit TLS), smtp://user:pass@host:587?tls=required (STARTTLS),
    /// smtp://127.0.0.1:2525 (plain, a local relay). Unset outside production:
    /// mail is written as .eml files to MAIL_DIR
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// Sender of every mail
    #[arg(long, env = "MAIL_FROM", default_value = "authgraph <no-reply@localhost>")]
    pub mail_from: String,

    /// Where mail goes as .eml files when SMTP_URL is unset [default: a folder
    /// beside the SQLite file, authgraph.db.mail/; ./authgraph.mail/ on PostgreSQL].
    /// In production, without SMTP_URL, it must be set explicitly
    #[arg(long, env = "MAIL_DIR")]
    pub mail_dir: Option<PathBuf>,

    /// A folder of mail templates that replace the built-in ones of the same
    /// name (<kind>.txt with blocks `subject` and `text`, <kind>.html; see the README)
    #[arg(long, env = "MAIL_TEMPLATES_DIR")]
    pub mail_templates_dir: Option<PathBuf>,

    /// Issuer an authenticator app shows beside a TOTP code (the otpauth:// URI's
    /// `issuer`; no colon)
    #[arg(long, env = "TOTP_ISSUER", default_value = "authgraph")]
    pub totp_issuer: String,

    /// How recent a sign-in must be for a sensitive operation (password or
    /// address change, second factors, passkeys, admin API keys and factor
    /// resets); older sessions get REAUTHENTICATION_REQUIRED
    #[arg(long, env = "REAUTHENTICATION_MAX_AGE", default_value = "10m", value_parser = parse_duration)]
    pub reauthentication_max_age: Duration,

    /// WebAuthn relying-party id: the domain passkeys are bound to (the host of
    /// every origin, or a parent domain of them) [default: the host of the
    /// first of WEBAUTHN_ORIGINS, which default to APP_URL's origin]
    #[arg(long, env = "WEBAUTHN_RP_ID")]
    pub webauthn_rp_id: Option<String>,

    /// Origins whose pages may register and use passkeys, comma-separated
    /// (each https, or http://localhost) [default: APP_URL's origin]
    #[arg(long, env = "WEBAUTHN_ORIGINS", value_delimiter = ',')]
    pub webauthn_origins: Vec<String>,

    /// Relying-party name a browser shows when it asks for a passkey
    #[arg(long, env = "WEBAUTHN_RP_NAME", default_value = "authgraph")]
    pub webauthn_rp_name: String,

    /// How long security events (me.securityEvents, auditEvents) are kept
    #[arg(long, env = "SECURITY_EVENT_RETENTION", default_value = "90d", value_parser = parse_duration)]
    pub security_event_retention: Duration,

    /// Serve Prometheus metrics (GET /metrics) on this address, apart from the
    /// public routes (e.g. 127.0.0.1:9100); unset: no metrics
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// How often expired and long-revoked sessions are purged
    #[arg(long, env = "CLEANUP_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub cleanup_interval: Duration,

    /// Live sessions (and as many user profiles) each instance keeps in memory;
    /// others are read from the database on first use
    #[arg(long, env = "SESSION_CACHE_CAPACITY", default_value_t = SESSION_CACHE_CAPACITY)]
    pub session_cache_capacity: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (expected a duration such as 30s, 15m, 12h or 7d)"))
}

/// Where the signing key comes from.
#[derive(Debug, Clone)]
pub enum JwtKeySource {
    /// `JWT_SECRET` was given.
    Configured(Secret),
    /// Development without `JWT_SECRET`: a generated key kept in this file.
    GeneratedFile(PathBuf),
}

/// An exact browser origin, `scheme://host[:port]`, lower-cased, no path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin(String);

impl Origin {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim().to_ascii_lowercase();
        let (scheme, rest) =
            s.split_once("://").ok_or_else(|| format!("`{raw}` is not an origin (expected scheme://host[:port])"))?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("`{raw}`: origin scheme must be http or https"));
        }
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '*']) {
            return Err(format!(
                "`{raw}` is not an exact origin (no path, wildcard or credentials; expected scheme://host[:port])"
            ));
        }
        Ok(Self(format!("{scheme}://{rest}")))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone)]
pub struct PasswordParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Hashing threads: one per core.
    pub threads: usize,
    /// Most hashing jobs waiting for a thread (not counting those running).
    pub queue_depth: usize,
}

/// Cores available to this process (2 when that cannot be read).
pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// Default [`PasswordParams::queue_depth`] per hashing thread: with argon2id at
/// the default cost (about 35 ms a hash) a full queue is about a second of work,
/// and a burst of 50 sign-ups on two cores still fits.
pub const PASSWORD_QUEUE_PER_THREAD: usize = 32;

/// A quota as written in the configuration: `N/period`, e.g. `20/1m` = a burst of
/// 20, refilled evenly over a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSpec {
    pub count: NonZeroU32,
    pub period: Duration,
}

impl FromStr for QuotaSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (count, period) =
            s.trim().split_once('/').ok_or_else(|| format!("`{s}` is not a quota (expected N/period, e.g. 20/1m)"))?;
        let count: u32 = count.trim().parse().map_err(|_| format!("`{s}`: N must be a positive whole number"))?;
        let count = NonZeroU32::new(count).ok_or_else(|| format!("`{s}`: N must be at least 1"))?;
        let period = humantime::parse_duration(period.trim())
            .map_err(|e| format!("`{s}`: {e} (expected a period such as 1m or 1h)"))?;
        if period.is_zero() {
            return Err(format!("`{s}`: the period must be longer than zero"));
        }
        Ok(Self { count, period })
    }
}

/// The rate limits (see `auth::rate_limit`).
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub login_per_ip: QuotaSpec,
    pub register_per_ip: QuotaSpec,
    pub refresh_per_ip: QuotaSpec,
    pub login_per_account: QuotaSpec,
    /// Mail asked for per client.
    pub mail_per_ip: QuotaSpec,
    /// Uses of mailed links per client.
    pub link_per_ip: QuotaSpec,
    /// Writes that check no credential, per client.
    pub write_per_ip: QuotaSpec,
    /// The same writes, per account (user or service key).
    pub write_per_account: QuotaSpec,
    /// Mail per recipient address: every quota must admit it.
    pub mail_per_recipient: Vec<QuotaSpec>,
}

/// Where mail goes.
#[derive(Debug, Clone)]
pub enum MailDelivery {
    /// An SMTP server (`SMTP_URL`, which may hold a password).
    Smtp(Secret),
    /// `.eml` files in this folder (development, or `MAIL_DIR` set on purpose).
    Files(PathBuf),
}

/// Second factors: TOTP's issuer, step-up age and the WebAuthn relying party.
#[derive(Debug, Clone)]
pub struct SecondFactorConfig {
    /// `TOTP_ISSUER`.
    pub totp_issuer: String,
    /// `REAUTHENTICATION_MAX_AGE`.
    pub reauthentication_max_age: Duration,
    /// `WEBAUTHN_RP_ID` (a domain, checked against every origin at start).
    pub webauthn_rp_id: String,
    /// `WEBAUTHN_ORIGINS`, parsed.
    pub webauthn_origins: Vec<url::Url>,
    pub webauthn_rp_name: String,
}

/// Whether browsers run WebAuthn on a page of `origin`: https, or http on
/// localhost (a secure context, W3C Secure Contexts §3.1), and a domain,
/// not an IP address (WebAuthn L3 §5.1.3: the RP id is a domain).
fn webauthn_origin(origin: &url::Url) -> bool {
    let host = origin.host_str().unwrap_or_default();
    let domain = matches!(origin.host(), Some(url::Host::Domain(_)));
    let local = host == "localhost" || host.ends_with(".localhost");
    domain && (origin.scheme() == "https" || (origin.scheme() == "http" && local))
}

impl SecondFactorConfig {
    /// Whether passkeys can be served: every origin is one WebAuthn runs on.
    pub fn passkeys_possible(&self) -> bool {
        self.webauthn_origins.iter().all(webauthn_origin)
    }

    /// What tests and tools use: passkeys for `http://localhost:8000`.
    pub fn local() -> Self {
        Self {
            totp_issuer: "authgraph".into(),
            reauthentication_max_age: Duration::from_secs(600),
            webauthn_rp_id: "localhost".into(),
            webauthn_origins: vec![url::Url::parse("http://localhost:8000").unwrap_or_else(|_| unreachable!())],
            webauthn_rp_name: "authgraph".into(),
        }
    }
}

/// How mail is made and sent (see `crate::mail`).
#[derive(Debug, Clone)]
pub struct MailConfig {
    pub delivery: MailDelivery,
    /// `MAIL_FROM`, as typed (checked at start).
    pub from: String,
    /// `APP_URL` without a trailing slash.
    pub app_url: String,
    pub reset_password_path: String,
    pub verify_email_path: String,
    pub confirm_email_change_path: String,
    pub password_reset_ttl: Duration,
    pub email_verification_ttl: Duration,
    pub email_change_ttl: Duration,
    pub require_verification: bool,
    pub templates_dir: Option<PathBuf>,
}

/// The validated configuration of a running server.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    /// How access tokens are signed.
    pub jwt_algorithm: SigningAlgorithm,
    /// Seals stored signing keys; `None` outside production means the server
    /// secret (`jwt_key`) seals them.
    pub key_encryption_secret: Option<Secret>,
    /// How long a new key is published before it signs.
    pub jwt_key_lead_time: Duration,
    /// Scheduled rotation, if any.
    pub jwt_key_rotation_interval: Option<Duration>,
    /// Whether access tokens carry Hasura's claims.
    pub jwt_hasura_claims: bool,
    /// How often a server reloads the signing keys (not an option: 30 s;
    /// tests shorten it).
    pub key_refresh_interval: Duration,
    pub database_timeout: Duration,
    pub database_max_connections: u32,
    pub listen_addr: SocketAddr,
    pub jwt_key: JwtKeySource,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub refresh_reuse_grace: Duration,
    pub session_idle_timeout: Option<Duration>,
    pub cookie_secure: bool,
    pub cors_allowed_origins: Vec<Origin>,
    pub trusted_proxies: Vec<IpNet>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub password: PasswordParams,
    pub graphiql: bool,
    pub introspection: bool,
    pub max_body_bytes: usize,
    pub query_depth_limit: usize,
    pub query_complexity_limit: usize,
    pub max_batch_size: usize,
    pub query_alias_limit: usize,
    pub rate_limits: RateLimitConfig,
    pub mail: MailConfig,
    pub second_factor: SecondFactorConfig,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// How long security events are kept.
    pub security_event_retention: Duration,
    /// How often a watched session (an open subscription socket) is looked at
    /// unprompted (not an option: 30 s; tests shorten it).
    pub session_watch_recheck: Duration,
    pub cleanup_interval: Duration,
    /// Live sessions (and profiles) cached per instance.
    pub session_cache_capacity: usize,
    /// The time the server's rules read: the system clock, always, from the
    /// command line; tests give a [`crate::clock::ClockControl`]'s clock.
    pub clock: Clock,
}

#[derive(Debug, Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// The signing keys' section: the algorithm, the secret that seals stored key
/// pairs, and where the server secret comes from.
struct SigningSection {
    jwt_algorithm: SigningAlgorithm,
    key_encryption_secret: Option<Secret>,
    jwt_key: JwtKeySource,
}

fn signing_section(args: &mut ServeArgs, production: bool) -> Result<SigningSection, ConfigError> {
    let jwt_algorithm = args.jwt_algorithm.unwrap_or(if args.jwt_secret.is_some() {
        SigningAlgorithm::Hs256
    } else {
        SigningAlgorithm::Es256
    });
    let key_encryption_secret = match args.key_encryption_secret.take() {
        Some(secret) if secret.len() >= JWT_SECRET_MIN_BYTES => Some(Secret::new(secret.into_bytes())),
        Some(_) => {
            return Err(bad(format!("KEY_ENCRYPTION_SECRET must be at least {JWT_SECRET_MIN_BYTES} bytes long")));
        }
        None if production && jwt_algorithm != SigningAlgorithm::Hs256 => {
            return Err(bad(format!(
                "KEY_ENCRYPTION_SECRET is required when APP_ENV=production with JWT_ALGORITHM={} \
                 (at least 32 random bytes)",
                jwt_algorithm.name()
            )));
        }
        None => None,
    };
    let jwt_key = match (args.jwt_secret.take(), &key_encryption_secret) {
        (Some(secret), _) if secret.len() >= JWT_SECRET_MIN_BYTES => {
            JwtKeySource::Configured(Secret::new(secret.into_bytes()))
        }
        (Some(_), _) => {
            return Err(bad(format!("JWT_SECRET must be at least {JWT_SECRET_MIN_BYTES} bytes long")));
        }
        // The one-time secrets' keys derive from it instead.
        (None, Some(kek)) if jwt_algorithm != SigningAlgorithm::Hs256 => JwtKeySource::Configured(kek.clone()),
        (None, _) if production => {
            return Err(bad("JWT_SECRET is required when APP_ENV=production (at least 32 random bytes)"));
        }
        (None, _) => JwtKeySource::GeneratedFile(generated_key_path(&args.db.database_url)),
    };
    Ok(SigningSection { jwt_algorithm, key_encryption_secret, jwt_key })
}

/// A duration that must be longer than zero.
fn positive(name: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() { Err(bad(format!("{name} must be longer than zero"))) } else { Ok(d) }
}

/// Lifetimes and intervals: each longer than zero, a refresh token not
/// shorter than an access token.
fn check_lifetimes(args: &ServeArgs) -> Result<(), ConfigError> {
    let access = positive("ACCESS_TOKEN_TTL", args.access_token_ttl)?;
    if positive("REFRESH_TOKEN_TTL", args.refresh_token_ttl)? < access {
        return Err(bad("REFRESH_TOKEN_TTL must not be shorter than ACCESS_TOKEN_TTL"));
    }
    positive("DATABASE_TIMEOUT", args.db.database_timeout)?;
    positive("CLEANUP_INTERVAL", args.cleanup_interval)?;
    if let Some(idle) = args.session_idle_timeout {
        positive("SESSION_IDLE_TIMEOUT", idle)?;
    }
    Ok(())
}

/// Who may call from a browser (`CORS_ALLOWED_ORIGINS`) and whose
/// `X-Forwarded-For` is believed (`TRUSTED_PROXIES`).
fn network_section(args: &ServeArgs) -> Result<(Vec<Origin>, Vec<IpNet>), ConfigError> {
    let cors_allowed_origins = args
        .cors_allowed_origins
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| Origin::parse(s).map_err(|e| bad(format!("CORS_ALLOWED_ORIGINS: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let trusted_proxies = args
        .trusted_proxies
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse_cidr(s.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((cors_allowed_origins, trusted_proxies))
}

/// argon2id's parameters (at least OWASP's minimum) and the hashing pool.
fn password_section(args: &ServeArgs) -> Result<PasswordParams, ConfigError> {
    if args.argon2_memory_kib < ARGON2_MIN_MEMORY_KIB {
        return Err(bad(format!("ARGON2_MEMORY_KIB must be at least {ARGON2_MIN_MEMORY_KIB}")));
    }
    if args.argon2_iterations < ARGON2_MIN_ITERATIONS {
        return Err(bad(format!("ARGON2_ITERATIONS must be at least {ARGON2_MIN_ITERATIONS}")));
    }
    if args.argon2_parallelism < 1 {
        return Err(bad("ARGON2_PARALLELISM must be at least 1"));
    }
    let queue_depth = match args.password_queue_depth {
        Some(0) => return Err(bad("PASSWORD_QUEUE_DEPTH must be at least 1")),
        Some(n) => n,
        None => PASSWORD_QUEUE_PER_THREAD * cores(),
    };
    Ok(PasswordParams {
        memory_kib: args.argon2_memory_kib,
        iterations: args.argon2_iterations,
        parallelism: args.argon2_parallelism,
        threads: cores(),
        queue_depth,
    })
}

/// Key rotation's schedule: a new key is published long enough before it
/// signs for every verifier to know it.
fn check_key_schedule(args: &ServeArgs) -> Result<(), ConfigError> {
    // A verifier may have fetched the set from an instance that had not yet
    // reloaded it (up to 30 s), keeps it for its max-age, and its clock
    // may be a little ahead.
    let least_lead = Duration::from_secs(JWKS_MAX_AGE_SECS) + KEY_REFRESH * 2;
    if args.jwt_key_lead_time < least_lead {
        return Err(bad(format!(
            "JWT_KEY_LEAD_TIME must be at least {}s: the JWK Set is cached {}s and reloaded every {}s, \
             and a key must be known to every verifier before it signs",
            least_lead.as_secs(),
            JWKS_MAX_AGE_SECS,
            KEY_REFRESH.as_secs()
        )));
    }
    if args.jwt_key_rotation_interval.is_some_and(|every| every <= args.jwt_key_lead_time) {
        return Err(bad("JWT_KEY_ROTATION_INTERVAL must be longer than JWT_KEY_LEAD_TIME"));
    }
    Ok(())
}

/// Sizes that must be at least something: the session cache, a batch, a
/// request body.
fn check_sizes(args: &ServeArgs) -> Result<(), ConfigError> {
    if args.session_cache_capacity < 1 {
        return Err(bad("SESSION_CACHE_CAPACITY must be at least 1"));
    }
    if args.max_batch_size < 1 {
        return Err(bad("MAX_BATCH_SIZE must be at least 1"));
    }
    if args.max_body_bytes < 1024 {
        return Err(bad("MAX_BODY_BYTES must be at least 1024"));
    }
    Ok(())
}

/// The pool's size: as given, or one on SQLite and 16 on PostgreSQL.
fn database_connections(args: &ServeArgs) -> Result<u32, ConfigError> {
    match args.db.database_max_connections {
        Some(0) => Err(bad("DATABASE_MAX_CONNECTIONS must be at least 1")),
        Some(n) => Ok(n),
        // SQLite lets one connection write at a time. More connections only wait
        // for its lock (sleeping in the busy handler) and re-read the pages each
        // other changed; one connection serves every request in turn.
        None if args.db.database_url.starts_with("sqlite:") => Ok(1),
        None => Ok(16),
    }
}

/// The budgets, as given (`RATE_LIMIT_*`).
fn rate_limits_section(args: &ServeArgs) -> Result<RateLimitConfig, ConfigError> {
    if args.rate_limit_mail_per_recipient.is_empty() {
        return Err(bad("RATE_LIMIT_MAIL_PER_RECIPIENT needs at least one N/period quota"));
    }
    Ok(RateLimitConfig {
        login_per_ip: args.rate_limit_login_per_ip,
        register_per_ip: args.rate_limit_register_per_ip,
        refresh_per_ip: args.rate_limit_refresh_per_ip,
        login_per_account: args.rate_limit_login_per_account,
        mail_per_ip: args.rate_limit_mail_per_ip,
        link_per_ip: args.rate_limit_link_per_ip,
        write_per_ip: args.rate_limit_write_per_ip,
        write_per_account: args.rate_limit_write_per_account,
        mail_per_recipient: args.rate_limit_mail_per_recipient.clone(),
    })
}

impl Config {
    /// Checks `serve`'s options section by section, in the order an operator
    /// should fix them (the database, then the secrets, then the rest), and
    /// builds the configuration. Errors: the first option that is wrong, named.
    pub fn from_args(mut args: ServeArgs) -> Result<Self, ConfigError> {
        let production = args.app_env == AppEnv::Production;
        check_database_url(&args.db.database_url)?;
        // Told after the secrets' errors, which matter more.
        let mail = mail_config(&args, production);
        let second_factor = second_factor_config(&args, &mail.as_ref().map(|m| m.app_url.clone()).unwrap_or_default());
        let signing = signing_section(&mut args, production)?;
        if production && !args.cookie_secure {
            return Err(bad("COOKIE_SECURE=false is refused when APP_ENV=production"));
        }
        check_lifetimes(&args)?;
        let (cors_allowed_origins, trusted_proxies) = network_section(&args)?;
        let password = password_section(&args)?;
        check_key_schedule(&args)?;
        check_sizes(&args)?;
        let database_max_connections = database_connections(&args)?;
        if args.jwt_issuer.is_empty() || args.jwt_audience.is_empty() {
            return Err(bad("JWT_ISSUER and JWT_AUDIENCE must not be empty"));
        }
        let (mail, second_factor) = (mail?, second_factor?);
        let rate_limits = rate_limits_section(&args)?;
        Ok(Self {
            database_url: args.db.database_url,
            jwt_algorithm: signing.jwt_algorithm,
            key_encryption_secret: signing.key_encryption_secret,
            jwt_key_lead_time: args.jwt_key_lead_time,
            jwt_key_rotation_interval: args.jwt_key_rotation_interval,
            jwt_hasura_claims: args.jwt_hasura_claims,
            key_refresh_interval: KEY_REFRESH,
            database_timeout: args.db.database_timeout,
            database_max_connections,
            listen_addr: args.listen_addr,
            jwt_key: signing.jwt_key,
            access_token_ttl: args.access_token_ttl,
            refresh_token_ttl: args.refresh_token_ttl,
            refresh_reuse_grace: args.refresh_reuse_grace,
            session_idle_timeout: args.session_idle_timeout,
            cookie_secure: args.cookie_secure,
            cors_allowed_origins,
            trusted_proxies,
            jwt_issuer: args.jwt_issuer,
            jwt_audience: args.jwt_audience,
            password,
            graphiql: args.graphiql.unwrap_or(!production),
            introspection: args.introspection.unwrap_or(!production),
            max_body_bytes: args.max_body_bytes,
            query_depth_limit: args.query_depth_limit,
            query_complexity_limit: args.query_complexity_limit,
            max_batch_size: args.max_batch_size,
            query_alias_limit: args.query_alias_limit,
            rate_limits,
            mail,
            second_factor,
            metrics_addr: args.metrics_addr,
            security_event_retention: positive("SECURITY_EVENT_RETENTION", args.security_event_retention)?,
            session_watch_recheck: SESSION_WATCH_RECHECK,
            cleanup_interval: args.cleanup_interval,
            session_cache_capacity: args.session_cache_capacity,
            clock: Clock::system(),
        })
    }

    /// The refresh cookie's name: the `__Host-` prefix makes browsers insist on
    /// `Secure`, `Path=/` and no `Domain`.
    pub fn refresh_cookie_name(&self) -> &'static str {
        if self.cookie_secure { "__Host-refresh_token" } else { "refresh_token" }
    }
}

/// The second-factor settings of `args`. Errors name the variable: an issuer
/// with a colon (the otpauth:// label's separator), a zero step-up age, an
/// origin that is not a URL, or that the relying-party id does not cover
/// (WebAuthn L3 §5.1.4: the RP id is the origin's host or a parent of it).
fn second_factor_config(args: &ServeArgs, app_url: &str) -> Result<SecondFactorConfig, ConfigError> {
    let issuer = args.totp_issuer.trim();
    if issuer.is_empty() || issuer.contains(':') {
        return Err(bad("TOTP_ISSUER must be a non-empty name without a colon"));
    }
    if args.reauthentication_max_age.is_zero() {
        return Err(bad("REAUTHENTICATION_MAX_AGE must be longer than zero"));
    }
    let parse = |name: &str, text: &str| {
        url::Url::parse(text.trim()).map_err(|e| bad(format!("{name} `{text}` is not an origin: {e}")))
    };
    let origins = if args.webauthn_origins.is_empty() {
        // APP_URL's origin: passkeys are off when it is not one WebAuthn runs on.
        vec![parse("APP_URL", app_url)?]
    } else {
        let origins =
            args.webauthn_origins.iter().map(|o| parse("WEBAUTHN_ORIGINS", o)).collect::<Result<Vec<_>, _>>()?;
        if let Some(wrong) = origins.iter().find(|o| !webauthn_origin(o)) {
            return Err(bad(format!(
                "WEBAUTHN_ORIGINS: {wrong} is not an origin browsers run WebAuthn on (https://…, or \
                 http://localhost…, with a domain rather than an IP address)"
            )));
        }
        origins
    };
    let rp_id = match &args.webauthn_rp_id {
        Some(id) => id.trim().to_ascii_lowercase(),
        None => origins[0].host_str().unwrap_or_default().to_owned(),
    };
    for origin in &origins {
        let host = origin.host_str().unwrap_or_default();
        if host != rp_id && !host.ends_with(&format!(".{rp_id}")) {
            return Err(bad(format!(
                "WEBAUTHN_RP_ID `{rp_id}` is neither the host of the origin {origin} nor a parent domain of it \
                 (set WEBAUTHN_RP_ID, or WEBAUTHN_ORIGINS)"
            )));
        }
    }
    Ok(SecondFactorConfig {
        totp_issuer: issuer.to_owned(),
        reauthentication_max_age: args.reauthentication_max_age,
        webauthn_rp_id: rp_id,
        webauthn_origins: origins,
        webauthn_rp_name: args.webauthn_rp_name.clone(),
    })
}

/// The mail settings of `args`. Errors name the variable: a malformed
/// `APP_URL` or path, a zero lifetime, and, in production, neither `SMTP_URL`
/// nor an explicit `MAIL_DIR` (mail would silently go nowhere useful).
fn mail_config(args: &ServeArgs, production: bool) -> Result<MailConfig, ConfigError> {
    let app_url = args.app_url.trim().trim_end_matches('/').to_owned();
    let Some((scheme, rest)) = app_url.split_once("://") else {
        return Err(bad(format!("APP_URL `{}` is not a URL (expected https://app.example.com)", args.app_url)));
    };
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(['?', '#', ' ', '@']) {
        return Err(bad(format!(
            "APP_URL `{}` must be an http or https URL without credentials, query or fragment",
            args.app_url
        )));
    }
    for (name, path) in [
        ("RESET_PASSWORD_PATH", &args.reset_password_path),
        ("VERIFY_EMAIL_PATH", &args.verify_email_path),
        ("CONFIRM_EMAIL_CHANGE_PATH", &args.confirm_email_change_path),
    ] {
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            return Err(bad(format!("{name} `{path}` must be a path starting with / (no query or fragment)")));
        }
    }
    for (name, ttl) in [
        ("PASSWORD_RESET_TTL", args.password_reset_ttl),
        ("EMAIL_VERIFICATION_TTL", args.email_verification_ttl),
        ("EMAIL_CHANGE_TTL", args.email_change_ttl),
    ] {
        if ttl < Duration::from_secs(60) {
            return Err(bad(format!("{name} must be at least 1m")));
        }
    }
    if let Some(url) = args.smtp_url.as_deref().map(str::trim).filter(|u| !u.is_empty())
        && production
        && sends_password_in_clear(url)
    {
        return Err(bad(
            "SMTP_URL has a password but no TLS: use smtps://… (implicit TLS) or smtp://…?tls=required (STARTTLS) \
             when APP_ENV=production, so the password is never sent in clear",
        ));
    }
    if let Some(dir) = &args.mail_templates_dir
        && !dir.is_dir()
    {
        return Err(bad(format!("MAIL_TEMPLATES_DIR {} is not a folder", dir.display())));
    }
    let delivery = match (&args.smtp_url, &args.mail_dir) {
        (Some(url), _) if !url.trim().is_empty() => MailDelivery::Smtp(Secret::new(url.trim().as_bytes().to_vec())),
        (_, Some(dir)) => MailDelivery::Files(dir.clone()),
        (_, None) if production => {
            return Err(bad(
                "SMTP_URL is required when APP_ENV=production (password resets and verification mail need it); \
                 set MAIL_DIR instead to have mail written as files on purpose",
            ));
        }
        (_, None) => MailDelivery::Files(default_mail_dir(&args.db.database_url)),
    };
    Ok(MailConfig {
        delivery,
        from: args.mail_from.clone(),
        app_url,
        reset_password_path: args.reset_password_path.clone(),
        verify_email_path: args.verify_email_path.clone(),
        confirm_email_change_path: args.confirm_email_change_path.clone(),
        password_reset_ttl: args.password_reset_ttl,
        email_verification_ttl: args.email_verification_ttl,
        email_change_ttl: args.email_change_ttl,
        require_verification: args.require_email_verification,
        templates_dir: args.mail_templates_dir.clone(),
    })
}

impl MailConfig {
    /// The defaults, with mail written to `dir` (tests, tools).
    pub fn files(dir: PathBuf) -> Self {
        Self {
            delivery: MailDelivery::Files(dir),
            from: "authgraph <no-reply@localhost>".into(),
            app_url: "http://127.0.0.1:8000".into(),
            reset_password_path: "/reset-password".into(),
            verify_email_path: "/verify-email".into(),
            confirm_email_change_path: "/confirm-email-change".into(),
            password_reset_ttl: Duration::from_secs(3600),
            email_verification_ttl: Duration::from_secs(24 * 3600),
            email_change_ttl: Duration::from_secs(3600),
            require_verification: false,
            templates_dir: None,
        }
    }
}

/// Whether an `smtp://` URL carries credentials without requiring TLS
/// (`tls=required`): lettre would then log in over a plain connection, or
/// over one an attacker on the path can keep plain (`tls=opportunistic`).
fn sends_password_in_clear(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("smtp://") else { return false };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    authority.contains('@') && !query.split('&').any(|pair| pair == "tls=required")
}

/// The host and port of an SMTP URL, for the log: never its credentials.
pub fn smtp_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    authority.rsplit_once('@').map_or(authority, |(_, host)| host).to_owned()
}

/// Development mail's folder: beside the SQLite file (`authgraph.db.mail/`),
/// or `authgraph.mail/` in the working directory.
fn default_mail_dir(database_url: &str) -> PathBuf {
    match sqlite_file(database_url) {
        Some(path) => PathBuf::from(format!("{}.mail", path.display())),
        None => PathBuf::from("authgraph.mail"),
    }
}

pub fn check_database_url(url: &str) -> Result<(), ConfigError> {
    if url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(())
    } else {
        Err(bad("DATABASE_URL must start with sqlite: or postgres:// (e.g. sqlite://authgraph.db?mode=rwc)"))
    }
}

fn parse_cidr(s: &str) -> Result<IpNet, ConfigError> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| bad(format!("TRUSTED_PROXIES: `{s}` is not a CIDR (e.g. 10.0.0.0/8) or IP address")))
}

/// The file named by a SQLite `DATABASE_URL`; `None` for PostgreSQL and
/// `sqlite::memory:`.
pub fn sqlite_file(database_url: &str) -> Option<PathBuf> {
    let rest = database_url.strip_prefix("sqlite:")?;
    let path = rest.trim_start_matches("//").split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// The file that keeps a generated development key: beside the SQLite file, or
/// in the working directory for PostgreSQL and in-memory SQLite.
fn generated_key_path(database_url: &str) -> PathBuf {
    match sqlite_file(database_url) {
        Some(path) => PathBuf::from(format!("{}.jwt-key", path.display())),
        None => PathBuf::from("authgraph.jwt-key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["authgraph"];
        argv.extend_from_slice(args);
        let t = T::try_parse_from(argv).map_err(|e| e.to_string())?;
        Config::from_args(t.serve).map_err(|e| e.to_string())
    }

    #[test]
    fn origins_must_be_exact() {
        assert_eq!(Origin::parse("https://App.example.com").unwrap().as_str(), "https://app.example.com");
        assert!(Origin::parse("https://app.example.com/path").is_err());
        assert!(Origin::parse("*").is_err());
        assert!(Origin::parse("https://*.example.com").is_err());
        assert!(Origin::parse("ftp://x").is_err());
        assert!(Origin::parse("example.com").is_err());
    }

    #[test]
    fn generated_key_lives_beside_the_sqlite_file() {
        assert_eq!(generated_key_path("sqlite://data/auth.db?mode=rwc"), PathBuf::from("data/auth.db.jwt-key"));
        assert_eq!(generated_key_path("postgres://x/y"), PathBuf::from("authgraph.jwt-key"));
    }

    #[test]
    fn rejects_bad_values_with_the_variable_named() {
        let e = parse(&["--access-token-ttl", "soon"]).unwrap_err();
        assert!(e.contains("expected a duration"), "{e}");
        let e = parse(&["--trusted-proxies", "10.0.0.0/33"]).unwrap_err();
        assert!(e.contains("TRUSTED_PROXIES"), "{e}");
        let e = parse(&["--cors-allowed-origins", "https://a.example/x"]).unwrap_err();
        assert!(e.contains("CORS_ALLOWED_ORIGINS"), "{e}");
        let e = parse(&["--jwt-secret", "short"]).unwrap_err();
        assert!(e.contains("at least 32 bytes"), "{e}");
        assert!(!e.contains("short"), "the secret must not be echoed: {e}");
        let e = parse(&["--argon2-memory-kib", "1024"]).unwrap_err();
        assert!(e.contains("ARGON2_MEMORY_KIB"), "{e}");
        let e = parse(&["--rate-limit-login-per-ip", "lots"]).unwrap_err();
        assert!(e.contains("N/period"), "{e}");
        let e = parse(&["--database-url", "mysql://x"]).unwrap_err();
        assert!(e.contains("DATABASE_URL"), "{e}");
    }

    #[test]
    fn pool_size_follows_the_database() {
        assert_eq!(parse(&[]).unwrap().database_max_connections, 1);
        let pg = ["--database-url", "postgres://x/y"];
        assert_eq!(parse(&pg).unwrap().database_max_connections, 16);
        let c = parse(&[&pg[..], &["--database-max-connections", "4"]].concat()).unwrap();
        assert_eq!(c.database_max_connections, 4);
        let e = parse(&["--database-max-connections", "0"]).unwrap_err();
        assert!(e.contains("DATABASE_MAX_CONNECTIONS"), "{e}");
    }

    #[test]
    fn production_refuses_missing_secret_and_insecure_cookies() {
        // A new install signs ES256: production needs the key-encryption secret.
        let e = parse(&["--app-env", "production"]).unwrap_err();
        assert!(e.contains("KEY_ENCRYPTION_SECRET is required"), "{e}");
        let e = parse(&["--app-env", "production", "--jwt-algorithm", "HS256"]).unwrap_err();
        assert!(e.contains("JWT_SECRET is required"), "{e}");
        let kek = "k".repeat(40);
        let smtp = ["--smtp-url", "smtp://127.0.0.1:25"];
        let c = parse(&[&["--app-env", "production", "--key-encryption-secret", &kek][..], &smtp].concat()).unwrap();
        assert_eq!(c.jwt_algorithm, SigningAlgorithm::Es256);
        let e = parse(&["--app-env", "production", "--key-encryption-secret", "short"]).unwrap_err();
        assert!(e.contains("KEY_ENCRYPTION_SECRET must be at least"), "{e}");
        let secret = "s".repeat(40);
        let e = parse(&["--app-env", "production", "--jwt-secret", &secret, "--cookie-secure", "false"]).unwrap_err();
        assert!(e.contains("COOKIE_SECURE"), "{e}");
        let c = parse(&[&["--app-env", "production", "--jwt-secret", &secret][..], &smtp].concat()).unwrap();
        assert!(!c.graphiql && !c.introspection);
        let c =
            parse(&[&["--app-env", "production", "--jwt-secret", &secret, "--graphiql", "true"][..], &smtp].concat())
                .unwrap();
        assert!(c.graphiql);
    }

    #[test]
    fn production_needs_somewhere_to_send_mail() {
        let secret = "s".repeat(40);
        let prod = ["--app-env", "production", "--jwt-secret", &secret];
        let e = parse(&prod).unwrap_err();
        assert!(e.contains("SMTP_URL is required"), "{e}");
        let c = parse(&[&prod[..], &["--mail-dir", "/var/mail/authgraph"]].concat()).unwrap();
        assert!(matches!(c.mail.delivery, MailDelivery::Files(_)));
        let c = parse(&[&prod[..], &["--smtp-url", "smtps://u:hunter2@mail.example.com"]].concat()).unwrap();
        assert!(matches!(c.mail.delivery, MailDelivery::Smtp(_)));
        assert!(!format!("{c:?}").contains("hunter2"), "the SMTP password is not in Debug");
        // Development without SMTP: files beside the database.
        let c = parse(&["--database-url", "sqlite://data/auth.db?mode=rwc"]).unwrap();
        assert!(matches!(c.mail.delivery, MailDelivery::Files(ref d) if d == &PathBuf::from("data/auth.db.mail")));
    }

    #[test]
    fn production_sends_no_smtp_password_in_clear() {
        let secret = "s".repeat(40);
        let prod = ["--app-env", "production", "--jwt-secret", &secret, "--smtp-url"];
        for refused in ["smtp://u:p@mail.example.com:587", "smtp://u:p@mail.example.com:587?tls=opportunistic"] {
            let e = parse(&[&prod[..], &[refused]].concat()).unwrap_err();
            assert!(e.contains("no TLS") && !e.contains("u:p"), "{refused}: {e}");
        }
        for taken in
            ["smtps://u:p@mail.example.com", "smtp://u:p@mail.example.com:587?tls=required", "smtp://127.0.0.1:25"]
        {
            assert!(parse(&[&prod[..], &[taken]].concat()).is_ok(), "{taken}");
        }
        // Development may use a local sink with a password.
        assert!(parse(&["--smtp-url", "smtp://u:p@127.0.0.1:2525"]).is_ok());
        assert_eq!(smtp_host("smtps://user:pa@ss@mail.example.com:465/ehlo"), "mail.example.com:465");
        let e = parse(&["--mail-templates-dir", "/no/such/folder"]).unwrap_err();
        assert!(e.contains("MAIL_TEMPLATES_DIR"), "{e}");
    }

    #[test]
    fn mail_settings_are_checked() {
        for (args, var) in [
            (&["--app-url", "app.example.com"][..], "APP_URL"),
            (&["--app-url", "https://app.example.com/?x=1"], "APP_URL"),
            (&["--reset-password-path", "reset"], "RESET_PASSWORD_PATH"),
            (&["--email-change-ttl", "0s"], "EMAIL_CHANGE_TTL"),
            (&["--rate-limit-mail-per-recipient", "1/1m,lots"], "N/period"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(var), "{args:?}: {e}");
        }
        let c = parse(&["--app-url", "https://app.example.com/"]).unwrap();
        assert_eq!(c.mail.app_url, "https://app.example.com");
        assert_eq!(c.rate_limits.mail_per_recipient.len(), 2, "one a minute and five an hour by default");
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.access_token_ttl, Duration::from_secs(15 * 60));
        assert_eq!(c.refresh_token_ttl, Duration::from_secs(7 * 24 * 3600));
        assert!(c.cookie_secure);
        assert_eq!(c.refresh_cookie_name(), "__Host-refresh_token");
        assert!(matches!(c.jwt_key, JwtKeySource::GeneratedFile(_)));
        assert_eq!(c.jwt_algorithm, SigningAlgorithm::Es256, "a new install signs ES256");
        // An install that has JWT_SECRET keeps HS256 unless told otherwise.
        let secret = "s".repeat(40);
        assert_eq!(parse(&["--jwt-secret", &secret]).unwrap().jwt_algorithm, SigningAlgorithm::Hs256);
        let c = parse(&["--jwt-secret", &secret, "--jwt-algorithm", "EdDSA"]).unwrap();
        assert_eq!(c.jwt_algorithm, SigningAlgorithm::EdDsa);
        assert!(format!("{:?}", Secret::new(b"topsecret".to_vec())).contains("redacted"));
    }

    /// Passkeys: the origins must be ones browsers run WebAuthn on, and the
    /// relying-party id must cover every one; an APP_URL that is not one
    /// leaves passkeys off rather than stopping the server.
    #[test]
    fn webauthn_settings_are_checked() {
        for (args, var) in [
            (&["--webauthn-origins", "http://myapp.test:3000"][..], "WEBAUTHN_ORIGINS"),
            (&["--webauthn-origins", "https://10.0.0.1"], "WEBAUTHN_ORIGINS"),
            (&["--webauthn-origins", "https://app.example.com", "--webauthn-rp-id", "other.com"], "WEBAUTHN_RP_ID"),
            (&["--totp-issuer", "Acme: Inc"], "TOTP_ISSUER"),
            (&["--reauthentication-max-age", "0s"], "REAUTHENTICATION_MAX_AGE"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(var), "{args:?}: {e}");
        }
        let c = parse(&["--app-url", "https://app.example.com"]).unwrap();
        assert_eq!(c.second_factor.webauthn_rp_id, "app.example.com");
        assert!(c.second_factor.passkeys_possible());
        let c = parse(&[
            "--webauthn-origins",
            "https://app.example.com,https://admin.example.com",
            "--webauthn-rp-id",
            "example.com",
        ])
        .unwrap();
        assert_eq!(c.second_factor.webauthn_origins.len(), 2);
        let c = parse(&["--app-url", "http://localhost:5173"]).unwrap();
        assert!(c.second_factor.passkeys_possible());
        for url in ["http://127.0.0.1:8000", "http://myapp.test"] {
            let c = parse(&["--app-url", url]).unwrap();
            assert!(!c.second_factor.passkeys_possible(), "{url}");
        }
    }
}
