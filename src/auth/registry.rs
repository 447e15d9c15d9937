//! The live-session registry: which sessions may still use their access tokens,
//! the current role of their users, and a copy of those users' profiles (so `me`
//! needs no database read).
//!
//! Every authenticated request asks it, so it lives in memory: a lookup instead of
//! a database round trip. The database stays the source of truth: the registry is
//! loaded from it at start and every change is written to the database first and
//! applied here right after, as a [`SessionEvent`]. Revocation therefore takes
//! effect on the very next request, not at token expiry. Several instances could
//! share it by broadcasting the same events (for example over PostgreSQL
//! `LISTEN/NOTIFY`) to each instance's `apply`.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
};

use entity::user::Role;

use crate::domain::{Account, SessionId, UserId};

#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// A session went live for `user` (as stored when it started).
    Started {
        session_id: SessionId,
        user: Account,
        expires_at: i64,
    },
    Revoked {
        session_id: SessionId,
    },
    UserSessionsRevoked {
        user_id: UserId,
        except: Option<SessionId>,
    },
    /// The user's row changed (profile, role, password): the copy is replaced.
    UserUpdated {
        user: Account,
    },
    UserDeleted {
        user_id: UserId,
    },
}

#[derive(Default)]
pub struct SessionRegistry {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<SessionId, Live>,
    users: HashMap<UserId, UserEntry>,
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

impl SessionRegistry {
    /// The user's current role if `session_id` is a live session of `user_id`.
    pub fn check(&self, session_id: SessionId, user_id: UserId, now: i64) -> Option<Role> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let live = inner.sessions.get(&session_id)?;
        if live.user_id != user_id || live.expires_at <= now {
            return None;
        }
        inner.users.get(&user_id).map(|u| u.profile.role)
    }

    /// The profile of a user with a live session, as last written.
    pub fn profile(&self, user_id: UserId) -> Option<Arc<Account>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.users.get(&user_id).map(|u| u.profile.clone())
    }

    pub fn apply(&self, event: SessionEvent) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        match event {
            SessionEvent::Started { session_id, user, expires_at } => {
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
            SessionEvent::Revoked { session_id } => {
                if let Some(live) = inner.sessions.remove(&session_id) {
                    inner.forget_session(live.user_id, session_id);
                }
            }
            SessionEvent::UserSessionsRevoked { user_id, except } => {
                let ids: Vec<SessionId> = inner
                    .users
                    .get(&user_id)
                    .map(|u| u.sessions.iter().copied().filter(|s| Some(*s) != except).collect())
                    .unwrap_or_default();
                for id in ids {
                    inner.sessions.remove(&id);
                    inner.forget_session(user_id, id);
                }
            }
            SessionEvent::UserUpdated { user } => {
                if let Some(entry) = inner.users.get_mut(&user.id) {
                    entry.replace_unless_older(Arc::new(user));
                }
            }
            SessionEvent::UserDeleted { user_id } => {
                if let Some(user) = inner.users.remove(&user_id) {
                    for id in user.sessions {
                        inner.sessions.remove(&id);
                    }
                }
            }
        }
    }

    /// Drops sessions past their absolute end. Returns how many went.
    pub fn prune_expired(&self, now: i64) -> usize {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
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

        r.apply(SessionEvent::Revoked { session_id: a1 });
        assert_eq!(r.check(a1, alice, 10), None);
        assert!(r.check(a2, alice, 10).is_some());

        let a3 = start(&r, alice, 100);
        r.apply(SessionEvent::UserSessionsRevoked { user_id: alice, except: Some(a3) });
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
}
