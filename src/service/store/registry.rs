//! The live-session registry: which sessions may still use their access tokens,
//! the current role of their users, and a copy of those users' profiles (so `me`
//! needs no database read).
//!
//! Every authenticated request asks it, so it lives in memory: a lookup instead of
//! a database round trip. The database stays the source of truth, and only the
//! session store (`super`) changes what the registry holds, after the
//! database: [`SessionRegistry::apply`] is visible to it alone.
//!
//! An ended session is remembered (a tombstone, until the session's own end),
//! so a `Started` that arrives after the end (a login or refresh that committed
//! before a revocation, but told the registry after it) is ignored: a revoked
//! session never comes back to life.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
};

use entity::user::Role;

use crate::domain::{Account, SessionId, UserId};

/// A change of what the registry holds, applied after its commit.
#[derive(Debug, Clone)]
pub(super) enum SessionEvent {
    /// A session is live for `user` (as stored when it started or was
    /// refreshed). Ignored for a session that has ended.
    Started { session_id: SessionId, user: Account, expires_at: i64 },
    /// A session ended (revoked, or its user deleted): refused from now on, and
    /// remembered until `expires_at` so that no late `Started` revives it.
    Ended { session_id: SessionId, expires_at: i64 },
    /// The user's row changed (profile, role, password): the copy is replaced.
    UserUpdated { user: Account },
    /// The user is gone (their sessions end by their own `Ended` events).
    UserDeleted { user_id: UserId },
}

#[derive(Default)]
pub struct SessionRegistry {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<SessionId, Live>,
    users: HashMap<UserId, UserEntry>,
    /// Ended sessions, until their own end (Unix seconds).
    ended: HashMap<SessionId, i64>,
}

struct Live {
    user_id: UserId,
    expires_at: i64,
}

struct UserEntry {
    /// The account as last written (an [`Account`] has no password hash).
    profile: Arc<Account>,
    sessions: HashSet<SessionId>,
}

impl UserEntry {
    /// Events are applied after their commits, in whatever order their tasks get
    /// here: a copy read before a newer one was applied (a login that read the
    /// row before a role change committed) must not replace it. `updated_at` is
    /// set by every change of the row.
    fn replace_unless_older(&mut self, profile: Arc<Account>) {
        if profile.updated_at >= self.profile.updated_at {
            self.profile = profile;
        }
    }
}

/// What the registry knows of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Live, and its user's current role.
    Live(Role),
    /// Ended, expired, or not this user's.
    Ended,
    /// Never heard of: on a database shared by several instances, it may have
    /// started on another one a moment ago.
    Unknown,
}

impl SessionRegistry {
    /// The user's current role if `session_id` is a live session of `user_id`.
    pub fn check(&self, session_id: SessionId, user_id: UserId, now: i64) -> Option<Role> {
        match self.lookup(session_id, user_id, now) {
            Lookup::Live(role) => Some(role),
            Lookup::Ended | Lookup::Unknown => None,
        }
    }

    /// What is known of `session_id` as a session of `user_id` at `now`.
    pub fn lookup(&self, session_id: SessionId, user_id: UserId, now: i64) -> Lookup {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let Some(live) = inner.sessions.get(&session_id) else {
            return if inner.ended.contains_key(&session_id) { Lookup::Ended } else { Lookup::Unknown };
        };
        if live.user_id != user_id || live.expires_at <= now {
            return Lookup::Ended;
        }
        inner.users.get(&user_id).map_or(Lookup::Ended, |u| Lookup::Live(u.profile.role))
    }

    /// Forgets live sessions and profiles before a reload from the database.
    /// Tombstones stay: a late `Started` may still arrive for a session that
    /// ended before the reload.
    pub(super) fn clear(&self) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.sessions.clear();
        inner.users.clear();
    }

    /// The profile of a user with a live session, as last written.
    pub fn profile(&self, user_id: UserId) -> Option<Arc<Account>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.users.get(&user_id).map(|u| u.profile.clone())
    }

    pub(super) fn apply(&self, event: SessionEvent) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match event {
            SessionEvent::Started { session_id, user, expires_at } => {
                if inner.ended.contains_key(&session_id) {
                    return;
                }
                let user_id = user.id;
                inner.sessions.insert(session_id, Live { user_id, expires_at });
                let profile = Arc::new(user);
                let entry = inner
                    .users
                    .entry(user_id)
                    .or_insert_with(|| UserEntry { profile: profile.clone(), sessions: HashSet::new() });
                entry.replace_unless_older(profile);
                entry.sessions.insert(session_id);
            }
            SessionEvent::Ended { session_id, expires_at } => {
                if let Some(live) = inner.sessions.remove(&session_id) {
                    inner.forget_session(live.user_id, session_id);
                }
                inner.ended.insert(session_id, expires_at);
            }
            SessionEvent::UserUpdated { user } => {
                if let Some(entry) = inner.users.get_mut(&user.id) {
                    entry.replace_unless_older(Arc::new(user));
                }
            }
            SessionEvent::UserDeleted { user_id } => {
                if let Some(user) = inner.users.remove(&user_id) {
                    for id in user.sessions {
                        if let Some(live) = inner.sessions.remove(&id) {
                            inner.ended.insert(id, live.expires_at);
                        }
                    }
                }
            }
        }
    }

    /// Drops sessions past their absolute end, and the tombstones of ended
    /// sessions that could no longer start anyway. Returns how many live
    /// sessions went.
    pub(super) fn prune_expired(&self, now: i64) -> usize {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.ended.retain(|_, expires_at| *expires_at > now);
        let expired: Vec<(SessionId, UserId)> =
            inner.sessions.iter().filter(|(_, l)| l.expires_at <= now).map(|(id, l)| (*id, l.user_id)).collect();
        for (id, user_id) in &expired {
            inner.sessions.remove(id);
            inner.forget_session(*user_id, *id);
        }
        expired.len()
    }

    /// How many sessions are live (tests).
    #[cfg(test)]
    fn live_count(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).sessions.len()
    }
}

