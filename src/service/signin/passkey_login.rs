//! Signing in with a passkey, alone (a discoverable credential) or as a
//! login's second factor, and re-authenticating with one. Registering and the
//! ceremonies are in [`super::passkeys`].
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
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, sea_query::Expr};
use uuid::Uuid;
use webauthn_rs::prelude::{DiscoverableAuthentication, Passkey, PasskeyAuthentication, PublicKeyCredential, Webauthn};

use entity::{passkey, webauthn_ceremony};

use super::passkeys::{
    Ceremony, Purpose, account_refused, from_json, keep, parse_answer, refused, spend, stored, to_json,
    unknown_ceremony, webauthn,
};
use super::{authenticator::Used, second_factor};
use crate::service::{
    ClientInfo, Issued, Services,
    core::{
        events::{self, Actor, Event, EventKind},
        factors, limits, store, users,
    },
};
use crate::{
    auth::{
        principal::UserPrincipal,
        rate_limit::{Action, IpKey},
    },
    db::UniqueRow,
    domain::UserId,
    error::{AppError, AppResult},
};

/// Starts a sign-in with a passkey: with a login's `challenge`
/// (`SECOND_FACTOR_REQUIRED`), for that account's passkeys; without, for any
/// discoverable passkey (the browser offers the ones it has for this site).
/// (The request guard spends one unit of the client's login budget for it.)
///
/// Errors: `INVALID_SECOND_FACTOR` (a bad challenge), `PASSKEY_REFUSED` (the
/// challenge's account has no passkey), `RATE_LIMITED`, FORBIDDEN when
/// passkeys are off.
#[tracing::instrument(skip_all)]
pub async fn start_login(svc: &Services, challenge: Option<&str>) -> AppResult<Ceremony> {
    let webauthn = webauthn(svc)?;
    match challenge {
        None => {
            let (mut options, state) = webauthn
                .start_discoverable_authentication()
                .map_err(|e| AppError::internal(format!("webauthn: {e}")))?;
            // A button's modal prompt, not an autofill (conditional) one.
            options.mediation = None;
            let options = serde_json::to_value(&options).map_err(|e| AppError::internal(format!("webauthn: {e}")))?;
            keep(svc, Purpose::Discoverable, None, None, to_json::<DiscoverableAuthentication>(&state)?, options).await
        }
        Some(challenge) => {
            let (challenge, user) = second_factor::open_challenge(svc, challenge).await?;
            let user_id = UserId::from(user.id);
            start_for_account(svc, webauthn, user_id, Purpose::SecondFactor, Some(challenge.id)).await
        }
    }
}

async fn start_for_account(
    svc: &Services,
    webauthn: &Webauthn,
    user_id: UserId,
    purpose: Purpose,
    challenge_id: Option<Uuid>,
) -> AppResult<Ceremony> {
    let keys: Vec<Passkey> = stored(svc, user_id).await?.into_iter().map(|(_, key)| key).collect();
    if keys.is_empty() {
        return Err(account_refused("The account has no passkey"));
    }
    let (options, state) =
        webauthn.start_passkey_authentication(&keys).map_err(|e| AppError::internal(format!("webauthn: {e}")))?;
    let options = serde_json::to_value(&options).map_err(|e| AppError::internal(format!("webauthn: {e}")))?;
    keep(svc, purpose, Some(user_id), challenge_id, to_json::<PasskeyAuthentication>(&state)?, options).await
}

/// Checks an answer against the ceremony's state and the account's stored
/// passkey, and saves the passkey's new counter or backup flags. Returns the
/// account. In `tx`, which spent the ceremony.
async fn check_assertion(
    svc: &Services,
    conn: &impl ConnectionTrait,
    webauthn: &Webauthn,
    row: &webauthn_ceremony::Model,
    answer: &PublicKeyCredential,
) -> AppResult<Option<UserId>> {
    let used_id = B64URL.encode(answer.get_credential_id());
    let stored_key =
        passkey::Entity::find().filter(passkey::Column::CredentialId.eq(used_id.as_str())).unique_row(conn).await?;
    let Some(stored_key) = stored_key else { return Ok(None) };
    let owner = UserId::from(stored_key.user_id);
    if row.user_id.is_some_and(|u| u != owner.uuid()) {
        return Ok(None);
    }
    let mut key: Passkey = from_json(&stored_key.credential)?;
    let result = if row.purpose == Purpose::Discoverable.as_str() {
        // The user handle in the answer must be the account the credential is stored under.
        match webauthn.identify_discoverable_authentication(answer) {
            Ok((handle, _)) if handle == owner.uuid() => {}
            _ => return Ok(None),
        }
        let state: DiscoverableAuthentication = from_json(&row.state)?;
        webauthn.finish_discoverable_authentication_v2(answer, state, &key)
    } else {
        let state: PasskeyAuthentication = from_json(&row.state)?;
        webauthn.finish_passkey_authentication(answer, &state)
    };
    let result = match result {
        Ok(result) => result,
        Err(e) => {
            tracing::info!(user_id = %owner, error = %e, "passkey assertion refused");
            return Ok(None);
        }
    };
    // A ceremony's state holds the passkey as it was when the ceremony
    // started; a use since then moved the stored counter on.
    if counter_goes_back(&stored_key.credential, result.counter()) {
        tracing::warn!(user_id = %owner, "passkey refused: its signature counter did not grow (a cloned authenticator?)");
        return Ok(None);
    }
    let updated = if key.update_credential(&result) == Some(true) { Some(to_json(&key)?) } else { None };
    if !record_use(conn, &stored_key, updated, svc.clock.now()).await? {
        tracing::warn!(user_id = %owner, "passkey refused: its row changed while the answer was checked");
        return Ok(None);
    }
    Ok(Some(owner))
}

