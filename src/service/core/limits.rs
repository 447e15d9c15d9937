//! Spending rate-limit budgets, so that they hold across instances.
//!
//! The in-memory limiters (`auth::rate_limit`, governor) are the first line on
//! every backend: a client past its budget on this instance is refused without
//! a database round trip. On PostgreSQL, where several instances may serve one
//! database, a call that passes them is also counted in `rate_limit_counters`
//! with one conditional upsert (GCRA: the row holds the budget's theoretical
//! arrival time), so N instances together admit what one would. Keys are
//! stored as a keyed HMAC (`OneTimeSecrets::fingerprint`), so the table holds no
//! address or IP that could be recovered without the server's secret.

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::{
    auth::rate_limit::{Action, IpKey},
    config::QuotaSpec,
    error::{AppError, AppResult},
    service::{ClientInfo, Services},
};

/// One unit of `action`'s per-client budget (`RATE_LIMIT_*_PER_IP`).
/// Errors: `RATE_LIMITED` with `retryAfter` (seconds).
pub async fn spend_ip(svc: &Services, action: Action, ip: IpKey) -> AppResult<()> {
    let spent = async {
        svc.limits.check_ip(action, ip)?;
        if svc.shared_database() {
            spend_shared(svc, &format!("{}:{ip}", action.as_str()), svc.limits.per_ip(action)).await?;
        }
        Ok(())
    }
    .await;
    if matches!(spent, Err(AppError::RateLimited { .. })) {
        svc.events.refused(action.as_str(), ip.representative());
    }
    spent
}

/// One write that checks no credential, asked for by `account` (a user's
/// id, or a service key's: `RATE_LIMIT_WRITE_PER_ACCOUNT`).
/// Errors: `RATE_LIMITED` with `retryAfter` (seconds).
pub async fn spend_write(svc: &Services, account: &str) -> AppResult<()> {
    let checked = svc.limits.check_write_account(account);
    spend_per_account(svc, checked, &format!("write:{account}"), svc.limits.write_per_account(), "write_account").await
}

/// The shared half of a per-account budget, after this instance's own
/// `checked` it: the row `shared_key` under `spec` on a shared database. A
/// refusal is tallied as `tally`, without the account (a tally names no one).
async fn spend_per_account(
    svc: &Services,
    checked: AppResult<()>,
    shared_key: &str,
    spec: crate::config::QuotaSpec,
    tally: &'static str,
) -> AppResult<()> {
    let spent = async {
        checked?;
        if svc.shared_database() {
            spend_shared(svc, shared_key, spec).await?;
        }
        Ok(())
    }
    .await;
    if matches!(spent, Err(AppError::RateLimited { .. })) {
        svc.events.refused(tally, None);
    }
    spent
}

/// One unit of an account's password-check budget
/// (`RATE_LIMIT_LOGIN_PER_ACCOUNT`), keyed by the address's key.
/// Errors: `RATE_LIMITED` with `retryAfter` (seconds).
pub async fn spend_account(svc: &Services, email_key: &str) -> AppResult<()> {
    let checked = svc.limits.check_account(email_key);
    spend_per_account(svc, checked, &format!("account:{email_key}"), svc.limits.per_account(), "account").await
}

