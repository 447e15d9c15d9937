//! Request shape limits that the engine's depth and complexity limits miss:
//! aliases (one `__typename` or `login` repeated a thousand times under different
//! names) and credential-checking fields (each costs an argon2 hash). Checked
//! right after parsing, before any resolver runs; the credential count is shared
//! by all operations of an array batch.
//!
//! It also gives variables their defaults before the engine runs: async-graphql
//! 7.2 reads `@skip`/`@include` conditions from the sent variables only, so a
//! `$withEmail: Boolean = true` left out by the client counted as false. As
//! GraphQL's variable coercion requires, a missing variable takes its default,
//! and a missing non-null variable without one is a request error.
//!
//! The same extension answers repeated documents from the [`DocumentCache`]:
//! on a hit, parsing is skipped (and validation too when the request has no
//! variables and its validation is kept), and the guard's limits are applied
//! to the counts kept with the document.
//!
//! And it spends each root field's rate-limit budget, as `budget::BUDGETS`
//! declares it, right before the field's resolver runs, and counts the field
//! in the metrics (`authgraph_graphql_operations_total`) with its outcome and
//! time.

use std::sync::{Arc, Mutex, atomic::Ordering};

use async_graphql::{
    Name, Request, ServerError, ServerResult, ValidationResult, Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest, NextResolve, NextValidation,
        ResolveInfo,
    },
    parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet},
};

use super::{
    SharedRequestCtx, budget,
    documents::{Checked, Counts, DocumentCache, Validated, selected_operation},
};
use crate::{
    error::{AppError, Reason},
    service::Services,
};

/// Fields that verify or set a password, or check a second factor: one per
/// HTTP request, so that aliases and batches cannot multiply guesses.
const CREDENTIAL_FIELDS: [&str; 12] = [
    "login",
    "register",
    "changePassword",
    "resetPassword",
    "verifySecondFactor",
    "confirmTotp",
    "disableTotp",
    "regenerateRecoveryCodes",
    "reauthenticate",
    "finishPasskeyLogin",
    "finishPasskeyReauthentication",
    "finishPasskeyRegistration",
];

pub struct RequestGuard {
    pub max_aliases: usize,
    pub introspection: bool,
    pub documents: Arc<DocumentCache>,
}

impl ExtensionFactory for RequestGuard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RequestGuardExtension {
            max_aliases: self.max_aliases,
            introspection: self.introspection,
            documents: self.documents.clone(),
            state: Mutex::new(State::default()),
        })
    }
}

/// One request's way through the hooks.
#[derive(Default)]
enum State {
    /// Nothing is known yet, or the text may not be kept: parse and validate as
    /// usual, keep nothing.
    #[default]
    Unknown,
    /// The request's operation name, whether the client sent variables, and the
    /// kept document for its text, if any.
    Prepared { operation_name: Option<String>, has_variables: bool, kept: Option<Arc<Checked>> },
    /// To be kept (or its validation added) once it validates.
    Pending(Box<Pending>),
    /// Answered from the cache, validation included.
    Hit(ValidationResult),
}

struct Pending {
    query: String,
    document: ExecutableDocument,
    counts: Counts,
    /// Set when the request has no variables: its validation may be kept for
    /// this operation name. `None` keeps the document only.
    validated_for: Option<Option<String>>,
}

/// Created per request (see [`ExtensionFactory::create`]).
struct RequestGuardExtension {
    max_aliases: usize,
    introspection: bool,
    documents: Arc<DocumentCache>,
    state: Mutex<State>,
}

impl RequestGuardExtension {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The guard's limits, for counts fresh or kept.
    fn check(&self, ctx: &ExtensionContext<'_>, counts: Counts) -> ServerResult<()> {
        // With introspection off the engine would answer `__schema: null` without
        // an error, which is not a valid response for a non-null field.
        if !self.introspection && counts.introspection > 0 {
            return Err(refuse(Reason::IntrospectionDisabled, "Introspection is disabled on this server".to_owned()));
        }
        // GraphQL spec, 5.2.3.1 Single Root Field: one subscription, one
        // stream. Without it one document could open fifty watchers.
        if counts.subscription_roots > 1 {
            return Err(ServerError::new("A subscription operation must select exactly one root field", None));
        }
        if counts.aliases > self.max_aliases {
            return Err(refuse(
                Reason::TooManyAliases,
                format!("Too many aliases: at most {} per operation", self.max_aliases),
            ));
        }
        if counts.credential_fields > 0 {
            let so_far = ctx
                .data_opt::<SharedRequestCtx>()
                .map(|r| r.credential_fields.fetch_add(counts.credential_fields, Ordering::SeqCst))
                .unwrap_or(0);
            if so_far + counts.credential_fields > 1 {
                return Err(refuse(
                    Reason::TooManyCredentialFields,
                    "At most one credential-checking field (a login, a password, a second-factor code or a \
                     passkey's answer) per request"
                        .to_owned(),
                ));
            }
        }
        Ok(())
    }
}

