//! All black-box tests, in one binary to keep builds fast.

// Tests fail loudly: a panic is their way to report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;
mod ops;

mod abuse;
mod accounts;
mod admin;
mod api_keys;
mod commands;
mod contract;
mod cross_site;
mod events;
mod fuzz;
mod hardening;
mod http;
mod instances;
mod live;
mod logging;
mod mail;
mod metrics;
mod resilience;
mod second_factor;
mod sessions;
mod signing_keys;
mod smtp;
mod tokens;
