//! Which rate-limit budget each operation draws from, in one table.
//!
//! Every root field of the schema (a query or a mutation) is listed in
//! [`BUDGETS`]: the per-client budget it spends before its resolver runs, the
//! password-check budgets its service spends, or why it has none. The request
//! guard spends a [`Budget::PerIp`] for each call of the field (an alias and
//! each operation of a batch count once, a field skipped by `@skip` not at all),
//! and a served request naming a root field missing from the table is refused,
//! so a new operation cannot ship without a decision; a test holds the table
//! and the schema equal.
//!
//! The password-hashing queue (`auth::password`) is a budget too: full, it
//! answers `RATE_LIMITED`.

use async_graphql::{PathSegment, ServerError, ServerResult, extensions::ResolveInfo};

use crate::{
    auth::rate_limit::{Action, IpKey},
    error::AppError,
    service::{Services, limits},
};

/// What a root field costs its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// One unit of the client's budget for this action (per IPv4 address or
    /// IPv6 /64; `RATE_LIMIT_*_PER_IP`), spent before the resolver runs.
    PerIp(Action),
    /// A credential check (a password, a second-factor code, a passkey's
    /// answer): one unit of the client's login budget and one of the
    /// account's (`RATE_LIMIT_LOGIN_PER_ACCOUNT`, keyed by the address's key,
    /// registered or not; a discoverable passkey's answer, whose account is not
    /// known before it is checked, spends the client's only), spent by the
    /// service before it hashes or checks
    /// (`service::accounts::spend_password_budget`), where the account is known
    /// and after the checks that cost nothing (same-site, the caller's token).
    PasswordCheck,
    /// A mail asked for: one unit of the client's mail budget
    /// (`RATE_LIMIT_MAIL_PER_IP`) and one of the recipient's
    /// (`RATE_LIMIT_MAIL_PER_RECIPIENT`, keyed by the address's key, registered
    /// or not), spent by the service (`service::mail`) once the address is known
    /// and only when a mail is queued.
    Mail,
    /// Not rate limited; the reason is kept here for the reader.
    Unmetered(&'static str),
}

const TOKEN: &str = "needs a live access token or API key, and checks no password";

/// Every root field and its budget. Sorted by type (queries, mutations, the
/// subscription), then as in the schema.
pub const BUDGETS: &[(&str, Budget)] = &[
    // Query
    ("me", Budget::Unmetered(TOKEN)),
    ("users", Budget::Unmetered(TOKEN)),
    ("user", Budget::Unmetered(TOKEN)),
    ("apiKeys", Budget::Unmetered(TOKEN)),
    ("signingKeys", Budget::Unmetered(TOKEN)),
    ("auditEvents", Budget::Unmetered(TOKEN)),
    ("tokenInfo", Budget::Unmetered("an API key's check of a token; answered from memory")),
    // Mutation
    ("register", Budget::PerIp(Action::Register)),
    ("login", Budget::PasswordCheck),
    ("updateProfile", Budget::Mail),
    ("changePassword", Budget::PasswordCheck),
    ("refreshToken", Budget::PerIp(Action::Refresh)),
    ("logout", Budget::Unmetered("ends sessions; a refresh token presented to it has only refresh's power")),
    ("revokeSession", Budget::Unmetered(TOKEN)),
    ("setUserRole", Budget::Unmetered(TOKEN)),
    ("deleteUser", Budget::Unmetered(TOKEN)),
    ("revokeUserSessions", Budget::Unmetered(TOKEN)),
    ("createApiKey", Budget::Unmetered(TOKEN)),
    ("rotateApiKey", Budget::Unmetered(TOKEN)),
    ("revokeApiKey", Budget::Unmetered(TOKEN)),
    ("rotateSigningKey", Budget::Unmetered(TOKEN)),
    ("requestPasswordReset", Budget::Mail),
    ("resetPassword", Budget::PerIp(Action::Link)),
    ("sendVerificationEmail", Budget::Mail),
    ("verifyEmail", Budget::PerIp(Action::Link)),
    ("confirmEmailChange", Budget::PerIp(Action::Link)),
    ("enrollTotp", Budget::Unmetered(TOKEN)),
    ("confirmTotp", Budget::PasswordCheck),
    ("disableTotp", Budget::PasswordCheck),
    ("regenerateRecoveryCodes", Budget::PasswordCheck),
    ("verifySecondFactor", Budget::PasswordCheck),
    ("reauthenticate", Budget::PasswordCheck),
    ("startPasskeyRegistration", Budget::Unmetered(TOKEN)),
    ("finishPasskeyRegistration", Budget::Unmetered(TOKEN)),
    ("removePasskey", Budget::Unmetered(TOKEN)),
    ("startPasskeyLogin", Budget::PerIp(Action::Login)),
    ("finishPasskeyLogin", Budget::PasswordCheck),
    ("startPasskeyReauthentication", Budget::Unmetered(TOKEN)),
    ("finishPasskeyReauthentication", Budget::PasswordCheck),
    ("resetSecondFactors", Budget::Unmetered(TOKEN)),
    // Subscription
    ("sessionEvents", Budget::Unmetered("needs a live access token in connection_init; watches its own session")),
];

