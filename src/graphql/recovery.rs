//! Account recovery and address verification by mail. The tokens are the
//! proof: `resetPassword`, `verifyEmail` and `confirmEmailChange` need no
//! sign-in.

use async_graphql::{Context, Object, Result};

use super::{request, services};
use crate::service::recovery;

#[derive(Default)]
pub struct RecoveryMutation;

#[Object]
impl RecoveryMutation {
    /// Sends a password-reset link to `email` if it has an account. The answer
    /// is `true` for every well-formed address, registered or not, and takes
    /// the same time and budgets either way: past the budgets (one mail a
    /// minute and five an hour per address, by default), `RATE_LIMITED` with
    /// `retryAfter`, for registered and unknown addresses alike.
    async fn request_password_reset(&self, ctx: &Context<'_>, email: String) -> Result<bool> {
        let req = request(ctx)?;
        recovery::request_password_reset(services(ctx)?, &req.client, &email).await?;
        Ok(true)
    }

    /// Sets a new password with the token of a reset link, and ends every
    /// session of the account. Logs nobody in: log in with the new password.
    async fn reset_password(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] token: String,
        #[graphql(secret)] new_password: String,
    ) -> Result<bool> {
        recovery::reset_password(services(ctx)?, &token, new_password, &request(ctx)?.client).await?;
        Ok(true)
    }

    /// Sends a verification link to the caller's address. `false` when the
    /// address is confirmed already (nothing is sent).
    async fn send_verification_email(&self, ctx: &Context<'_>) -> Result<bool> {
        let req = request(ctx)?;
        let me = req.principal.require_user()?;
        Ok(recovery::send_verification(services(ctx)?, me.user_id, &req.client).await?)
    }

    /// Confirms the address with the token of a verification link.
    async fn verify_email(&self, ctx: &Context<'_>, #[graphql(secret)] token: String) -> Result<bool> {
        recovery::verify_email(services(ctx)?, &token, &request(ctx)?.client).await?;
        Ok(true)
    }

    /// Moves the account to its new address with the token of the link sent
    /// there by `updateProfile(input: {email})`.
    async fn confirm_email_change(&self, ctx: &Context<'_>, #[graphql(secret)] token: String) -> Result<bool> {
        recovery::confirm_email_change(services(ctx)?, &token, &request(ctx)?.client).await?;
        Ok(true)
    }
}
