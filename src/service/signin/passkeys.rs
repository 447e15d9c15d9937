//! Passkeys (WebAuthn Level 3, through webauthn-rs): registering one for the
//! signed-in user, listing and removing them, and the ceremonies both halves
//! share. Signing in and re-authenticating with one are in
//! [`super::passkey_login`].
//!
//! Each ceremony has two requests: `start` returns the options for
//! `navigator.credentials.create()`/`get()` (webauthn-rs's JSON, binary
//! fields as base64url, which `PublicKeyCredential.parseCreationOptionsFromJSON`
//! and `parseRequestOptionsFromJSON` read) and keeps the server's half in
//! `webauthn_ceremonies`; `finish` takes the browser's answer
//! (`credential.toJSON()`), spends the ceremony with one conditional update
//! and lets webauthn-rs check it: the origin against `WEBAUTHN_ORIGINS`, the
//! relying-party id hash, the challenge, user verification, and a signature
//! counter that must grow when the authenticator keeps one (a counter that
//! goes back is a cloned credential, refused). The stored credential is
//! updated when its counter or backup flags change, as webauthn-rs advises.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64URL};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set, SqlErr,
    sea_query::Expr,
};
use serde::{Serialize, de::DeserializeOwned};
use uuid::Uuid;
use webauthn_rs::prelude::{Passkey, PasskeyRegistration, RegisterPublicKeyCredential, Webauthn};
use webauthn_rs_proto::ResidentKeyRequirement;

use entity::{passkey, webauthn_ceremony};

use crate::service::{
    ClientInfo, Services,
    core::{
        events::{Actor, Event, EventKind},
        factors, store, users,
    },
};
use crate::{
    auth::principal::UserPrincipal,
    domain::UserId,
    error::{AppError, AppResult, Reason},
    mail::Kind,
};

/// How long a ceremony can be finished, in seconds (WebAuthn's recommended
/// timeout for user verification is 5 minutes).
pub const CEREMONY_TTL_SECS: i64 = 300;
/// Passkeys one account may hold.
pub const MAX_PASSKEYS: u64 = 20;
/// A passkey's name: at most this many characters.
const NAME_MAX: usize = 64;

/// What a ceremony is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    Register,
    /// A sign-in with a discoverable passkey: the account comes from the answer.
    Discoverable,
    /// A login's second factor, for the account its challenge names.
    SecondFactor,
    /// The signed-in user proves themself again.
    Reauthenticate,
}

impl Purpose {
    pub(super) const fn as_str(self) -> &'static str {
        match self {
            Purpose::Register => "register",
            Purpose::Discoverable => "discoverable",
            Purpose::SecondFactor => "second_factor",
            Purpose::Reauthenticate => "reauthenticate",
        }
    }
}

/// The first request's answer: the ceremony to name in the second, and the
/// options for the browser (`{"publicKey": {…}}`).
pub struct Ceremony {
    pub id: Uuid,
    pub options: serde_json::Value,
}

