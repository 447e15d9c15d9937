//! What every feature stands on, importing no feature: the session store and
//! its write transaction, the mail outbox's queue, spend-once rows, the event
//! log, budgets, account reads, validation, session watching, signing keys
//! and the gauges.

pub mod events;
pub mod factors;
pub mod gauges;
pub mod limits;
pub mod one_time;
pub mod outbox;
pub mod signing_keys;
pub mod store;
pub mod usage;
pub mod users;
pub mod validate;
pub mod watch;
