//! All black-box tests, in one binary to keep builds fast.

mod helpers;

mod accounts;
mod fuzz;
mod http;
mod resilience;
mod tokens;
