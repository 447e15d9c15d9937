//! Request shape limits that the engine's depth and complexity limits miss:
//! aliases (one `__typename` or `login` repeated a thousand times under different
//! names) and credential-checking fields (each costs an argon2 hash). Checked
//! right after parsing, before any resolver runs; the credential count is shared
//! by all operations of an array batch.

use std::sync::{Arc, atomic::Ordering};

use async_graphql::{
    ServerError, ServerResult, Variables,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery},
    parser::types::{ExecutableDocument, Selection, SelectionSet},
};

use super::SharedRequestCtx;
use crate::error::Code;

/// Fields that verify or set a password.
const CREDENTIAL_FIELDS: [&str; 3] = ["login", "register", "changePassword"];

pub struct RequestGuard {
    pub max_aliases: usize,
    pub introspection: bool,
}

impl ExtensionFactory for RequestGuard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RequestGuardExtension { max_aliases: self.max_aliases, introspection: self.introspection })
    }
}

struct RequestGuardExtension {
    max_aliases: usize,
    introspection: bool,
}

#[derive(Default)]
struct Counts {
    aliases: usize,
    credential_fields: usize,
    /// `__schema` or `__type` selections.
    introspection: usize,
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

fn refuse(message: String, reason: &str) -> ServerError {
    let mut err = ServerError::new(message, None);
    let mut ext = async_graphql::ErrorExtensionValues::default();
    ext.set("code", Code::BadUserInput.as_str());
    ext.set("reason", reason);
    err.extensions = Some(ext);
    err
}

#[async_graphql::async_trait::async_trait]
impl Extension for RequestGuardExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let doc = next.run(ctx, query, variables).await?;
        let mut counts = Counts::default();
        for (_, op) in doc.operations.iter() {
            count(&op.node.selection_set.node, &mut counts);
        }
        for frag in doc.fragments.values() {
            count(&frag.node.selection_set.node, &mut counts);
        }
        // With introspection off the engine would answer `__schema: null` without
        // an error, which is not a valid response for a non-null field.
        if !self.introspection && counts.introspection > 0 {
            return Err(refuse("Introspection is disabled on this server".to_owned(), "INTROSPECTION_DISABLED"));
        }
        if counts.aliases > self.max_aliases {
            return Err(refuse(
                format!("Too many aliases: at most {} per operation", self.max_aliases),
                "TOO_MANY_ALIASES",
            ));
        }
        if counts.credential_fields > 0 {
            let so_far = ctx
                .data_opt::<SharedRequestCtx>()
                .map(|r| r.credential_fields.fetch_add(counts.credential_fields, Ordering::SeqCst))
                .unwrap_or(0);
            if so_far + counts.credential_fields > 1 {
                return Err(refuse(
                    "At most one login, register or changePassword per request".to_owned(),
                    "TOO_MANY_CREDENTIAL_FIELDS",
                ));
            }
        }
        Ok(doc)
    }
}