/// One mail to the address whose key is `recipient_key`, registered or not,
/// against every quota of `RATE_LIMIT_MAIL_PER_RECIPIENT`.
/// Errors: `RATE_LIMITED` with `retryAfter` (seconds).
pub async fn spend_recipient(svc: &Services, recipient_key: &str) -> AppResult<()> {
    svc.limits.check_recipient(recipient_key)?;
    if svc.shared_database() {
        for (i, spec) in svc.limits.per_recipient().iter().enumerate() {
            spend_shared(svc, &format!("recipient{i}:{recipient_key}"), *spec).await?;
        }
    }
    Ok(())
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The database's clock in microseconds since the Unix epoch, plus parameter
/// `$n` (the service clock's offset from the system's, zero on a server). Read
/// when the row is locked, so the calls on one key see increasing times
/// whatever order their requests computed anything in, and every instance
/// reads one clock.
fn now_us(n: u8) -> String {
    format!("((EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint + ${n}::bigint)")
}

/// GCRA on a shared row: with `t` the emission interval (period / count) and
/// `burst` = count × `t`, a call at `now` is admitted when
/// `max(tat, now) + t - now <= burst`, and then moves `tat` to `max(tat, now) + t`.
async fn spend_shared(svc: &Services, key: &str, spec: QuotaSpec) -> AppResult<()> {
    let t = micros(spec.period / spec.count.get()).max(1);
    let burst = t.saturating_mul(i64::from(spec.count.get()));
    let offset = svc.clock.offset_micros();
    let key = svc.secrets.fingerprint(key);
    let pg = DbBackend::Postgres;
    let now = now_us(2);
    let admitted = svc
        .db
        .query_one_raw(Statement::from_sql_and_values(
            pg,
            format!(
                "INSERT INTO rate_limit_counters (key, tat) VALUES ($1, {now} + $3) \
                 ON CONFLICT (key) DO UPDATE SET tat = GREATEST(rate_limit_counters.tat, {now}) + $3 \
                 WHERE GREATEST(rate_limit_counters.tat, {now}) + $3 - {now} <= $4 \
                 RETURNING tat"
            ),
            [key.clone().into(), offset.into(), t.into(), burst.into()],
        ))
        .await?
        .is_some();
    if admitted {
        return Ok(());
    }
    let wait_us: i64 = svc
        .db
        .query_one_raw(Statement::from_sql_and_values(
            pg,
            format!("SELECT GREATEST(tat, {now}) + $3 - $4 - {now} AS wait FROM rate_limit_counters WHERE key = $1"),
            [key.into(), offset.into(), t.into(), burst.into()],
        ))
        .await?
        .map(|row| row.try_get("", "wait"))
        .transpose()?
        .unwrap_or(0);
    // Admitted again at `tat + t - burst`. Whole seconds, rounded up: retrying
    // after that many seconds succeeds.
    let wait_us = u64::try_from(wait_us).unwrap_or(0);
    Err(AppError::RateLimited { retry_after: wait_us.div_ceil(1_000_000).max(1) })
}

/// Spends one mail of the client's budget and one of the recipient's
/// (`RATE_LIMIT_MAIL_PER_IP`, `RATE_LIMIT_MAIL_PER_RECIPIENT`).
/// Errors: `RATE_LIMITED` with `retryAfter` (seconds).
pub async fn spend_mail(svc: &Services, client: &ClientInfo, recipient_key: &str) -> AppResult<()> {
    spend_ip(svc, Action::Mail, IpKey::from(client.ip)).await?;
    spend_recipient(svc, recipient_key).await
}

/// Spends one unit of the password-check budget (`Budget::PasswordCheck` of the GraphQL layer):
/// the client's (IPv4 address or IPv6 /64) and the account's (by its email key,
/// existing or not). Every operation that verifies a password spends it before
/// hashing, so no mutation is a way around the quota (OWASP ASVS V2.2.1);
/// `login` spends the client's unit before the address is even validated.
///
/// Errors: `RATE_LIMITED` with `retryAfter` (seconds) past either budget.
pub async fn spend_password(svc: &Services, client: &ClientInfo, email_key: &str) -> AppResult<()> {
    spend_password_client(svc, client).await?;
    spend_account(svc, email_key).await
}

/// The client's half of [`spend_password`], spent alone where the account is
/// not known yet.
pub async fn spend_password_client(svc: &Services, client: &ClientInfo) -> AppResult<()> {
    spend_ip(svc, Action::Login, IpKey::from(client.ip)).await
}

/// Deletes shared budgets that are full again (their arrival time has passed):
/// a row then says nothing a missing row would not.
pub async fn purge(svc: &Services) -> AppResult<u64> {
    if !svc.shared_database() {
        return Ok(0);
    }
    let offset = svc.clock.offset_micros();
    let res = svc
        .db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!("DELETE FROM rate_limit_counters WHERE tat < {}", now_us(1)),
            [offset.into()],
        ))
        .await?;
    Ok(res.rows_affected())
}
