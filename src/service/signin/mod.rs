//! Signing in and what a signed-in user sets up: registration and the
//! password (`accounts`), the second factor and its challenges
//! (`second_factor`), and passkeys (`passkeys`).

pub mod accounts;
pub mod passkeys;
pub mod second_factor;
