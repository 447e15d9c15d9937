//! What an instance keeps in memory about sessions: a bounded cache of live
//! sessions and of their users' profiles, and a short memory of what changed.
//!
//! Every authenticated request asks it, so a hit is a lookup instead of a
//! database round trip; a miss reads the database (`super::read_through`) and
//! fills the cache. The database stays the source of truth, and only the
//! session store (`super`) changes what the registry holds: [`SessionRegistry::apply`]
//! is visible to it alone. The memory used is bounded by the caches'
//! capacity and by the number of changes within one window, never by the
//! number of live sessions.
//!
//! Two rules keep a cache from serving what the database no longer says:
//! - An ended session is remembered (a tombstone) for the window, and a
//!   `Started` for it is ignored meanwhile, so a login or refresh that
//!   committed before a revocation but tells the registry after it cannot
//!   bring the session back. The window is longer than an access token lives
//!   (`ACCESS_TOKEN_TTL`): once it has passed, no token of the session is left
//!   that a late entry could let through.
//! - Every fill carries a [`Ticket`] taken before its database read. A change
//!   of a user applied after the ticket (role, profile, password, deletion)
//!   refuses that user's profile from the read, which may predate the change;
//!   so does a ticket older than the oldest change still remembered.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use entity::user::Role;
use quick_cache::sync::Cache;

use crate::domain::{Account, SessionId, UserId};

/// A change of what the registry holds, applied after its commit.
#[derive(Debug, Clone)]
pub(super) enum SessionEvent {
    /// A session is live for `user_id` until `expires_at` (Unix seconds), as
    /// written by a transaction that began at `ticket`. Ignored for a session
    /// that has ended.
    Started { session_id: SessionId, user_id: UserId, expires_at: i64, ticket: Ticket },
    /// A session ended (revoked, or its user deleted): refused from now on, and
    /// remembered (until `expires_at` at most) so that no late `Started`
    /// revives it.
    Ended { session_id: SessionId, expires_at: i64 },
    /// The user's row changed (profile, role, password): the cached copy goes.
    UserUpdated { user_id: UserId },
    /// The user is gone (their sessions end by their own `Ended` events).
    UserDeleted { user_id: UserId },
}

/// The registry's position before a database read: a fill made from that read
/// is refused for whatever changed after it (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// How many live sessions, and as many profiles, an instance keeps by default.
pub use crate::config::SESSION_CACHE_CAPACITY as DEFAULT_CAPACITY;

/// How much longer than an access token lives an end is remembered (seconds):
/// room for the time between a session's commit and the signing of its token.
pub const WINDOW_MARGIN_SECS: i64 = 5 * 60;

pub struct SessionRegistry {
    /// Tells watchers (live session events) of every end and user change.
    notices: tokio::sync::broadcast::Sender<Notice>,
    sessions: Cache<SessionId, Live>,
    profiles: Cache<UserId, Arc<Account>>,
    /// Taken for every change and fill; lookups that hit do not take it.
    marks: RwLock<Marks>,
    /// How long ended sessions and changed users are remembered (seconds).
    window: i64,
}

/// What the registry tells its watchers, once the change is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The session ended.
    Ended(SessionId),
    /// The user changed (a role, a profile) or was deleted.
    UserChanged(UserId),
    /// Everything was forgotten: what a watcher knows must be read again.
    Cleared,
}

#[derive(Debug, Clone, Copy)]
struct Live {
    user_id: UserId,
    expires_at: i64,
}

/// When something was remembered: the registry's position then, and until
/// when (Unix seconds) it is kept.
#[derive(Debug, Clone, Copy)]
struct Mark {
    epoch: u64,
    until: i64,
}

#[derive(Default)]
struct Marks {
    /// Moves on with every change applied.
    epoch: u64,
    /// Fills with a ticket below this are refused: a change after such a
    /// ticket may have been forgotten already.
    floor: u64,
    ended: HashMap<SessionId, Mark>,
    changed: HashMap<UserId, Mark>,
    /// The size of `ended` and `changed` together at which they are pruned
    /// next (amortised: twice the size after the last prune).
    prune_at: usize,
}