/// Records a use of the passkey `stored` (the row as it was read before the
/// answer was checked), with its `updated` credential (webauthn-rs's JSON,
/// when the counter or backup flags moved), as a compare-and-set over the
/// row as read. Returns false, writing nothing, when the row changed or went
/// since: another assertion moved it on (an authenticator and its clone at
/// the same moment: only one of them may sign in), or the passkey was
/// removed. The answer is then refused.
async fn record_use(
    conn: &impl ConnectionTrait,
    stored: &passkey::Model,
    updated: Option<String>,
    now: DateTime<Utc>,
) -> AppResult<bool> {
    let mut update = passkey::Entity::update_many()
        .col_expr(passkey::Column::LastUsedAt, Expr::value(now))
        .filter(passkey::Column::Id.eq(stored.id))
        .filter(passkey::Column::Credential.eq(stored.credential.as_str()));
    if let Some(credential) = updated {
        update = update.col_expr(passkey::Column::Credential, Expr::value(credential));
    }
    Ok(update.exec(conn).await?.rows_affected == 1)
}

/// Whether `counter`, from an assertion, shows a clone against the counter
/// of the stored passkey (`stored`, webauthn-rs's JSON): when either is not
/// zero, the new one must be greater (WebAuthn L3 §7.2, step 22).
fn counter_goes_back(stored: &str, counter: u32) -> bool {
    let stored = serde_json::from_str::<serde_json::Value>(stored)
        .ok()
        .and_then(|v| v.pointer("/cred/counter").and_then(serde_json::Value::as_u64))
        .unwrap_or(0);
    let counter = u64::from(counter);
    (counter > 0 || stored > 0) && counter <= stored
}

/// Finishes a sign-in started by [`start_login`] and starts a session. A
/// second-factor ceremony spends its login challenge too. Each try spends
/// the client's login budget, and the account's once it is known.
///
/// Errors: `PASSKEY_REFUSED` (a bad, replayed or foreign answer; an unknown,
/// used or expired ceremony), `INVALID_SECOND_FACTOR` (the login's challenge
/// was spent meanwhile), `EMAIL_NOT_VERIFIED`, `RATE_LIMITED`.
#[tracing::instrument(skip_all)]
pub async fn finish_login(
    svc: &Services,
    client: &ClientInfo,
    ceremony: Uuid,
    credential: serde_json::Value,
) -> AppResult<Issued> {
    let webauthn = webauthn(svc)?;
    limits::spend_ip(svc, Action::Login, IpKey::from(client.ip)).await?;
    let answer: PublicKeyCredential = parse_answer(credential)?;
    let found = webauthn_ceremony::Entity::find_by_id(ceremony).unique_row(&svc.db).await?;
    let Some(found) =
        found.filter(|c| c.purpose == Purpose::Discoverable.as_str() || c.purpose == Purpose::SecondFactor.as_str())
    else {
        return Err(unknown_ceremony());
    };
    let purpose = if found.user_id.is_some() { Purpose::SecondFactor } else { Purpose::Discoverable };
    let user_id = found.user_id.map(UserId::from);
    if let Some(user_id) = user_id
        && let Some(user) = users::row(svc, user_id).await?
    {
        limits::spend_account(svc, &user.email_normalized).await?;
    }
    let tx = store::Write::begin(svc).await?;
    let row = spend(svc, tx.conn(), ceremony, purpose, user_id).await?;
    let Some(owner) = check_assertion(svc, tx.conn(), webauthn, &row, &answer).await? else {
        // The ceremony stays spent: an answer is checked once.
        tx.commit().await?;
        let event = Event::new(EventKind::LoginFailed, user_id, Actor::Anonymous, client).detail("PASSKEY_REFUSED");
        events::record(svc, &svc.db, event).await?;
        return Err(refused("The passkey's answer does not verify"));
    };
    if let Some(challenge_id) = row.challenge_id {
        let challenge = entity::second_factor_challenge::Entity::find_by_id(challenge_id).unique_row(tx.conn()).await?;
        let claimed = match &challenge {
            Some(challenge) => second_factor::claim_challenge(svc, tx.conn(), challenge).await?,
            None => false,
        };
        if !claimed {
            tx.rollback().await?;
            return Err(AppError::InvalidSecondFactor);
        }
    }
    // Read in the transaction: on SQLite it holds the only connection.
    let Some(user) = entity::user::Entity::find_by_id(owner.uuid()).unique_row(tx.conn()).await? else {
        tx.rollback().await?;
        return Err(refused("The passkey's account is gone"));
    };
    if svc.mail.config.require_verification && user.email_verified_at.is_none() {
        tx.rollback().await?;
        return Err(AppError::EmailNotVerified);
    }
    second_factor::finish_login(svc, tx, user, Used::Passkey, client).await
}

