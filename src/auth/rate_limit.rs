//! Rate limits on the auth mutations, counted per field call: an alias, a
//! batched operation and a lone request each count once, so GraphQL's ways of
//! packing many calls into one HTTP request do not multiply the quota. Which
//! operation spends which budget is declared in `graphql::budget`.
//!
//! Keys: the client IP (IPv6 grouped by /64, the block one subscriber gets), and
//! for password checks (`login`, `changePassword`) also the target account,
//! keyed by the address's key whether or not the account exists, so the answer
//! never tells them apart.

use std::{net::IpAddr, time::Duration};

use governor::{Quota, RateLimiter, middleware::NoOpMiddleware, state::keyed::DefaultKeyedStateStore};

use crate::{
    clock::Clock,
    config::{QuotaSpec, RateLimitConfig},
    error::AppError,
};

#[expect(clippy::expect_used, reason = "the period is at least 1 ns, and only a zero period is refused")]
fn quota(spec: &QuotaSpec) -> Quota {
    let per_cell = (spec.period / spec.count.get()).max(Duration::from_nanos(1));
    Quota::with_period(per_cell).expect("non-zero period").allow_burst(spec.count)
}

/// An IPv4 address, or the /64 an IPv6 address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    V4(u32),
    V6Net(u64),
    Unknown,
}

impl From<Option<IpAddr>> for IpKey {
    fn from(ip: Option<IpAddr>) -> Self {
        match ip.map(super::client_ip::canonical) {
            Some(IpAddr::V4(v4)) => IpKey::V4(u32::from(v4)),
            Some(IpAddr::V6(v6)) => IpKey::V6Net((u128::from(v6) >> 64) as u64),
            None => IpKey::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Login,
    Register,
    Refresh,
    /// Asking for a mail (reset, verification, address change).
    Mail,
    /// Using a mailed link's token.
    Link,
    /// A write a signed-in caller (or a service) asks for that checks no
    /// credential: a ceremony started, a factor enrolled, a session or key
    /// revoked, a profile changed. Spent per client and per account.
    Write,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Login => "login",
            Action::Register => "register",
            Action::Refresh => "refresh",
            Action::Mail => "mail",
            Action::Link => "link",
            Action::Write => "write",
        }
    }
}

impl IpKey {
    /// An address that stands for the key: the IPv4 address, the first
    /// address of the IPv6 /64, or `None`.
    pub fn representative(self) -> Option<IpAddr> {
        match self {
            IpKey::V4(a) => Some(IpAddr::V4(std::net::Ipv4Addr::from(a))),
            IpKey::V6Net(n) => Some(IpAddr::V6(std::net::Ipv6Addr::from(u128::from(n) << 64))),
            IpKey::Unknown => None,
        }
    }
}

/// `v4:…`, `v6:…` (the /64) or `unknown`: the key's text, as shared budgets store it.
impl std::fmt::Display for IpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpKey::V4(a) => write!(f, "v4:{a:08x}"),
            IpKey::V6Net(n) => write!(f, "v6:{n:016x}"),
            IpKey::Unknown => f.write_str("unknown"),
        }
    }
}

/// A keyed limiter on the service's [`Clock`].
type Limiter<K> = RateLimiter<K, DefaultKeyedStateStore<K>, Clock, NoOpMiddleware<Duration>>;

fn keyed<K: Clone + std::hash::Hash + Eq>(spec: &QuotaSpec, clock: &Clock) -> Limiter<K> {
    RateLimiter::new(quota(spec), DefaultKeyedStateStore::default(), clock.clone())
}

pub struct RateLimits {
    login_ip: Limiter<IpKey>,
    register_ip: Limiter<IpKey>,
    refresh_ip: Limiter<IpKey>,
    login_account: Limiter<String>,
    mail_ip: Limiter<IpKey>,
    link_ip: Limiter<IpKey>,
    write_ip: Limiter<IpKey>,
    /// Writes per account (a user's id, or a service key's).
    write_account: Limiter<String>,
    /// One limiter per quota of `RATE_LIMIT_MAIL_PER_RECIPIENT`.
    mail_recipient: Vec<Limiter<String>>,
    clock: Clock,
    config: RateLimitConfig,
}

impl RateLimits {
    /// The limiters of `c`, refilled by `clock`.
    pub fn new(c: &RateLimitConfig, clock: Clock) -> Self {
        Self {
            login_ip: keyed(&c.login_per_ip, &clock),
            register_ip: keyed(&c.register_per_ip, &clock),
            refresh_ip: keyed(&c.refresh_per_ip, &clock),
            login_account: keyed(&c.login_per_account, &clock),
            mail_ip: keyed(&c.mail_per_ip, &clock),
            link_ip: keyed(&c.link_per_ip, &clock),
            write_ip: keyed(&c.write_per_ip, &clock),
            write_account: keyed(&c.write_per_account, &clock),
            mail_recipient: c.mail_per_recipient.iter().map(|spec| keyed(spec, &clock)).collect(),
            clock,
            config: c.clone(),
        }
    }

    /// The quota of `action` per client.
    pub fn per_ip(&self, action: Action) -> QuotaSpec {
        match action {
            Action::Login => self.config.login_per_ip,
            Action::Register => self.config.register_per_ip,
            Action::Refresh => self.config.refresh_per_ip,
            Action::Mail => self.config.mail_per_ip,
            Action::Link => self.config.link_per_ip,
            Action::Write => self.config.write_per_ip,
        }
    }

    /// The quotas of mail per recipient.
    pub fn per_recipient(&self) -> &[QuotaSpec] {
        &self.config.mail_per_recipient
    }

