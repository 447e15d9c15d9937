//! authgraph: a GraphQL authentication server.
//!
//! Data flows one way: HTTP (`http`) → GraphQL (`graphql`) → business rules
//! (`service`) → storage (`entity`, `migration`, `db`).

pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod graphql;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod secret;
pub mod service;
pub mod telemetry;

#[cfg(test)]
mod layering_tests;
#[cfg(test)]
mod readme_sections;
