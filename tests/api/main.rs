//! All black-box tests, in one binary to keep builds fast.

mod helpers;

mod http;
mod fuzz;
mod resilience;
