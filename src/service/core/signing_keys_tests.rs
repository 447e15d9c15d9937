//! Tests of `signing_keys`: rotation, retirement, loading and sealing.

use sea_orm::PaginatorTrait;

use super::*;
use crate::{auth::tokens::TokenKeys, secret::Secret, service::testkit::TestKit};

fn keys(alg: SigningAlgorithm) -> SigningKeys {
    SigningKeys {
        sealer: Sealer::new(&Secret::new(vec![9; 32])),
        policy: KeyPolicy {
            alg,
            lead: chrono::Duration::minutes(15),
            linger: chrono::Duration::minutes(20),
            rotate_every: None,
        },
    }
}

fn kids(set: &KeySet) -> Vec<String> {
    set.published.iter().map(|(kid, ..)| kid.clone()).collect()
}

fn tokens(set: KeySet) -> TokenKeys {
    TokenKeys::from_key_set(set, "authgraph", "authgraph", std::time::Duration::from_secs(900))
}

/// Instances starting at once on one database end up with one key, and a
/// restart finds it again.
#[tokio::test]
async fn instances_starting_together_share_one_key() {
    let kit = TestKit::new().await;
    let k = keys(SigningAlgorithm::Es256);
    let now = kit.svc.clock.now();
    let (a, b) = tokio::join!(ensure(&kit.svc.db, &k, now), ensure(&kit.svc.db, &k, now));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(kids(&a), kids(&b));
    assert_eq!(signing_key::Entity::find().count(&kit.svc.db).await.unwrap(), 1);
    assert_eq!(kids(&ensure(&kit.svc.db, &k, now).await.unwrap()), kids(&a));
}

/// The stored private key is sealed: its PKCS#8 bytes are not in the row,
/// and another secret cannot open it.
#[tokio::test]
async fn the_private_key_is_stored_sealed() {
    let kit = TestKit::new().await;
    let k = keys(SigningAlgorithm::EdDsa);
    let set = ensure(&kit.svc.db, &k, kit.svc.clock.now()).await.unwrap();
    let kid = kids(&set).remove(0);
    let row = signing_key::Entity::find_by_id(kid.clone()).one(&kit.svc.db).await.unwrap().unwrap();
    let pkcs8 = k.sealer.open(&keys::identity(&row.kid, &row.alg, &row.public_jwk), &row.private_key).unwrap();
    assert!(!row.private_key.windows(32).any(|w| pkcs8.windows(32).any(|p| p == w)), "stored in the clear");
    let other = SigningKeys { sealer: Sealer::new(&Secret::new(vec![8; 32])), policy: k.policy.clone() };
    let err = load(&kit.svc.db, &other, kit.svc.clock.now()).await.err().expect("opened under another secret");
    assert!(err.detail().contains(&kid) && err.detail().contains("KEY_ENCRYPTION_SECRET"), "{}", err.detail());
}

/// A rotation publishes the new key at once and signs with it after the
/// lead time; the old one then stops signing and stays published until its
/// tokens have expired. Repeating the rotation makes no second key.
#[tokio::test]
async fn a_rotation_publishes_first_signs_later_and_retires_the_old_key_after_its_tokens() {
    let kit = TestKit::new().await;
    let k = keys(SigningAlgorithm::Es256);
    // Whole seconds: PostgreSQL keeps microseconds.
    let t0 = chrono::SubsecRound::trunc_subsecs(kit.svc.clock.now(), 0);
    let first = kids(&ensure(&kit.svc.db, &k, t0).await.unwrap()).remove(0);
    let next = rotate(&kit.svc.db, &k, t0).await.unwrap();
    assert_eq!(next.state, STATE_NEXT);
    assert_eq!(rotate(&kit.svc.db, &k, t0).await.unwrap().kid, next.kid, "a second rotation made another key");

    let set = load(&kit.svc.db, &k, t0).await.unwrap();
    assert_eq!(kids(&set).len(), 2, "the next key is published at once");
    let tk = tokens(set);
    let before = (t0 + k.policy.lead - chrono::Duration::seconds(1)).timestamp();
    let after = (t0 + k.policy.lead).timestamp();
    assert_eq!(tk.signing_kid(before).as_deref(), Some(first.as_str()));
    assert_eq!(tk.signing_kid(after).as_deref(), Some(next.kid.as_str()));

    let t1 = t0 + k.policy.lead;
    let listed = list(&kit.svc.db, &k, t1).await.unwrap();
    let old = listed.iter().find(|r| r.kid == first).unwrap();
    assert_eq!(old.state, STATE_RETIRED);
    assert_eq!(old.published_until, Some(t1 + k.policy.linger));
    assert_eq!(listed.iter().find(|r| r.kid == next.kid).unwrap().state, STATE_CURRENT);
    assert_eq!(
        kids(&load(&kit.svc.db, &k, t1 + k.policy.linger - chrono::Duration::seconds(1)).await.unwrap()).len(),
        2
    );
    assert_eq!(kids(&load(&kit.svc.db, &k, t1 + k.policy.linger).await.unwrap()), vec![next.kid.clone()]);
}

