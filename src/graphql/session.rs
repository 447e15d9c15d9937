//! Sessions: refresh, logout, revocation.

use async_graphql::{Context, ID, Object, Result};

use super::{
    CookieChange, change_cookie, deliver, request, require_same_site, services,
    types::{AuthPayload, TokenTransport, parse_id},
};
use crate::{error::AppError, service::sessions};

#[derive(Default)]
pub struct SessionMutation;

#[Object]
impl SessionMutation {
    /// Rotates the refresh token (from the cookie, or the argument for native
    /// clients) and returns a new access token. The new refresh token travels the
    /// way the old one came.
    async fn refresh_token(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] refresh_token: Option<String>,
    ) -> Result<AuthPayload> {
        let req = request(ctx)?;
        let svc = services(ctx)?;
        let (token, transport) = match refresh_token {
            Some(t) => (t, TokenTransport::Body),
            None => {
                require_same_site(req)?;
                let t = req.refresh_cookie.clone().ok_or(AppError::MissingToken)?;
                (t, TokenTransport::Cookie)
            }
        };
        match sessions::refresh(svc, &token, &request(ctx)?.client).await {
            Ok(issued) => Ok(deliver(ctx, issued, transport)?),
            Err(e) => {
                // A dead cookie is cleared so the browser stops sending it.
                if transport == TokenTransport::Cookie && !matches!(e, AppError::Unavailable(_) | AppError::Internal(_))
                {
                    change_cookie(ctx, CookieChange::Clear)?;
                }
                Err(e.into())
            }
        }
    }

    /// Ends the current session, or all of the user's sessions with
    /// `everywhere: true`, and clears the refresh cookie. True also when there
    /// was nothing to end; REFRESH_TOKEN_REUSED when the refresh token given was
    /// rotated long ago (its session is ended).
    async fn logout(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(false)")] everywhere: Option<bool>,
        #[graphql(secret, desc = "For native clients: the refresh token of the session to end")] refresh_token: Option<
            String,
        >,
    ) -> Result<bool> {
        let req = request(ctx)?;
        require_same_site(req)?;
        let token = refresh_token.as_deref().or(req.refresh_cookie.as_deref());
        let ended =
            sessions::logout(services(ctx)?, &req.principal, token, everywhere.unwrap_or(false), &request(ctx)?.client)
                .await;
        // Cleared also when the cookie turned out to be a reused token.
        change_cookie(ctx, CookieChange::Clear)?;
        ended?;
        Ok(true)
    }

    /// Ends one of the caller's own sessions. False when there is no such live
    /// session of theirs.
    async fn revoke_session(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let me = request(ctx)?.principal.require_user()?;
        let session_id = parse_id(&id, "id")?;
        Ok(sessions::revoke_own(services(ctx)?, me.user_id, session_id, &request(ctx)?.client).await?)
    }
}
