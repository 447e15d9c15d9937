//! Second factors: TOTP and recovery codes, passkeys, the login's second
//! step, re-authentication, and an admin's reset.

use async_graphql::{Context, ID, Json, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::{
    deliver, request, require_recent_admin, require_same_site, services,
    types::{AuthPayload, TokenTransport, parse_id},
};
use crate::{
    auth::access::UsersWrite,
    service::{
        signin::authenticator::{self, TotpEnrollment as Enrollment},
        signin::passkey_login,
        signin::passkeys::{self, Ceremony, PasskeyInfo},
        signin::second_factor::{self, FactorStatus},
    },
};

/// A new authenticator's key: show the QR code (or the secret, for typing),
/// then send a code from the app to `confirmTotp`.
#[derive(SimpleObject)]
pub struct TotpEnrollment {
    /// The key in base32 (RFC 4648, no padding), for typing by hand.
    pub secret: String,
    /// `otpauth://totp/…` (the Key URI format authenticator apps read).
    pub otpauth_uri: String,
    /// The URI as a QR code: a `data:image/svg+xml;base64,…` URL for an `<img src>`.
    pub qr_code_svg: String,
}

impl From<Enrollment> for TotpEnrollment {
    fn from(e: Enrollment) -> Self {
        Self { secret: e.secret, otpauth_uri: e.otpauth_uri, qr_code_svg: e.qr_code_svg }
    }
}

/// What second factors an account has.
#[derive(SimpleObject)]
pub struct SecondFactorStatus {
    /// An authenticator app (TOTP) is active.
    pub totp: bool,
    /// Unused recovery codes.
    pub recovery_codes_left: i32,
    /// Registered passkeys.
    pub passkeys: i32,
    /// A password login needs a second step (`SECOND_FACTOR_REQUIRED`).
    pub required: bool,
}

impl From<FactorStatus> for SecondFactorStatus {
    fn from(s: FactorStatus) -> Self {
        Self {
            totp: s.totp,
            recovery_codes_left: i32::try_from(s.recovery_codes_left).unwrap_or(i32::MAX),
            passkeys: i32::try_from(s.passkeys).unwrap_or(i32::MAX),
            required: s.any(),
        }
    }
}

/// A registered passkey.
#[derive(SimpleObject)]
pub struct Passkey {
    pub id: ID,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<PasskeyInfo> for Passkey {
    fn from(p: PasskeyInfo) -> Self {
        Self { id: ID(p.id.to_string()), name: p.name, created_at: p.created_at, last_used_at: p.last_used_at }
    }
}

/// The first half of a WebAuthn ceremony.
#[derive(SimpleObject)]
pub struct PasskeyCeremony {
    /// Name it in the second half; it works once, for 5 minutes.
    pub id: ID,
    /// `{"publicKey": {…}}` with binary fields in base64url: pass `publicKey`
    /// to `PublicKeyCredential.parseCreationOptionsFromJSON` (registration) or
    /// `parseRequestOptionsFromJSON` (sign-in), then to
    /// `navigator.credentials.create/get`, and send `credential.toJSON()` back.
    pub options: Json<serde_json::Value>,
}

impl From<Ceremony> for PasskeyCeremony {
    fn from(c: Ceremony) -> Self {
        Self { id: ID(c.id.to_string()), options: Json(c.options) }
    }
}

fn ceremony_id(id: &ID) -> Result<uuid::Uuid, crate::error::AppError> {
    parse_id::<uuid::Uuid>(id, "ceremony")
}

#[derive(Default)]
pub struct SecondFactorMutation;

#[Object]
impl SecondFactorMutation {
    /// Starts setting up an authenticator app for the caller (needs a recent
    /// sign-in). Nothing changes for logins until `confirmTotp`.
    async fn enroll_totp(&self, ctx: &Context<'_>) -> Result<TotpEnrollment> {
        let me = request(ctx)?.principal.require_user()?;
        Ok(authenticator::enroll_totp(services(ctx)?, me).await?.into())
    }

    /// Activates the authenticator with a code from it. Returns ten recovery
    /// codes, shown only this once: each can stand in for a code, once.
    async fn confirm_totp(&self, ctx: &Context<'_>, #[graphql(secret)] code: String) -> Result<Vec<String>> {
        let req = request(ctx)?;
        let me = req.principal.require_user()?;
        Ok(authenticator::confirm_totp(services(ctx)?, me, &req.client, &code).await?)
    }

    /// Removes the authenticator and the recovery codes, with a code from the
    /// authenticator or a recovery code (and a recent sign-in).
    async fn disable_totp(&self, ctx: &Context<'_>, #[graphql(secret)] code: String) -> Result<bool> {
        let req = request(ctx)?;
        let me = req.principal.require_user()?;
        authenticator::disable_totp(services(ctx)?, me, &req.client, &code).await?;
        Ok(true)
    }

    /// Replaces the recovery codes with ten new ones (the old ones stop
    /// working), with a code from the authenticator or a recovery code, and a
    /// recent sign-in.
    async fn regenerate_recovery_codes(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] code: String,
    ) -> Result<Vec<String>> {
        let req = request(ctx)?;
        let me = req.principal.require_user()?;
        Ok(authenticator::regenerate_recovery_codes(services(ctx)?, me, &req.client, &code).await?)
    }

    /// Finishes a login that answered `SECOND_FACTOR_REQUIRED`: its
    /// `extensions.challenge` and a TOTP or recovery code give the session.
    async fn verify_second_factor(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] challenge: String,
        #[graphql(secret)] code: String,
        #[graphql(default)] transport: TokenTransport,
    ) -> Result<AuthPayload> {
        let req = request(ctx)?;
        if transport == TokenTransport::Cookie {
            require_same_site(req)?;
        }
        let issued = second_factor::verify_second_factor(services(ctx)?, &challenge, &code, &req.client).await?;
        Ok(deliver(ctx, issued, transport)?)
    }

    /// Proves the caller again so that sensitive operations work for
    /// `REAUTHENTICATION_MAX_AGE`: the password, and a TOTP or recovery code
    /// when an authenticator is active. (An account whose second factor is a
    /// passkey alone uses `startPasskeyReauthentication`.)
    async fn reauthenticate(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] password: String,
        #[graphql(secret)] code: Option<String>,
    ) -> Result<bool> {
        let req = request(ctx)?;
        let me = req.principal.require_user()?;
        second_factor::reauthenticate(services(ctx)?, me, &req.client, password, code.as_deref()).await?;
        Ok(true)
    }

    /// Starts registering a passkey for the caller (needs a recent sign-in).
    async fn start_passkey_registration(&self, ctx: &Context<'_>) -> Result<PasskeyCeremony> {
        let me = request(ctx)?.principal.require_user()?;
        Ok(passkeys::start_registration(services(ctx)?, me).await?.into())
    }

    /// Finishes a registration with `credential.toJSON()` of the browser's answer.
    async fn finish_passkey_registration(
        &self,
        ctx: &Context<'_>,
        ceremony: ID,
        credential: Json<serde_json::Value>,
        name: Option<String>,
    ) -> Result<Passkey> {
        let req = request(ctx)?;
        let me = req.principal.require_user()?;
        let id = ceremony_id(&ceremony)?;
        let svc = services(ctx)?;
        Ok(passkeys::finish_registration(svc, me, &req.client, id, credential.0, name.as_deref()).await?.into())
    }

    /// Removes one of the caller's passkeys (needs a recent sign-in).
    async fn remove_passkey(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let req = request(ctx)?;
        let me = req.principal.require_user()?;
        passkeys::remove(services(ctx)?, me, &req.client, parse_id(&id, "id")?).await?;
        Ok(true)
    }

    /// Starts a sign-in with a passkey: without `challenge`, any passkey the
    /// browser holds for this site (no address typed); with a login's
    /// `challenge`, as that login's second factor.
    async fn start_passkey_login(
        &self,
        ctx: &Context<'_>,
        #[graphql(secret)] challenge: Option<String>,
    ) -> Result<PasskeyCeremony> {
        Ok(passkey_login::start_login(services(ctx)?, challenge.as_deref()).await?.into())
    }

    /// Finishes a passkey sign-in with `credential.toJSON()` and starts a session.
    async fn finish_passkey_login(
        &self,
        ctx: &Context<'_>,
        ceremony: ID,
        credential: Json<serde_json::Value>,
        #[graphql(default)] transport: TokenTransport,
    ) -> Result<AuthPayload> {
        let req = request(ctx)?;
        if transport == TokenTransport::Cookie {
            require_same_site(req)?;
        }
        let id = ceremony_id(&ceremony)?;
        let issued = passkey_login::finish_login(services(ctx)?, &req.client, id, credential.0).await?;
        Ok(deliver(ctx, issued, transport)?)
    }

    /// Starts re-authenticating the caller with one of their passkeys.
    async fn start_passkey_reauthentication(&self, ctx: &Context<'_>) -> Result<PasskeyCeremony> {
        let me = request(ctx)?.principal.require_user()?;
        Ok(passkey_login::start_reauthentication(services(ctx)?, me).await?.into())
    }

    /// Finishes a re-authentication with `credential.toJSON()`.
    async fn finish_passkey_reauthentication(
        &self,
        ctx: &Context<'_>,
        ceremony: ID,
        credential: Json<serde_json::Value>,
    ) -> Result<bool> {
        let req = request(ctx)?;
        let me = req.principal.require_user()?;
        let id = ceremony_id(&ceremony)?;
        passkey_login::finish_reauthentication(services(ctx)?, me, &req.client, id, credential.0).await?;
        Ok(true)
    }

    /// Removes every second factor of a user (a lost device): authenticator,
    /// recovery codes and passkeys, and ends all the user's sessions. The user
    /// is told by mail. ADMIN (or an API
    /// key with USERS_WRITE, for a user with role USER); an admin needs a
    /// recent sign-in. Returns what the user had.
    async fn reset_second_factors(&self, ctx: &Context<'_>, user_id: ID) -> Result<SecondFactorStatus> {
        let req = request(ctx)?;
        let proof = req.principal.grant::<UsersWrite>()?;
        require_recent_admin(ctx).await?;
        let id = parse_id(&user_id, "userId")?;
        Ok(second_factor::reset(services(ctx)?, proof.actor, id, &req.client).await?.into())
    }
}
