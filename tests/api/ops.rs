//! The GraphQL documents that more than one test file sends, by name, so that
//! a change to the schema is made in one place. A document only one file uses
//! stays in that file, next to the test that reads its answer.

// Accounts

/// Registers (`$i: RegisterInput!`); asks for the whole payload: tokens, type, lifetime, user.
pub const REGISTER_PAYLOAD: &str = "mutation($i: RegisterInput!) { register(input: $i) { accessToken tokenType expiresIn refreshToken user { id email name role } } }";
/// Logs in (`$i: LoginInput!`); asks for the whole payload: tokens, type, lifetime, user.
pub const LOGIN_PAYLOAD: &str = "mutation($i: LoginInput!) { login(input: $i) { accessToken tokenType expiresIn refreshToken user { id email name role } } }";
/// Registers (`$i: RegisterInput!`); asks for the two tokens only.
pub const REGISTER_TOKENS: &str = "mutation($i: RegisterInput!) { register(input: $i) { accessToken refreshToken } }";
/// Logs in (`$i: LoginInput!`); asks for the two tokens only.
pub const LOGIN_TOKENS: &str = "mutation($i: LoginInput!) { login(input: $i) { accessToken refreshToken } }";
/// Registers (`$i: RegisterInput!`); asks for the two tokens and the user's id.
pub const REGISTER_TOKENS_USER_ID: &str =
    "mutation($i: RegisterInput!) { register(input: $i) { accessToken refreshToken user { id } } }";
/// Logs in (`$i: LoginInput!`); asks for the two tokens and the user's id.
pub const LOGIN_TOKENS_USER_ID: &str =
    "mutation($i: LoginInput!) { login(input: $i) { accessToken refreshToken user { id } } }";
/// Changes the caller's password from `$c` to `$n`.
pub const CHANGE_PASSWORD: &str =
    "mutation($c: String!, $n: String!) { changePassword(currentPassword: $c, newPassword: $n) }";

// Sessions

/// Rotates the refresh token given as `$t` (BODY transport).
pub const REFRESH_BODY: &str = "mutation($t: String) { refreshToken(refreshToken: $t) { accessToken refreshToken } }";
/// Rotates the refresh cookie the request carries (COOKIE transport).
pub const REFRESH_COOKIE: &str = "mutation { refreshToken { accessToken refreshToken } }";
/// Ends the session of the cookie or bearer token the request carries.
pub const LOGOUT: &str = "mutation { logout }";
/// Ends every session of the caller (found by cookie or bearer token).
pub const LOGOUT_EVERYWHERE: &str = "mutation { logout(everywhere: true) }";
/// Ends the session of the refresh token given as `$t`.
pub const LOGOUT_TOKEN: &str = "mutation($t: String) { logout(refreshToken: $t) }";
/// Ends every session of the user of the refresh token given as `$t`.
pub const LOGOUT_EVERYWHERE_TOKEN: &str = "mutation($t: String) { logout(everywhere: true, refreshToken: $t) }";

// Administration

/// Deletes the user `$id` (admins, or keys with USERS_WRITE).
pub const DELETE_USER: &str = "mutation($id: ID!) { deleteUser(id: $id) }";
/// Ends every session of the user `$id` (admins, or keys with SESSIONS_REVOKE).
pub const REVOKE_USER_SESSIONS: &str = "mutation($id: ID!) { revokeUserSessions(id: $id) }";
/// The ids of the API keys (admins only).
pub const API_KEY_IDS: &str = "{ apiKeys { id } }";

// Queries

/// The caller's id: the cheapest check that an access token works.
pub const ME_ID: &str = "{ me { id } }";
/// The caller's email.
pub const ME_EMAIL: &str = "{ me { email } }";
/// The caller's role.
pub const ME_ROLE: &str = "{ me { role } }";
/// The caller's id and email.
pub const ME_ID_EMAIL: &str = "{ me { id email } }";
/// The caller's sessions, each with its id and whether it is the current one.
pub const ME_SESSIONS_CURRENT: &str = "{ me { sessions { id current } } }";
/// The public query every caller may run.
pub const TYPENAME: &str = "{ __typename }";