/// Starts a re-authentication of the caller with one of their passkeys.
///
/// Errors: `PASSKEY_REFUSED` (no passkey), FORBIDDEN when passkeys are off.
pub async fn start_reauthentication(svc: &Services, me: &UserPrincipal) -> AppResult<Ceremony> {
    let webauthn = webauthn(svc)?;
    start_for_account(svc, webauthn, me.user_id, Purpose::Reauthenticate, None).await
}

/// Finishes a re-authentication: the caller's session counts as just
/// signed in. Spends the client's login budget. Records `REAUTHENTICATED`.
///
/// Errors: `PASSKEY_REFUSED`, `RATE_LIMITED`.
#[tracing::instrument(skip_all)]
pub async fn finish_reauthentication(
    svc: &Services,
    me: &UserPrincipal,
    client: &ClientInfo,
    ceremony: Uuid,
    credential: serde_json::Value,
) -> AppResult<()> {
    let webauthn = webauthn(svc)?;
    limits::spend_ip(svc, Action::Login, IpKey::from(client.ip)).await?;
    let answer: PublicKeyCredential = parse_answer(credential)?;
    let tx = store::Write::begin(svc).await?;
    let row = spend(svc, tx.conn(), ceremony, Purpose::Reauthenticate, Some(me.user_id)).await?;
    if check_assertion(svc, tx.conn(), webauthn, &row, &answer).await?.is_none() {
        tx.commit().await?;
        let event = Event::new(EventKind::ReauthenticationFailed, Some(me.user_id), Actor::User(me.user_id), client)
            .session(me.session_id)
            .detail("PASSKEY_REFUSED");
        events::record(svc, &svc.db, event).await?;
        return Err(refused("The passkey's answer does not verify"));
    }
    factors::stamp_authenticated(tx.conn(), me.session_id, svc.clock.now()).await?;
    let event = Event::new(EventKind::Reauthenticated, Some(me.user_id), Actor::User(me.user_id), client)
        .session(me.session_id)
        .detail("PASSKEY");
    tx.record(event).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::counter_goes_back;

    /// Two answers checked against the same read of a passkey (an
    /// authenticator and its clone, same counter, at the same moment): the
    /// first use is recorded, the second finds the row moved on and is
    /// refused; a use of a removed passkey is refused too.
    #[tokio::test]
    async fn two_uses_over_one_read_record_one() {
        use sea_orm::{ActiveModelTrait, EntityTrait, Set};
        let kit = crate::service::testkit::TestKit::new().await;
        let a = kit.register("clone@example.com").await;
        let now = kit.svc.clock.now();
        let read = entity::passkey::ActiveModel {
            id: Set(uuid::Uuid::now_v7()),
            user_id: Set(a.user.id.uuid()),
            credential_id: Set("Y2xvbmU".into()),
            name: Set("Key".into()),
            credential: Set(r#"{"cred":{"counter":5}}"#.into()),
            created_at: Set(now),
            last_used_at: Set(None),
        }
        .insert(&kit.svc.db)
        .await
        .unwrap();
        let moved = Some(r#"{"cred":{"counter":6}}"#.to_owned());
        assert!(super::record_use(&kit.svc.db, &read, moved.clone(), now).await.unwrap(), "the first use");
        assert!(!super::record_use(&kit.svc.db, &read, moved, now).await.unwrap(), "the clone's use, same counter");
        let fresh = entity::passkey::Entity::find_by_id(read.id).one(&kit.svc.db).await.unwrap().unwrap();
        entity::passkey::Entity::delete_by_id(read.id).exec(&kit.svc.db).await.unwrap();
        assert!(!super::record_use(&kit.svc.db, &fresh, None, now).await.unwrap(), "a removed passkey's use");
    }

    #[test]
    fn a_counter_that_does_not_grow_is_a_clone() {
        let stored = |n: u32| format!(r#"{{"cred":{{"cred_id":"AA","counter":{n}}}}}"#);
        assert!(!counter_goes_back(&stored(0), 0), "authenticators without a counter send 0");
        assert!(!counter_goes_back(&stored(4), 5));
        assert!(counter_goes_back(&stored(5), 5));
        assert!(counter_goes_back(&stored(5), 3));
        assert!(counter_goes_back(&stored(5), 0), "a counter that stops is no better");
        assert!(!counter_goes_back(&stored(0), 7));
    }
}
