//! `sessionEvents`: tells a signed-in client, over a WebSocket
//! (`graphql-transport-ws`), when its own session ends or its role changes,
//! so every open tab can react at once (see `http::subscriptions`).

use async_graphql::{Context, Enum, Result, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::Stream;

use super::{request, services, types::Role};
use crate::service::core::watch::{Change, SessionWatch};

/// What happened to the caller's session.
#[derive(Enum, Copy, Clone, Debug, Eq, PartialEq)]
pub enum SessionEventKind {
    /// The session ended (logout elsewhere, revocation, password change or
    /// reset, reuse detected, deletion, age); the socket closes after it.
    SessionEnded,
    /// The user's role changed (`role` is the new one).
    RoleChanged,
}

/// One change of the caller's session.
#[derive(SimpleObject)]
pub struct SessionEvent {
    pub kind: SessionEventKind,
    /// The session it is about: the caller's own.
    pub session_id: Option<async_graphql::ID>,
    /// The role now (`ROLE_CHANGED` only).
    pub role: Option<Role>,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Default)]
pub struct Subscription;

#[Subscription]
impl Subscription {
    /// The caller's own session: an event when it ends (the last one) or when
    /// the user's role changes.
    async fn session_events(&self, ctx: &Context<'_>) -> Result<impl Stream<Item = SessionEvent> + use<>> {
        let me = request(ctx)?.principal.require_user()?;
        let svc = services(ctx)?;
        let watch = SessionWatch::start(svc, me.user_id, me.session_id).await?;
        let clock = svc.clock.clone();
        let session_id = async_graphql::ID(me.session_id.to_string());
        Ok(futures_util::stream::unfold(Some(watch), move |watch| {
            let (clock, session_id) = (clock.clone(), session_id.clone());
            async move {
                let mut watch = watch?;
                let event =
                    |kind, role| SessionEvent { kind, session_id: Some(session_id), role, occurred_at: clock.now() };
                match watch.next().await {
                    Change::Ended => Some((event(SessionEventKind::SessionEnded, None), None)),
                    Change::RoleChanged(role) => {
                        Some((event(SessionEventKind::RoleChanged, Some(role.into())), Some(watch)))
                    }
                }
            }
        }))
    }
}