/// A root field's outcome as a metric label: `OK`, or the error's reason, or
/// its code when it has none (the catalogue's static names only).
fn outcome<T>(result: &ServerResult<T>) -> &'static str {
    let Err(err) = result else { return "OK" };
    let ext = |name: &str| super::error_extension(err, name);
    if let Some(reason) = ext("reason").and_then(|r| Reason::ALL.iter().find(|x| x.as_str() == r)) {
        return reason.as_str();
    }
    match ext("code").as_deref() {
        Some("FORBIDDEN") => "FORBIDDEN",
        Some("BAD_USER_INPUT") => "BAD_USER_INPUT",
        Some("RATE_LIMITED") => "RATE_LIMITED",
        Some("SERVICE_UNAVAILABLE") => "SERVICE_UNAVAILABLE",
        Some("UNAUTHENTICATED") => "UNAUTHENTICATED",
        _ => "INTERNAL_SERVER_ERROR",
    }
}

/// How many root fields `set` selects, through inline fragments and
/// fragment spreads (each named fragment entered once; a repeated or
/// missing one is the engine's to refuse).
fn root_fields(set: &SelectionSet, document: &ExecutableDocument, entered: &mut Vec<String>) -> usize {
    set.items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(_) => 1,
            Selection::InlineFragment(frag) => root_fields(&frag.node.selection_set.node, document, entered),
            Selection::FragmentSpread(spread) => {
                let name = spread.node.fragment_name.node.as_str();
                match document.fragments.get(&spread.node.fragment_name.node) {
                    Some(frag) if !entered.iter().any(|e| e == name) => {
                        entered.push(name.to_owned());
                        root_fields(&frag.node.selection_set.node, document, entered)
                    }
                    _ => 0,
                }
            }
        })
        .sum()
}

fn count(set: &SelectionSet, counts: &mut Counts) {
    for item in &set.items {
        match &item.node {
            Selection::Field(f) => {
                if f.node.alias.is_some() {
                    counts.aliases += 1;
                }
                let name = f.node.name.node.as_str();
                if CREDENTIAL_FIELDS.contains(&name) {
                    counts.credential_fields += 1;
                }
                if name == "__schema" || name == "__type" {
                    counts.introspection += 1;
                }
                count(&f.node.selection_set.node, counts);
            }
            Selection::InlineFragment(frag) => count(&frag.node.selection_set.node, counts),
            // Spread fragments are counted once, where they are defined.
            Selection::FragmentSpread(_) => {}
        }
    }
}

/// The defaults to add for variables the request left out, or the name of a
/// non-null variable that has no default and was left out. Nothing when the
/// operation is not found: the engine answers that.
fn variable_defaults(
    document: &ExecutableDocument,
    operation_name: Option<&str>,
    variables: &Variables,
) -> Result<Vec<(Name, async_graphql::Value)>, Name> {
    let mut defaults = Vec::new();
    for def in selected_operation(document, operation_name)
        .map(|op| op.node.variable_definitions.as_slice())
        .unwrap_or_default()
    {
        let name = &def.node.name.node;
        if variables.contains_key(name) {
            continue;
        }
        match def.node.default_value() {
            Some(value) => defaults.push((name.clone(), value.clone())),
            None if !def.node.var_type.node.nullable => return Err(name.clone()),
            None => {}
        }
    }
    Ok(defaults)
}

fn refuse(reason: Reason, message: String) -> ServerError {
    AppError::Refused { reason, message }.into_server_error()
}