/// The budget of a root field, if the table has one.
pub fn of(field: &str) -> Option<Budget> {
    BUDGETS.iter().find(|(name, _)| *name == field).map(|(_, b)| *b)
}

/// Spends the budget of the field being resolved, if it is a root field.
/// Errors: `RATE_LIMITED` past the budget; `INTERNAL_SERVER_ERROR` for a root
/// field missing from [`BUDGETS`] (fails closed).
pub(super) async fn spend(info: &ResolveInfo<'_>, svc: &Services, ip: IpKey) -> ServerResult<()> {
    if info.path_node.parent.is_some() || info.is_for_introspection || info.name.starts_with("__") {
        return Ok(());
    }
    let outcome = match of(info.name) {
        Some(Budget::PerIp(action)) => limits::spend_ip(svc, action, ip).await,
        Some(Budget::PasswordCheck | Budget::Mail | Budget::Unmetered(_)) => Ok(()),
        None => Err(AppError::internal(format!("no rate-limit budget is declared for `{}`", info.name))),
    };
    outcome.map_err(|err| {
        // Logged as a resolver's internal error would be.
        if let AppError::Internal(detail) = &err {
            tracing::error!(error = %detail, "internal error");
        }
        // The field's own position and path, as an error from its resolver has.
        let pos = info.field.alias.as_ref().map_or(info.field.name.pos, |alias| alias.pos);
        let mut server_error: ServerError = err.into_server_error();
        server_error.locations = vec![pos];
        server_error.path = vec![PathSegment::Field(info.alias.unwrap_or(info.name).to_owned())];
        server_error
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every root field of the schema has a declared budget, and the table names
    /// no field the schema lacks.
    #[tokio::test]
    async fn every_operation_declares_its_budget() {
        let limits = crate::graphql::Limits {
            depth: usize::MAX,
            complexity: usize::MAX,
            aliases: usize::MAX,
            introspection: true,
        };
        let schema = crate::graphql::schema_builder(limits, crate::graphql::document_cache()).finish();
        let v = schema
            .execute(
                "{ __schema { queryType { fields { name } } mutationType { fields { name } } \
                 subscriptionType { fields { name } } } }",
            )
            .await
            .data
            .into_json()
            .unwrap();
        let mut fields: Vec<String> = Vec::new();
        for root in ["queryType", "mutationType", "subscriptionType"] {
            for f in v["__schema"][root]["fields"].as_array().unwrap() {
                fields.push(f["name"].as_str().unwrap().to_owned());
            }
        }
        assert!(fields.len() > 10, "{v}");
        let missing: Vec<&String> = fields.iter().filter(|f| of(f).is_none()).collect();
        assert!(missing.is_empty(), "root fields without a budget in BUDGETS: {missing:?}");
        for (name, _) in BUDGETS {
            assert!(fields.iter().any(|f| f == name), "BUDGETS lists `{name}`, which the schema does not have");
        }
    }
}