/// What the registry knows of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Live, and its user's current role.
    Live(Role),
    /// Ended, expired, or not this user's.
    Ended,
    /// Not in memory (never seen, or evicted, or its user's profile is not):
    /// the database must say.
    Unknown,
}

impl Default for SessionRegistry {
    fn default() -> Self {
        Self::for_access_tokens(DEFAULT_CAPACITY, std::time::Duration::from_secs(15 * 60))
    }
}

impl SessionRegistry {
    /// A registry that keeps up to `capacity` live sessions and as many
    /// profiles, and remembers ends and user changes for `window_secs`
    /// seconds (at least the access-token lifetime, plus a margin).
    pub fn new(capacity: usize, window_secs: i64) -> Self {
        let capacity = capacity.max(1);
        Self {
            notices: tokio::sync::broadcast::channel(1024).0,
            sessions: Cache::new(capacity),
            profiles: Cache::new(capacity),
            marks: RwLock::new(Marks { prune_at: 1024, ..Marks::default() }),
            window: window_secs.max(1),
        }
    }

    /// A registry for access tokens that live `access_ttl`: ends and changes
    /// are remembered for that long plus [`WINDOW_MARGIN_SECS`].
    pub fn for_access_tokens(capacity: usize, access_ttl: std::time::Duration) -> Self {
        let ttl = i64::try_from(access_ttl.as_secs()).unwrap_or(i64::MAX / 2);
        Self::new(capacity, ttl.saturating_add(WINDOW_MARGIN_SECS))
    }

    /// What is known in memory of `session_id` as a session of `user_id` at
    /// `now` (Unix seconds).
    pub fn lookup(&self, session_id: SessionId, user_id: UserId, now: i64) -> Lookup {
        let Some(live) = self.sessions.get(&session_id) else {
            return if self.marks().ended.contains_key(&session_id) { Lookup::Ended } else { Lookup::Unknown };
        };
        if live.user_id != user_id || live.expires_at <= now {
            return Lookup::Ended;
        }
        self.profiles.get(&user_id).map_or(Lookup::Unknown, |p| Lookup::Live(p.role))
    }

    /// The cached profile of a user, if any.
    pub fn profile(&self, user_id: UserId) -> Option<Arc<Account>> {
        self.profiles.get(&user_id)
    }

    /// The position to take before a database read whose result will fill
    /// the registry.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.marks().epoch)
    }

    /// Caches `profile`, read from the database after `ticket`, unless its
    /// user changed since (see the module comment).
    pub(super) fn fill_profile(&self, ticket: Ticket, profile: Arc<Account>) {
        let marks = self.marks_mut();
        if fresh(&marks, ticket) && marks.changed.get(&profile.id).is_none_or(|m| m.epoch <= ticket.0) {
            self.profiles.insert(profile.id, profile);
        }
    }

    fn marks(&self) -> std::sync::RwLockReadGuard<'_, Marks> {
        self.marks.read().unwrap_or_else(|e| e.into_inner())
    }

    fn marks_mut(&self) -> std::sync::RwLockWriteGuard<'_, Marks> {
        self.marks.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets every cached session and profile (the change log was pruned
    /// past this instance's position: some changes were missed). Ends and
    /// changes stay remembered, and reads begun before are refused.
    pub(super) fn clear(&self) {
        let mut marks = self.marks_mut();
        marks.epoch += 1;
        marks.floor = marks.epoch;
        self.sessions.clear();
        self.profiles.clear();
        let _ = self.notices.send(Notice::Cleared);
    }

    /// Applies one change at `now` (Unix seconds).
    pub(super) fn apply(&self, event: SessionEvent, now: i64) {
        let mut marks = self.marks_mut();
        match event {
            SessionEvent::Started { session_id, user_id, expires_at, ticket } => {
                if fresh(&marks, ticket) && !marks.ended.contains_key(&session_id) && expires_at > now {
                    self.sessions.insert(session_id, Live { user_id, expires_at });
                }
                return;
            }
            SessionEvent::Ended { session_id, expires_at } => {
                marks.epoch += 1;
                self.sessions.remove(&session_id);
                let mark = Mark { epoch: marks.epoch, until: (now + self.window).min(expires_at.max(now)) };
                marks.ended.insert(session_id, mark);
                // No receiver is no error: nobody watches.
                let _ = self.notices.send(Notice::Ended(session_id));
            }
            SessionEvent::UserUpdated { user_id } | SessionEvent::UserDeleted { user_id } => {
                marks.epoch += 1;
                self.profiles.remove(&user_id);
                let mark = Mark { epoch: marks.epoch, until: now + self.window };
                marks.changed.insert(user_id, mark);
                let _ = self.notices.send(Notice::UserChanged(user_id));
            }
        }
        if marks.ended.len() + marks.changed.len() >= marks.prune_at {
            prune_marks(&mut marks, now);
        }
    }

    /// Drops cached sessions past their end, and what is remembered past its
    /// window. Returns how many cached sessions went.
    pub(super) fn prune_expired(&self, now: i64) -> usize {
        prune_marks(&mut self.marks_mut(), now);
        let before = self.sessions.len();
        self.sessions.retain(|_, live| live.expires_at > now);
        before.saturating_sub(self.sessions.len())
    }

    /// Notices of every change applied from now on. A receiver that lags
    /// behind loses the oldest (and learns it did): it must read again.
    pub fn watch(&self) -> tokio::sync::broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// How many watchers (open `sessionEvents` subscriptions) this instance
    /// holds now (the metrics).
    pub fn watchers(&self) -> usize {
        self.notices.receiver_count()
    }

    /// How many sessions are cached (the metrics).
    pub fn sessions_cached(&self) -> usize {
        self.sessions.len()
    }

    /// How many sessions and profiles are cached (tests).
    #[cfg(test)]
    pub fn cached(&self) -> (usize, usize) {
        (self.sessions.len(), self.profiles.len())
    }

    /// How many ends and user changes are remembered (tests).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        let marks = self.marks();
        marks.ended.len() + marks.changed.len()
    }
}

