//! Watching one session: what a signed-in client's open connection waits for
//! (`sessionEvents`). The registry tells its watchers of every end and user
//! change once applied, on this instance or, through the change log, from
//! another one ([`Notice`]); a watcher that missed some (it lagged, or the
//! registry was cleared), and every [`RECHECK`] in any case (a session also
//! ends by age), asks again whether its session is live and what its role is;
//! a database that does not answer is not taken for an ended session.

use tokio::sync::broadcast::error::RecvError;

use entity::user::Role;

use super::store::{self, Notice};
use crate::service::Services;
use crate::{
    domain::{SessionId, UserId},
    error::{AppError, AppResult},
};

/// How often a watcher asks again without being told (`Services::watch_recheck`).
pub use crate::config::SESSION_WATCH_RECHECK as RECHECK;

/// What changed for the watched session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It ended (logout, revocation, password change or reset, reuse,
    /// deletion, age).
    Ended,
    /// Its user's role is now this.
    RoleChanged(Role),
}

/// One session, watched.
pub struct SessionWatch {
    svc: Services,
    user: UserId,
    session: SessionId,
    role: Role,
    notices: tokio::sync::broadcast::Receiver<Notice>,
    ended: bool,
    /// When to ask again unprompted. Kept here, not in [`next`]'s future, so
    /// a caller that drops and remakes that future (a `select!` loop) does not
    /// put the recheck off for ever.
    ///
    /// [`next`]: SessionWatch::next
    recheck_at: tokio::time::Instant,
}

impl SessionWatch {
    /// Starts watching `session` of `user`. Errors: `TOKEN_REVOKED` when it
    /// is not live now.
    pub async fn start(svc: &Services, user: UserId, session: SessionId) -> AppResult<Self> {
        // Subscribed before the check: nothing between the two is missed.
        let notices = svc.registry.watch();
        let role = store::session_role(svc, session, user).await.ok_or(AppError::TokenRevoked)?;
        let recheck_at = tokio::time::Instant::now() + svc.watch_recheck;
        Ok(Self { svc: svc.clone(), user, session, role, notices, ended: false, recheck_at })
    }

    /// Waits for the next change. After [`Change::Ended`] it answers `Ended`
    /// at once, forever.
    pub async fn next(&mut self) -> Change {
        if self.ended {
            return Change::Ended;
        }
        loop {
            let recheck = match tokio::time::timeout_at(self.recheck_at, self.notices.recv()).await {
                Ok(Ok(Notice::Ended(s))) if s == self.session => {
                    self.ended = true;
                    return Change::Ended;
                }
                Ok(Ok(Notice::UserChanged(u))) => u == self.user,
                Ok(Ok(Notice::Ended(_))) => false,
                // Missed notices, a cleared registry, a quiet while: ask.
                Ok(Ok(Notice::Cleared)) | Ok(Err(RecvError::Lagged(_))) | Err(_) => true,
                Ok(Err(RecvError::Closed)) => {
                    self.ended = true;
                    return Change::Ended;
                }
            };
            if recheck && let Some(change) = self.recheck().await {
                return change;
            }
        }
    }

    /// Asks whether the session is live and what its role is. An outage is
    /// not an end: it is asked again at the next recheck.
    async fn recheck(&mut self) -> Option<Change> {
        self.recheck_at = tokio::time::Instant::now() + self.svc.watch_recheck;
        match store::session_role_checked(&self.svc, self.session, self.user).await {
            Ok(None) => {
                self.ended = true;
                Some(Change::Ended)
            }
            Ok(Some(role)) if role != self.role => {
                self.role = role;
                Some(Change::RoleChanged(role))
            }
            Ok(Some(_)) => None,
            Err(e) => {
                tracing::warn!(error = %e.detail(), "a watched session could not be read; asking again later");
                None
            }
        }
    }
}