    /// The quota of writes per account.
    pub fn write_per_account(&self) -> QuotaSpec {
        self.config.write_per_account
    }

    /// Counts one write asked for by the account `account` (a user's id, or
    /// a service key's).
    pub fn check_write_account(&self, account: &str) -> Result<(), AppError> {
        self.limited(self.write_account.check_key(&account.to_owned()))
    }

    /// The quota of password checks per account.
    pub fn per_account(&self) -> QuotaSpec {
        self.config.login_per_account
    }

    fn limited(&self, outcome: Result<(), governor::NotUntil<Duration>>) -> Result<(), AppError> {
        outcome.map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.elapsed());
            // Whole seconds, rounded up: retrying after that many seconds succeeds.
            AppError::RateLimited { retry_after: (wait.as_secs_f64().ceil() as u64).max(1) }
        })
    }

    /// Counts one call of `action` from `ip`.
    pub fn check_ip(&self, action: Action, ip: IpKey) -> Result<(), AppError> {
        let limiter = match action {
            Action::Login => &self.login_ip,
            Action::Register => &self.register_ip,
            Action::Refresh => &self.refresh_ip,
            Action::Mail => &self.mail_ip,
            Action::Link => &self.link_ip,
            Action::Write => &self.write_ip,
        };
        self.limited(limiter.check_key(&ip))
    }

    /// Counts one mail to the address whose key is `recipient_key`, registered
    /// or not, against every per-recipient quota.
    pub fn check_recipient(&self, recipient_key: &str) -> Result<(), AppError> {
        let key = recipient_key.to_owned();
        for limiter in &self.mail_recipient {
            self.limited(limiter.check_key(&key))?;
        }
        Ok(())
    }

    /// Counts one login attempt on the account named by `normalized_email`,
    /// existing or not.
    pub fn check_account(&self, normalized_email: &str) -> Result<(), AppError> {
        self.limited(self.login_account.check_key(&normalized_email.to_owned()))
    }

    /// Forgets keys whose quota is full again, so memory follows the number of
    /// recently active clients, not every client ever seen.
    pub fn forget_idle(&self) -> usize {
        for l in [&self.login_ip, &self.register_ip, &self.refresh_ip, &self.mail_ip, &self.link_ip, &self.write_ip] {
            l.retain_recent();
            l.shrink_to_fit();
        }
        for l in [&self.login_account, &self.write_account].into_iter().chain(&self.mail_recipient) {
            l.retain_recent();
            l.shrink_to_fit();
        }
        self.tracked_keys()
    }

    pub fn tracked_keys(&self) -> usize {
        [&self.login_ip, &self.register_ip, &self.refresh_ip, &self.mail_ip, &self.link_ip]
            .iter()
            .map(|l| l.len())
            .sum::<usize>()
            + std::iter::once(&self.login_account).chain(&self.mail_recipient).map(|l| l.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn spec(s: &str) -> QuotaSpec {
        s.parse().unwrap()
    }

    fn config(login: &str) -> RateLimitConfig {
        RateLimitConfig {
            login_per_ip: spec(login),
            register_per_ip: spec("1/1h"),
            refresh_per_ip: spec("100/1s"),
            login_per_account: spec("2/1h"),
            mail_per_ip: spec("5/1h"),
            link_per_ip: spec("5/1h"),
            write_per_ip: spec("5/1h"),
            write_per_account: spec("5/1h"),
            mail_per_recipient: vec![spec("1/1m"), spec("3/1h")],
        }
    }

    fn limits(login: &str) -> RateLimits {
        RateLimits::new(&config(login), Clock::system())
    }

    #[test]
    fn quota_specs_parse() {
        assert_eq!(spec("20/1m"), QuotaSpec { count: NonZeroU32::new(20).unwrap(), period: Duration::from_secs(60) });
        for bad in ["20", "0/1m", "x/1m", "5/0s", "5/soon", ""] {
            assert!(bad.parse::<QuotaSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_per_key_with_retry_after() {
        let l = limits("3/1h");
        let a = IpKey::from(Some("203.0.113.1".parse().unwrap()));
        let b = IpKey::from(Some("203.0.113.2".parse().unwrap()));
        for _ in 0..3 {
            l.check_ip(Action::Login, a).unwrap();
        }
        match l.check_ip(Action::Login, a) {
            Err(AppError::RateLimited { retry_after }) => assert!((1..=1200).contains(&retry_after), "{retry_after}"),
            other => panic!("expected a limit, got {other:?}"),
        }
        l.check_ip(Action::Login, b).unwrap();
        // Actions have separate budgets.
        l.check_ip(Action::Refresh, a).unwrap();
        l.check_account("x@example.com").unwrap();
        l.check_account("x@example.com").unwrap();
        assert!(l.check_account("x@example.com").is_err());
        assert!(l.check_account("y@example.com").is_ok());
    }

    #[test]
    fn ipv6_is_grouped_by_64() {
        let a = IpKey::from(Some("2001:db8:1:2::1".parse().unwrap()));
        let b = IpKey::from(Some("2001:db8:1:2:ffff::9".parse().unwrap()));
        let c = IpKey::from(Some("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            IpKey::from(Some("::ffff:192.0.2.1".parse().unwrap())),
            IpKey::from(Some("192.0.2.1".parse().unwrap()))
        );
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let control = crate::clock::ClockControl::new();
        let l = RateLimits::new(&config("5/1h"), control.clock());
        for i in 0..10_000u32 {
            let _ = l.check_ip(Action::Login, IpKey::V4(i));
        }
        assert_eq!(l.forget_idle(), 10_000, "no quota is full again yet");
        control.advance(Duration::from_secs(3600));
        assert_eq!(l.forget_idle(), 0);
    }
}