#[tokio::test]
async fn only_a_key_that_does_not_sign_can_be_retired() {
    let kit = TestKit::new().await;
    let k = keys(SigningAlgorithm::Es256);
    let now = kit.svc.clock.now();
    let first = kids(&ensure(&kit.svc.db, &k, now).await.unwrap()).remove(0);
    assert!(matches!(retire(&kit.svc.db, &k, &first, now).await, Err(RetireError::Signing(_))));
    assert!(matches!(retire(&kit.svc.db, &k, "nope", now).await, Err(RetireError::Unknown(_))));
    let next = rotate(&kit.svc.db, &k, now).await.unwrap();
    // Too close to its time: an instance that has not reloaded would sign with it.
    let close = next.signs_from - chrono::Duration::seconds(30);
    assert!(matches!(retire(&kit.svc.db, &k, &next.kid, close).await, Err(RetireError::TooLate(..))));
    let called_off = retire(&kit.svc.db, &k, &next.kid, now).await.unwrap();
    assert_eq!(called_off.state, STATE_RETIRED);
    assert_eq!(kids(&load(&kit.svc.db, &k, now).await.unwrap()), vec![first.clone()], "a called-off key is published");
    // With the waiting key gone, a rotation makes a new one.
    assert_ne!(rotate(&kit.svc.db, &k, now).await.unwrap().kid, next.kid);
}

/// A changed JWT_ALGORITHM is a rotation: the old key signs until the new
/// one's lead time is over.
#[tokio::test]
async fn a_changed_algorithm_rotates_like_any_rotation() {
    let kit = TestKit::new().await;
    let now = kit.svc.clock.now();
    let es = kids(&ensure(&kit.svc.db, &keys(SigningAlgorithm::Es256), now).await.unwrap()).remove(0);
    let ed = keys(SigningAlgorithm::EdDsa);
    let set = ensure(&kit.svc.db, &ed, now).await.unwrap();
    assert_eq!(set.published.len(), 2);
    let tk = tokens(set);
    assert_eq!(tk.signing_kid(now.timestamp()).as_deref(), Some(es.as_str()));
    let later = tk.signing_kid((now + ed.policy.lead).timestamp()).unwrap();
    assert_ne!(later, es);
    // A restart with the same setting makes no third key.
    assert_eq!(ensure(&kit.svc.db, &ed, now).await.unwrap().published.len(), 2);
}

/// The background round retires the old key once its successor signs, so
/// that it leaves the set when its tokens are gone, with no admin action.
#[tokio::test]
async fn the_background_round_retires_a_replaced_key() {
    let kit = TestKit::new().await;
    let k = keys(SigningAlgorithm::Es256);
    let t0 = kit.svc.clock.now();
    let tk = tokens(ensure(&kit.svc.db, &k, t0).await.unwrap());
    let next = rotate(&kit.svc.db, &k, t0).await.unwrap();
    let t1 = t0 + k.policy.lead;
    refresh(&kit.svc.db, &k, &tk, t1).await.unwrap();
    assert_eq!(tk.jwks()["keys"].as_array().unwrap().len(), 2, "the old key left while its tokens live");
    refresh(&kit.svc.db, &k, &tk, t1 + k.policy.linger).await.unwrap();
    let jwks = tk.jwks();
    let left: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|j| j["kid"].as_str().unwrap()).collect();
    assert_eq!(left, vec![next.kid.as_str()]);
}

/// A command run with another KEY_ENCRYPTION_SECRET (or none, falling
/// back to a generated one) makes no key the servers could not open.
#[tokio::test]
async fn no_key_is_made_under_a_secret_that_does_not_open_the_others() {
    let kit = TestKit::new().await;
    let k = keys(SigningAlgorithm::Es256);
    let now = kit.svc.clock.now();
    ensure(&kit.svc.db, &k, now).await.unwrap();
    let other = SigningKeys { sealer: Sealer::new(&Secret::new(vec![8; 32])), policy: k.policy.clone() };
    let err = rotate(&kit.svc.db, &other, now).await.expect_err("rotated under another secret");
    assert!(err.detail().contains("KEY_ENCRYPTION_SECRET"), "{}", err.detail());
    let mut ed = other.policy.clone();
    ed.alg = SigningAlgorithm::EdDsa;
    let other = SigningKeys { sealer: other.sealer.clone(), policy: ed };
    assert!(ensure(&kit.svc.db, &other, now).await.is_err());
    assert_eq!(signing_key::Entity::find().count(&kit.svc.db).await.unwrap(), 1, "a key was made anyway");
}