/// Whether a fill from a read after `ticket` may still be trusted.
fn fresh(marks: &Marks, ticket: Ticket) -> bool {
    ticket.0 >= marks.floor
}

fn prune_marks(marks: &mut Marks, now: i64) {
    let mut floor = marks.floor;
    let mut keep = |m: &Mark| {
        if m.until > now {
            return true;
        }
        floor = floor.max(m.epoch);
        false
    };
    marks.ended.retain(|_, m| keep(m));
    marks.changed.retain(|_, m| keep(m));
    marks.floor = floor;
    marks.prune_at = (2 * (marks.ended.len() + marks.changed.len())).max(1024);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Email;

    fn account(id: UserId, role: Role) -> Arc<Account> {
        let now = chrono::Utc::now();
        Arc::new(Account {
            id,
            email: Email::from_parts("a@example.com".into(), "a@example.com".into()),
            name: "A".into(),
            role,
            created_at: now,
            updated_at: now,
            last_login_at: None,
            email_verified_at: None,
        })
    }

    fn start(r: &SessionRegistry, user_id: UserId, expires_at: i64) -> SessionId {
        let session_id = SessionId::new();
        r.apply(SessionEvent::Started { session_id, user_id, expires_at, ticket: r.ticket() }, 0);
        session_id
    }

    /// A read of a user begun before a change of that user (a demotion) and
    /// finished after it must not put the old copy back.
    #[test]
    fn a_profile_read_before_a_change_is_not_cached() {
        let r = SessionRegistry::default();
        let id = UserId::new();
        let s = start(&r, id, 100);
        let before = r.ticket();
        r.apply(SessionEvent::UserUpdated { user_id: id }, 0);
        r.fill_profile(before, account(id, Role::Admin));
        assert_eq!(r.lookup(s, id, 10), Lookup::Unknown, "the stale copy was cached");
        let after = r.ticket();
        r.fill_profile(after, account(id, Role::User));
        assert_eq!(r.lookup(s, id, 10), Lookup::Live(Role::User));
        // A change of another user does not refuse this one's read.
        let other = UserId::new();
        let t = r.ticket();
        r.apply(SessionEvent::UserUpdated { user_id: other }, 0);
        r.fill_profile(t, account(id, Role::Admin));
        assert_eq!(r.lookup(s, id, 10), Lookup::Live(Role::Admin));
    }

    #[test]
    fn tracks_revocation_users_and_expiry() {
        let r = SessionRegistry::default();
        let (alice, bob) = (UserId::new(), UserId::new());
        let a1 = start(&r, alice, 100);
        let a2 = start(&r, alice, 100);
        let b1 = start(&r, bob, 100);
        assert_eq!(r.lookup(a1, alice, 10), Lookup::Unknown, "no profile yet");
        r.fill_profile(r.ticket(), account(alice, Role::User));
        r.fill_profile(r.ticket(), account(bob, Role::User));
        assert_eq!(r.lookup(a1, alice, 10), Lookup::Live(Role::User));
        // A session id presented with another user's id is not accepted.
        assert_eq!(r.lookup(a1, bob, 10), Lookup::Ended);
        assert_eq!(r.lookup(a1, alice, 100), Lookup::Ended, "expired at its end");

        r.apply(SessionEvent::Ended { session_id: a1, expires_at: 100 }, 0);
        assert_eq!(r.lookup(a1, alice, 10), Lookup::Ended);
        assert_eq!(r.lookup(a2, alice, 10), Lookup::Live(Role::User));

        r.apply(SessionEvent::UserDeleted { user_id: alice }, 0);
        assert!(r.profile(alice).is_none());
        assert_eq!(r.lookup(a2, alice, 10), Lookup::Unknown, "the database must say");
        assert_eq!(r.lookup(b1, bob, 10), Lookup::Live(Role::User));

        start(&r, bob, 5);
        assert_eq!(r.prune_expired(50), 1);
        assert_eq!(r.cached().0, 2);
    }

    /// A `Started` that arrives after its session's end (the login committed
    /// before the revocation, and told the registry after it) is ignored for
    /// the whole window.
    #[test]
    fn an_ended_session_never_starts_again_within_the_window() {
        let r = SessionRegistry::new(10, 60);
        let alice = UserId::new();
        let late = SessionId::new();
        let ticket = r.ticket();
        r.apply(SessionEvent::Ended { session_id: late, expires_at: 10_000 }, 0);
        r.apply(SessionEvent::Started { session_id: late, user_id: alice, expires_at: 10_000, ticket }, 59);
        r.fill_profile(r.ticket(), account(alice, Role::User));
        assert_eq!(r.lookup(late, alice, 59), Lookup::Ended);
        // Past the window the end is forgotten, and so is every read begun
        // before it: a Started from then is refused all the same.
        assert_eq!(r.prune_expired(61), 0);
        assert_eq!(r.remembered(), 0);
        r.apply(SessionEvent::Started { session_id: late, user_id: alice, expires_at: 10_000, ticket }, 61);
        assert_eq!(r.lookup(late, alice, 61), Lookup::Unknown);
        let stale_profile = account(alice, Role::Admin);
        r.profiles.remove(&alice);
        r.fill_profile(ticket, stale_profile);
        assert!(r.profile(alice).is_none(), "a read older than a forgotten change was cached");
    }

    /// However many sessions start, the registry keeps about its capacity.
    #[test]
    fn memory_is_bounded_by_the_capacity() {
        let r = SessionRegistry::new(1000, 60);
        for _ in 0..20_000 {
            let user = UserId::new();
            start(&r, user, 100);
            r.fill_profile(r.ticket(), account(user, Role::User));
        }
        let (sessions, profiles) = r.cached();
        assert!(sessions <= 1100 && profiles <= 1100, "{sessions} sessions, {profiles} profiles cached");
    }

    /// Ends are remembered for the window only, pruned as they accumulate
    /// even when nobody calls the purge.
    #[test]
    fn ends_are_forgotten_after_the_window() {
        let r = SessionRegistry::new(10, 60);
        for t in 0..10_000 {
            r.apply(SessionEvent::Ended { session_id: SessionId::new(), expires_at: 1_000_000 }, t);
        }
        assert!(r.remembered() <= 2 * 1024, "{} ends remembered", r.remembered());
        // An end is kept no longer than its session lives.
        let short = SessionId::new();
        r.apply(SessionEvent::Ended { session_id: short, expires_at: 10_005 }, 10_000);
        r.prune_expired(10_006);
        assert!(!r.marks().ended.contains_key(&short));
    }
}
