//! Accounts: register, login, me, profile and password.

use async_graphql::{Context, Object, Result};

use super::{
    deliver, request, require_same_site, services,
    types::{AuthPayload, LoginInput, RegisterInput, TokenTransport, UpdateProfileInput, User},
};
use crate::service::{
    core::users,
    signin::accounts::{self, NewAccount, ProfileChange},
};

#[derive(Default)]
pub struct AccountQuery;

#[Object]
impl AccountQuery {
    /// The calling user.
    async fn me(&self, ctx: &Context<'_>) -> Result<User> {
        let me = request(ctx)?.principal.require_user()?;
        Ok(User::new(users::me(services(ctx)?, me.user_id).await?))
    }
}

#[derive(Default)]
pub struct AccountMutation;

#[Object]
impl AccountMutation {
    /// Creates an account (role USER) and logs it in.
    async fn register(&self, ctx: &Context<'_>, input: RegisterInput) -> Result<AuthPayload> {
        let req = request(ctx)?;
        let svc = services(ctx)?;
        let transport = input.transport.unwrap_or_default();
        if transport == TokenTransport::Cookie {
            require_same_site(req)?;
        }
        let account = NewAccount { email: input.email, password: input.password, name: input.name };
        let issued = accounts::register(svc, account, &req.client).await?;
        Ok(deliver(ctx, issued, transport)?)
    }

    /// Starts a session. A wrong password and an unknown email give the same
    /// INVALID_CREDENTIALS error.
    async fn login(&self, ctx: &Context<'_>, input: LoginInput) -> Result<AuthPayload> {
        let req = request(ctx)?;
        let svc = services(ctx)?;
        let transport = input.transport.unwrap_or_default();
        if transport == TokenTransport::Cookie {
            require_same_site(req)?;
        }
        let issued = accounts::login(svc, &input.email, input.password, &req.client).await?.into_issued()?;
        Ok(deliver(ctx, issued, transport)?)
    }

    /// Changes the caller's name, and asks to change their address: a new
    /// address gets a confirmation link (and the current one a notice), and
    /// the address changes when `confirmEmailChange` uses the link. A new
    /// spelling of the same address is taken at once.
    async fn update_profile(&self, ctx: &Context<'_>, input: UpdateProfileInput) -> Result<User> {
        let req = request(ctx)?;
        let me = req.principal.require_user()?;
        let change = ProfileChange { name: input.name, email: input.email };
        Ok(User::new(accounts::update_profile(services(ctx)?, me, &req.client, change).await?))
    }

    /// Changes the caller's password and ends all their other sessions.
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] current_password: String,
        #[graphql(secret)] new_password: String,
    ) -> Result<bool> {
        let req = request(ctx)?;
        let me = req.principal.require_user()?;
        let svc = services(ctx)?;
        accounts::change_password(svc, me.user_id, me.session_id, &req.client, current_password, new_password).await?;
        Ok(true)
    }
}
