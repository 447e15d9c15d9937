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
    service::{Services, core::limits},
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
    /// (`service::core::limits::spend_password`), where the account is known
    /// and after the checks that cost nothing (same-site, the caller's token).
    PasswordCheck,
    /// A mail asked for: one unit of the client's mail budget
    /// (`RATE_LIMIT_MAIL_PER_IP`) and one of the recipient's
    /// (`RATE_LIMIT_MAIL_PER_RECIPIENT`, keyed by the address's key, registered
    /// or not), spent by the service (`service::recovery`) once the address is known
    /// and only when a mail is queued.
    Mail,
    /// A write that checks no credential: one unit of the client's write
    /// budget (`RATE_LIMIT_WRITE_PER_IP`) and one of the caller's account's
    /// (`RATE_LIMIT_WRITE_PER_ACCOUNT`, the signed-in user or the service
    /// key), spent before the resolver runs. Every mutation is metered: a
    /// credential check, a mail, a per-client budget, or this.
    Write,
    /// Not rate limited (queries and the subscription only); the reason is
    /// kept here for the reader.
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
    ("updateProfile", Budget::Write),
    ("changePassword", Budget::PasswordCheck),
    ("refreshToken", Budget::PerIp(Action::Refresh)),
    // Ending sessions spends the client's write budget only: a stolen
    // session draining the account's budget must not stop its owner
    // logging it out.
    ("logout", Budget::PerIp(Action::Write)),
    ("revokeSession", Budget::PerIp(Action::Write)),
    ("setUserRole", Budget::Write),
    ("deleteUser", Budget::Write),
    ("revokeUserSessions", Budget::Write),
    ("createApiKey", Budget::Write),
    ("rotateApiKey", Budget::Write),
    ("revokeApiKey", Budget::Write),
    ("rotateSigningKey", Budget::Write),
    ("requestPasswordReset", Budget::Mail),
    ("resetPassword", Budget::PerIp(Action::Link)),
    ("sendVerificationEmail", Budget::Mail),
    ("verifyEmail", Budget::PerIp(Action::Link)),
    ("confirmEmailChange", Budget::PerIp(Action::Link)),
    ("enrollTotp", Budget::Write),
    ("confirmTotp", Budget::PasswordCheck),
    ("disableTotp", Budget::PasswordCheck),
    ("regenerateRecoveryCodes", Budget::PasswordCheck),
    ("verifySecondFactor", Budget::PasswordCheck),
    ("reauthenticate", Budget::PasswordCheck),
    ("startPasskeyRegistration", Budget::Write),
    ("finishPasskeyRegistration", Budget::Write),
    ("removePasskey", Budget::Write),
    ("startPasskeyLogin", Budget::PerIp(Action::Login)),
    ("finishPasskeyLogin", Budget::PasswordCheck),
    ("startPasskeyReauthentication", Budget::Write),
    ("finishPasskeyReauthentication", Budget::PasswordCheck),
    ("resetSecondFactors", Budget::Write),
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
pub(super) async fn spend(
    info: &ResolveInfo<'_>,
    svc: &Services,
    ip: IpKey,
    principal: &crate::auth::principal::Principal,
) -> ServerResult<()> {
    if info.path_node.parent.is_some() || info.is_for_introspection || info.name.starts_with("__") {
        return Ok(());
    }
    let outcome = match of(info.name) {
        Some(Budget::PerIp(action)) => limits::spend_ip(svc, action, ip).await,
        Some(Budget::Write) => {
            use crate::auth::principal::Principal;
            let account = match principal {
                Principal::User(me) => Some(format!("user:{}", me.user_id)),
                Principal::Service(key) => Some(format!("key:{}", key.key_id)),
                Principal::Anonymous | Principal::Rejected(_) => None,
            };
            async {
                limits::spend_ip(svc, Action::Write, ip).await?;
                match account {
                    Some(account) => limits::spend_write(svc, &account).await,
                    None => Ok(()),
                }
            }
            .await
        }
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

        // Every mutation the schema has is a credential check or metered: a
        // write a caller can trigger, aliased or batched, spends a budget.
        let unmetered: Vec<&str> = v["__schema"]["mutationType"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["name"].as_str())
            .filter(|name| matches!(of(name), Some(Budget::Unmetered(_)) | None))
            .collect();
        assert!(unmetered.is_empty(), "mutations that are neither a credential check nor metered: {unmetered:?}");
    }
}