/// A row whose public key or algorithm was changed in the database does
/// not open, and is not trusted: the set does not load.
#[tokio::test]
async fn a_stored_public_key_cannot_be_swapped() {
    let kit = TestKit::new().await;
    let k = keys(SigningAlgorithm::Es256);
    let now = kit.svc.clock.now();
    let set = ensure(&kit.svc.db, &k, now).await.unwrap();
    let kid = kids(&set).remove(0);
    let row = signing_key::Entity::find_by_id(kid.clone()).one(&kit.svc.db).await.unwrap().unwrap();
    let theirs = keys::generate(SigningAlgorithm::Es256, &kid).unwrap();
    let mut swapped: signing_key::ActiveModel = row.into();
    swapped.public_jwk = Set(theirs.public_jwk.to_string());
    swapped.update(&kit.svc.db).await.unwrap();
    let err = load(&kit.svc.db, &k, now).await.err().expect("a swapped public key was trusted");
    assert!(err.detail().contains(&kid), "{}", err.detail());
}

/// An instance whose tokens live longer than those of whoever retired a
/// key (another ACCESS_TOKEN_TTL) keeps the key published that much longer.
#[tokio::test]
async fn a_retired_key_stays_published_for_the_longest_token_life() {
    let kit = TestKit::new().await;
    let short = keys(SigningAlgorithm::Es256);
    let t0 = chrono::SubsecRound::trunc_subsecs(kit.svc.clock.now(), 0);
    let first = kids(&ensure(&kit.svc.db, &short, t0).await.unwrap()).remove(0);
    rotate(&kit.svc.db, &short, t0).await.unwrap();
    let t1 = t0 + short.policy.lead;
    list(&kit.svc.db, &short, t1).await.unwrap();
    let mut long = keys(SigningAlgorithm::Es256);
    long.policy.linger = chrono::Duration::hours(1);
    let tk = tokens(load(&kit.svc.db, &long, t1).await.unwrap());
    refresh(&kit.svc.db, &long, &tk, t1 + chrono::Duration::minutes(1)).await.unwrap();
    let row = signing_key::Entity::find_by_id(first).one(&kit.svc.db).await.unwrap().unwrap();
    assert_eq!(row.published_until, Some(t1 + chrono::Duration::hours(1)));
}

/// A change of algorithm while a key of the old one waits: the waiting
/// key is called off, so it cannot take over from the new one.
#[tokio::test]
async fn a_changed_algorithm_calls_off_a_waiting_key_of_the_old_one() {
    let kit = TestKit::new().await;
    let now = kit.svc.clock.now();
    let es = keys(SigningAlgorithm::Es256);
    ensure(&kit.svc.db, &es, now).await.unwrap();
    let waiting = rotate(&kit.svc.db, &es, now).await.unwrap();
    let ed = keys(SigningAlgorithm::EdDsa);
    let later = now + chrono::Duration::minutes(1);
    let tk = tokens(ensure(&kit.svc.db, &ed, later).await.unwrap());
    let signs = |t: DateTime<Utc>| tk.signing_kid(t.timestamp()).unwrap();
    let at_the_end = signs(later + ed.policy.lead + chrono::Duration::minutes(10));
    assert_ne!(at_the_end, waiting.kid, "the old algorithm's waiting key took over");
    let row = signing_key::Entity::find_by_id(at_the_end).one(&kit.svc.db).await.unwrap().unwrap();
    assert_eq!(row.alg, "EdDSA");
}

#[tokio::test]
async fn a_scheduled_rotation_happens_once_when_due() {
    let kit = TestKit::new().await;
    let mut k = keys(SigningAlgorithm::Es256);
    k.policy.rotate_every = Some(chrono::Duration::days(30));
    let now = kit.svc.clock.now();
    let tk = tokens(ensure(&kit.svc.db, &k, now).await.unwrap());
    refresh(&kit.svc.db, &k, &tk, now + chrono::Duration::days(29)).await.unwrap();
    assert_eq!(tk.jwks()["keys"].as_array().unwrap().len(), 1, "rotated before it was due");
    let due = now + chrono::Duration::days(30);
    refresh(&kit.svc.db, &k, &tk, due).await.unwrap();
    refresh(&kit.svc.db, &k, &tk, due).await.unwrap();
    assert_eq!(tk.jwks()["keys"].as_array().unwrap().len(), 2, "{}", tk.jwks());
}
