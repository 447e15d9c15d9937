//! Micro-benchmarks of the per-request token work: access-token verification
//! (in full, and for a token already seen) and refresh-token hashing / successor
//! derivation.

// A benchmark that cannot set up stops with a panic that says why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use authgraph::domain::{SessionId, UserId};
use authgraph::{
    auth::{
        secrets::{OneTimeSecrets, hash_token},
        tokens::TokenKeys,
    },
    secret::Secret,
};
use criterion::{Criterion, criterion_group, criterion_main};
use entity::user::Role;

fn tokens(c: &mut Criterion) {
    let secret = Secret::new(vec![7u8; 32]);
    let keys = TokenKeys::new(&secret, "authgraph", "authgraph", Duration::from_secs(900));
    let now = chrono::Utc::now().timestamp();
    let token =
        keys.issue(UserId::new(), "ada@example.com", Role::User, SessionId::new(), now, now + 3600).unwrap().token;
    c.bench_function("access token verify (HS256 + claims)", |b| {
        b.iter(|| keys.verify(std::hint::black_box(&token), now).unwrap())
    });
    // What a request pays for a token it has presented before (the usual case).
    keys.check(&token, now).unwrap();
    c.bench_function("access token check, remembered (SHA-256 + claims)", |b| {
        b.iter(|| keys.check(std::hint::black_box(&token), now).unwrap())
    });
    c.bench_function("access token issue (HS256)", |b| {
        b.iter(|| keys.issue(UserId::new(), "ada@example.com", Role::User, SessionId::new(), now, now + 3600).unwrap())
    });
    let refresh = OneTimeSecrets::new(&secret);
    let rt = refresh.generate().unwrap();
    c.bench_function("refresh token hash (SHA-256)", |b| b.iter(|| hash_token(std::hint::black_box(&rt))));
    c.bench_function("refresh token successor (HMAC-SHA256)", |b| {
        b.iter(|| refresh.successor(std::hint::black_box(&rt)))
    });
    c.bench_function("refresh token generate (256 random bits)", |b| b.iter(|| refresh.generate().unwrap()));
}

criterion_group!(benches, tokens);
criterion_main!(benches);