#[async_graphql::async_trait::async_trait]
impl Extension for RequestGuardExtension {
    /// Spends each root field's rate-limit budget before its resolver runs
    /// (see [`budget`]).
    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<async_graphql::Value>> {
        // Root fields of the schema, by their static name (a client's alias or
        // operation name never becomes a label).
        let root = (info.path_node.parent.is_none() && !info.is_for_introspection)
            .then(|| budget::BUDGETS.iter().find(|(name, _)| *name == info.name).map(|(name, _)| *name))
            .flatten();
        let started = std::time::Instant::now();
        let mut result = Ok(());
        if info.path_node.parent.is_none()
            && info.parent_type != "Subscription"
            && ctx.data_opt::<SharedRequestCtx>().is_some_and(|r| r.over_websocket)
        {
            result = Err(AppError::BadRequest(
                "Only subscriptions are served over the WebSocket; send queries and mutations over HTTP".into(),
            )
            .into_server_error());
        }
        if result.is_ok()
            && info.path_node.parent.is_none()
            && let (Some(services), Some(req)) = (ctx.data_opt::<Services>(), ctx.data_opt::<SharedRequestCtx>())
        {
            result = budget::spend(&info, services, req.ip_key, &req.principal).await;
        }
        let result = match result {
            Ok(()) => next.run(ctx, info).await,
            Err(e) => Err(e),
        };
        if let Some(field) = root {
            crate::metrics::operation(field, outcome(&result), started.elapsed());
        }
        result
    }

    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let mut request = next.run(ctx, request).await?;
        let has_variables = !request.variables.is_empty();
        let operation_name = request.operation_name.clone();
        let keepable = DocumentCache::may_keep(&request.query);
        let kept = if keepable { self.documents.get(&request.query) } else { None };
        // The variables are set aside while the document is borrowed from the
        // request, then put back with their defaults.
        let mut variables = std::mem::take(&mut request.variables);
        // Not kept: parsed here (or earlier, by the GET check) and left in the
        // request, where the engine takes it. One that does not parse is left for
        // the engine to report.
        let document = match &kept {
            Some(kept) => Some(&kept.document),
            None => request.parsed_query().ok(),
        };
        if let Some(document) = document {
            let defaults = variable_defaults(document, operation_name.as_deref(), &variables)
                .map_err(|name| ServerError::new(format!("Variable ${name} is non-null and was not provided"), None))?;
            for (name, value) in defaults {
                variables.insert(name, value);
            }
        }
        request.variables = variables;
        // Text that may not be kept goes through the engine as usual.
        *self.state() = if keepable { State::Prepared { operation_name, has_variables, kept } } else { State::Unknown };
        Ok(request)
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let (prepared, kept) = match std::mem::take(&mut *self.state()) {
            State::Prepared { operation_name, has_variables, kept } => (Some((operation_name, has_variables)), kept),
            _ => (None, None),
        };
        // Validation may be kept only for a request whose client sent no variables
        // (the defaults added above follow from the document itself).
        let validated_for = prepared.as_ref().and_then(|(name, has_variables)| (!has_variables).then(|| name.clone()));
        if let Some(kept) = kept {
            self.check(ctx, kept.counts)?;
            if let Some(name) = validated_for {
                *self.state() = match kept.validation_for(name.as_deref()) {
                    Some(validation) => State::Hit(validation),
                    // Kept, but not yet validated for this operation without variables.
                    None => State::Pending(Box::new(Pending {
                        query: query.to_owned(),
                        document: kept.document.clone(),
                        counts: kept.counts,
                        validated_for: Some(name),
                    })),
                };
            }
            // With variables, validation runs as usual, for this request's values.
            return Ok(kept.document.clone());
        }
        let document = next.run(ctx, query, variables).await?;
        let mut counts = Counts::default();
        for (_, op) in document.operations.iter() {
            count(&op.node.selection_set.node, &mut counts);
            if op.node.ty == OperationType::Subscription {
                let roots = root_fields(&op.node.selection_set.node, &document, &mut Vec::new());
                counts.subscription_roots = counts.subscription_roots.max(roots);
            }
        }
        for frag in document.fragments.values() {
            count(&frag.node.selection_set.node, &mut counts);
        }
        self.check(ctx, counts)?;
        if prepared.is_some() {
            *self.state() = State::Pending(Box::new(Pending {
                query: query.to_owned(),
                document: document.clone(),
                counts,
                validated_for,
            }));
        }
        Ok(document)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let state = std::mem::take(&mut *self.state());
        if let State::Hit(validation) = state {
            return Ok(validation);
        }
        let validation = next.run(ctx).await?;
        if let State::Pending(p) = state {
            let Pending { query, document, counts, validated_for } = *p;
            let validated = validated_for.map(|operation_name| Validated { operation_name, result: validation });
            self.documents.put(&query, Checked { document, counts, validated });
        }
        Ok(validation)
    }
}