/// A stored passkey, as its owner sees it.
#[derive(Debug, Clone)]
pub struct PasskeyInfo {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<passkey::Model> for PasskeyInfo {
    fn from(row: passkey::Model) -> Self {
        Self { id: row.id, name: row.name, created_at: row.created_at, last_used_at: row.last_used_at }
    }
}

pub(super) fn refused(message: &str) -> AppError {
    AppError::invalid_input(Reason::PasskeyRefused, "credential", message)
}

/// A refusal about the ceremony named, not the answer.
pub(super) fn unknown_ceremony() -> AppError {
    AppError::invalid_input(
        Reason::PasskeyRefused,
        "ceremony",
        "The passkey ceremony is unknown, used or expired: start again",
    )
}

/// A refusal about the account, with no argument to blame.
pub(super) fn account_refused(message: &str) -> AppError {
    AppError::Refused { reason: Reason::PasskeyRefused, message: message.to_owned() }
}

pub(super) fn webauthn(svc: &Services) -> AppResult<&Webauthn> {
    svc.second_factor.webauthn.as_ref().ok_or_else(|| AppError::Refused {
        reason: Reason::PasskeysUnavailable,
        message: "Passkeys are off on this server: its origin is an IP address or plain http (see WEBAUTHN_RP_ID and \
                  WEBAUTHN_ORIGINS)"
            .to_owned(),
    })
}

pub(super) fn to_json<T: Serialize>(value: &T) -> AppResult<String> {
    serde_json::to_string(value).map_err(|e| AppError::internal(format!("webauthn state: {e}")))
}

pub(super) fn from_json<T: DeserializeOwned>(text: &str) -> AppResult<T> {
    serde_json::from_str(text).map_err(|e| AppError::internal(format!("webauthn state: {e}")))
}

/// The browser's answer, parsed; `PASSKEY_REFUSED` when it is not one.
pub(super) fn parse_answer<T: DeserializeOwned>(credential: serde_json::Value) -> AppResult<T> {
    serde_json::from_value(credential).map_err(|_| refused("`credential` is not a WebAuthn credential's JSON"))
}

/// The passkeys of `user_id`, oldest first.
pub async fn list(svc: &Services, user_id: UserId) -> AppResult<Vec<PasskeyInfo>> {
    let rows = passkey::Entity::find()
        .filter(passkey::Column::UserId.eq(user_id))
        .order_by_asc(passkey::Column::CreatedAt)
        .all(&svc.db)
        .await?;
    Ok(rows.into_iter().map(PasskeyInfo::from).collect())
}

pub(super) async fn stored(svc: &Services, user_id: UserId) -> AppResult<Vec<(passkey::Model, Passkey)>> {
    let rows = passkey::Entity::find().filter(passkey::Column::UserId.eq(user_id)).all(&svc.db).await?;
    rows.into_iter()
        .map(|row| {
            let key = from_json::<Passkey>(&row.credential)?;
            Ok((row, key))
        })
        .collect()
}

pub(super) async fn keep(
    svc: &Services,
    purpose: Purpose,
    user_id: Option<UserId>,
    challenge_id: Option<Uuid>,
    state: String,
    options: serde_json::Value,
) -> AppResult<Ceremony> {
    let now = svc.clock.now();
    let id = Uuid::now_v7();
    if let Some(user_id) = user_id {
        close_oldest_ceremonies(svc, user_id, now).await?;
    }
    webauthn_ceremony::Entity::insert(webauthn_ceremony::ActiveModel {
        id: Set(id),
        purpose: Set(purpose.as_str().to_owned()),
        user_id: Set(user_id.map(UserId::uuid)),
        challenge_id: Set(challenge_id),
        state: Set(state),
        created_at: Set(now),
        expires_at: Set(now + ChronoDuration::seconds(CEREMONY_TTL_SECS)),
        used_at: Set(None),
    })
    .exec_without_returning(&svc.db)
    .await?;
    Ok(Ceremony { id, options })
}

/// Most ceremonies one account may have open at once (started, not finished,
/// not expired): its tabs. Starting one more closes the oldest, so the rows an
/// account can make this way stay bounded whatever it sends.
pub const MAX_OPEN_CEREMONIES: usize = 5;

/// Closes (deletes) `user_id`'s oldest open ceremonies so that one more
/// leaves at most [`MAX_OPEN_CEREMONIES`] open.
async fn close_oldest_ceremonies(svc: &Services, user_id: UserId, now: DateTime<Utc>) -> AppResult<()> {
    let open: Vec<Uuid> = webauthn_ceremony::Entity::find()
        .select_only()
        .column(webauthn_ceremony::Column::Id)
        .filter(webauthn_ceremony::Column::UserId.eq(user_id.uuid()))
        .filter(webauthn_ceremony::Column::UsedAt.is_null())
        .filter(webauthn_ceremony::Column::ExpiresAt.gt(now))
        .order_by_desc(webauthn_ceremony::Column::CreatedAt)
        .order_by_desc(webauthn_ceremony::Column::Id)
        .into_tuple()
        .all(&svc.db)
        .await?;
    let oldest: Vec<Uuid> = open.into_iter().skip(MAX_OPEN_CEREMONIES - 1).collect();
    if !oldest.is_empty() {
        webauthn_ceremony::Entity::delete_many()
            .filter(webauthn_ceremony::Column::Id.is_in(oldest))
            .exec(&svc.db)
            .await?;
    }
    Ok(())
}

/// Spends the ceremony `id` of `purpose` (for `user_id`, where it has one)
/// with one conditional update, and returns it; `PASSKEY_REFUSED` when it is
/// unknown, of another purpose or account, used or expired.
pub(super) async fn spend(
    svc: &Services,
    conn: &impl ConnectionTrait,
    id: Uuid,
    purpose: Purpose,
    user_id: Option<UserId>,
) -> AppResult<webauthn_ceremony::Model> {
    let now = svc.clock.now();
    let mut update = webauthn_ceremony::Entity::update_many()
        .col_expr(webauthn_ceremony::Column::UsedAt, Expr::value(now))
        .filter(webauthn_ceremony::Column::Id.eq(id))
        .filter(webauthn_ceremony::Column::Purpose.eq(purpose.as_str()))
        .filter(webauthn_ceremony::Column::UsedAt.is_null())
        .filter(webauthn_ceremony::Column::ExpiresAt.gt(now));
    update = match user_id {
        Some(user) => update.filter(webauthn_ceremony::Column::UserId.eq(user.uuid())),
        None => update.filter(webauthn_ceremony::Column::UserId.is_null()),
    };
    update.exec_with_returning(conn).await?.pop().ok_or_else(unknown_ceremony)
}

/// Starts registering a passkey for the caller. The options ask for a
/// discoverable credential (resident key required) with user verification,
/// and exclude the caller's passkeys.
///
/// Errors: `REAUTHENTICATION_REQUIRED`, `PASSKEY_REFUSED` past
/// [`MAX_PASSKEYS`], FORBIDDEN when passkeys are off.
#[tracing::instrument(skip_all)]
pub async fn start_registration(svc: &Services, me: &UserPrincipal) -> AppResult<Ceremony> {
    let webauthn = webauthn(svc)?;
    factors::require_recent_auth(svc, me.session_id).await?;
    let account = users::me(svc, me.user_id).await?;
    let existing = stored(svc, me.user_id).await?;
    if existing.len() as u64 >= MAX_PASSKEYS {
        return Err(account_refused("The account has the most passkeys it may hold: remove one first"));
    }
    let exclude = existing.iter().map(|(_, key)| key.cred_id().clone()).collect::<Vec<_>>();
    let (mut options, state) = webauthn
        .start_passkey_registration(me.user_id.uuid(), account.email.display(), &account.name, Some(exclude))
        .map_err(|e| AppError::internal(format!("webauthn: {e}")))?;
    // Sign-in without a typed address needs a credential the authenticator
    // keeps (discoverable); webauthn-rs leaves that to the relying party.
    if let Some(selection) = options.public_key.authenticator_selection.as_mut() {
        selection.resident_key = Some(ResidentKeyRequirement::Required);
        selection.require_resident_key = true;
    }
    let options = serde_json::to_value(&options).map_err(|e| AppError::internal(format!("webauthn: {e}")))?;
    keep(svc, Purpose::Register, Some(me.user_id), None, to_json::<PasskeyRegistration>(&state)?, options).await
}

/// Finishes a registration with the browser's answer and stores the passkey
/// under `name` (default "Passkey"). Sends a notice and records
/// `PASSKEY_ADDED`.
///
/// Errors: `REAUTHENTICATION_REQUIRED`, `PASSKEY_REFUSED` (a bad answer, a
/// used or expired ceremony, a credential another account holds),
/// `INVALID_NAME`.
#[tracing::instrument(skip_all)]
pub async fn finish_registration(
    svc: &Services,
    me: &UserPrincipal,
    client: &ClientInfo,
    ceremony: Uuid,
    credential: serde_json::Value,
    name: Option<&str>,
) -> AppResult<PasskeyInfo> {
    let webauthn = webauthn(svc)?;
    factors::require_recent_auth(svc, me.session_id).await?;
    let name = match name.map(str::trim) {
        None | Some("") => "Passkey".to_owned(),
        Some(name) if name.chars().count() > NAME_MAX || name.chars().any(char::is_control) => {
            return Err(AppError::invalid_input(
                Reason::InvalidName,
                "name",
                format!("A passkey's name is at most {NAME_MAX} characters, without control characters"),
            ));
        }
        Some(name) => name.to_owned(),
    };
    let answer: RegisterPublicKeyCredential = parse_answer(credential)?;
    let account = users::me(svc, me.user_id).await?;
    let mut tx = store::Write::begin(svc).await?;
    let row = spend(svc, tx.conn(), ceremony, Purpose::Register, Some(me.user_id)).await?;
    let state: PasskeyRegistration = from_json(&row.state)?;
    let key = match webauthn.finish_passkey_registration(&answer, &state) {
        Ok(key) => key,
        Err(e) => {
            // The ceremony stays spent: an answer is checked once.
            tx.commit().await?;
            tracing::info!(user_id = %me.user_id, error = %e, "passkey registration refused");
            return Err(refused("The passkey's answer does not verify"));
        }
    };
    // Counted again here: ceremonies started side by side must not pass the limit.
    if passkey::Entity::find().filter(passkey::Column::UserId.eq(me.user_id)).count(tx.conn()).await? >= MAX_PASSKEYS {
        tx.rollback().await?;
        return Err(account_refused("The account has the most passkeys it may hold: remove one first"));
    }
    let now = svc.clock.now();
    let id = Uuid::now_v7();
    let inserted = passkey::Entity::insert(passkey::ActiveModel {
        id: Set(id),
        user_id: Set(me.user_id.uuid()),
        credential_id: Set(B64URL.encode(key.cred_id())),
        name: Set(name.clone()),
        credential: Set(to_json(&key)?),
        created_at: Set(now),
        last_used_at: Set(None),
    })
    .exec_without_returning(tx.conn())
    .await;
    if let Err(e) = inserted {
        tx.rollback().await?;
        return Err(match e.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => refused("This passkey is registered already"),
            _ => e.into(),
        });
    }
    tx.enqueue_mail(Kind::PasskeyAdded, Some(me.user_id), &account.email, None).await?;
    let event = Event::new(EventKind::PasskeyAdded, Some(me.user_id), Actor::User(me.user_id), client)
        .session(me.session_id)
        .detail(name.clone());
    tx.record(event).await?;
    tx.commit().await?;
    tracing::info!(user_id = %me.user_id, "passkey added");
    Ok(PasskeyInfo { id, name, created_at: now, last_used_at: None })
}