impl Inner {
    fn forget_session(&mut self, user_id: UserId, session_id: SessionId) {
        if let Some(user) = self.users.get_mut(&user_id) {
            user.sessions.remove(&session_id);
            if user.sessions.is_empty() {
                self.users.remove(&user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Email;

    fn model(id: UserId, role: Role) -> Account {
        let now = chrono::Utc::now();
        Account {
            id,
            email: Email::from_parts("a@example.com".into(), "a@example.com".into()),
            name: "A".into(),
            role,
            created_at: now,
            updated_at: now,
            last_login_at: None,
        }
    }

    fn start(r: &SessionRegistry, user_id: UserId, expires_at: i64) -> SessionId {
        let session_id = SessionId::new();
        r.apply(SessionEvent::Started { session_id, user: model(user_id, Role::User), expires_at });
        session_id
    }

    /// A login that read the row before a role change committed applies its
    /// Started after the change's UserUpdated: the older copy must not win.
    #[test]
    fn an_older_copy_of_a_user_never_replaces_a_newer_one() {
        let r = SessionRegistry::default();
        let id = UserId::new();
        let stale = model(id, Role::Admin);
        let s1 = start(&r, id, 100);
        let demoted =
            Account { role: Role::User, updated_at: stale.updated_at + chrono::Duration::seconds(1), ..stale.clone() };
        r.apply(SessionEvent::UserUpdated { user: demoted.clone() });
        let s2 = SessionId::new();
        r.apply(SessionEvent::Started { session_id: s2, user: stale.clone(), expires_at: 100 });
        assert_eq!(r.check(s2, id, 10), Some(Role::User));
        assert_eq!(r.check(s1, id, 10), Some(Role::User));
        r.apply(SessionEvent::UserUpdated { user: stale });
        assert_eq!(r.profile(id).unwrap().role, Role::User);
        // A newer change still applies.
        let promoted =
            Account { role: Role::Admin, updated_at: demoted.updated_at + chrono::Duration::seconds(1), ..demoted };
        r.apply(SessionEvent::UserUpdated { user: promoted });
        assert_eq!(r.check(s2, id, 10), Some(Role::Admin));
    }

    #[test]
    fn tracks_revocation_roles_and_expiry() {
        let r = SessionRegistry::default();
        let (alice, bob) = (UserId::new(), UserId::new());
        let a1 = start(&r, alice, 100);
        let a2 = start(&r, alice, 100);
        let b1 = start(&r, bob, 100);
        assert_eq!(r.check(a1, alice, 10), Some(Role::User));
        // A session id presented with another user's id is not accepted.
        assert_eq!(r.check(a1, bob, 10), None);
        assert_eq!(r.check(a1, alice, 100), None, "expired at its end");

        r.apply(SessionEvent::UserUpdated { user: model(alice, Role::Admin) });
        assert_eq!(r.check(a2, alice, 10), Some(Role::Admin));
        let profile = r.profile(alice).unwrap();
        assert_eq!(profile.role, Role::Admin);

        r.apply(SessionEvent::Ended { session_id: a1, expires_at: 100 });
        assert_eq!(r.check(a1, alice, 10), None);
        assert!(r.check(a2, alice, 10).is_some());

        let a3 = start(&r, alice, 100);
        r.apply(SessionEvent::Ended { session_id: a2, expires_at: 100 });
        assert_eq!(r.check(a2, alice, 10), None);
        assert!(r.check(a3, alice, 10).is_some());

        r.apply(SessionEvent::UserDeleted { user_id: alice });
        assert_eq!(r.check(a3, alice, 10), None);
        assert!(r.profile(alice).is_none());
        assert!(r.check(b1, bob, 10).is_some());

        start(&r, bob, 5);
        assert_eq!(r.prune_expired(50), 1);
        assert_eq!(r.live_count(), 1);
    }

    /// A `Started` that arrives after its session's end (the login committed
    /// before the revocation, and told the registry after it) is ignored, for
    /// an ended session and for one of a deleted user alike, until the
    /// session's own end.
    #[test]
    fn an_ended_session_never_starts_again() {
        let r = SessionRegistry::default();
        let alice = UserId::new();
        let late = SessionId::new();
        r.apply(SessionEvent::Ended { session_id: late, expires_at: 100 });
        r.apply(SessionEvent::Started { session_id: late, user: model(alice, Role::User), expires_at: 100 });
        assert_eq!(r.check(late, alice, 10), None);
        assert!(r.profile(alice).is_none(), "no copy kept for a user with no live session");

        let bob = UserId::new();
        let b1 = start(&r, bob, 100);
        r.apply(SessionEvent::UserDeleted { user_id: bob });
        r.apply(SessionEvent::Started { session_id: b1, user: model(bob, Role::User), expires_at: 100 });
        assert_eq!(r.check(b1, bob, 10), None);

        // Tombstones go with the sessions' ends.
        assert_eq!(r.prune_expired(100), 0);
        assert!(r.inner.read().unwrap().ended.is_empty());
    }
}