/// Removes one of the caller's passkeys. Sends a notice and records
/// `PASSKEY_REMOVED`.
///
/// Errors: `REAUTHENTICATION_REQUIRED`, `NOT_FOUND` (not one of theirs).
#[tracing::instrument(skip_all)]
pub async fn remove(svc: &Services, me: &UserPrincipal, client: &ClientInfo, id: Uuid) -> AppResult<()> {
    factors::require_recent_auth(svc, me.session_id).await?;
    let account = users::me(svc, me.user_id).await?;
    let mut tx = store::Write::begin(svc).await?;
    let gone = passkey::Entity::delete_many()
        .filter(passkey::Column::Id.eq(id))
        .filter(passkey::Column::UserId.eq(me.user_id))
        .exec_with_returning(tx.conn())
        .await?
        .pop();
    let Some(gone) = gone else {
        tx.rollback().await?;
        return Err(AppError::invalid_input(Reason::NotFound, "id", "No such passkey"));
    };
    let event = Event::new(EventKind::PasskeyRemoved, Some(me.user_id), Actor::User(me.user_id), client)
        .session(me.session_id)
        .detail(gone.name);
    tx.enqueue_mail(Kind::PasskeyRemoved, Some(me.user_id), &account.email, None).await?;
    tx.record(event).await?;
    tx.commit().await?;
    Ok(())
}
