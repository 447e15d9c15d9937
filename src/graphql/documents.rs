//! Parsed documents, kept per query text, with their validation when it can be
//! reused.
//!
//! Clients send the same few documents again and again (`me`, `login`,
//! `refreshToken`, a session list), and parsing costs more than answering most
//! of them. A document that parsed, passed the request guard and validated once
//! is kept here with what the guard counted in it, and handed out again for the
//! same text: parsing is skipped for every later request.
//!
//! Validation reads variable values, so its result is reused only by requests
//! without variables, for the operation name it was run for. A request with
//! variables gets the kept document but is validated as usual.
//!
//! What is kept is bounded and holds no secrets:
//! - at most `capacity` documents, least recently used first out;
//! - only documents of at most `MAX_QUERY_BYTES`;
//! - never a document containing a string literal (every GraphQL string
//!   literal starts with `"`), so no password, token or search term written
//!   inline stays in memory. Values sent as variables are never kept.

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use async_graphql::{
    Positioned, ValidationResult,
    parser::types::{DocumentOperations, ExecutableDocument, OperationDefinition},
};
use lru::LruCache;

/// Longest query text kept.
pub const MAX_QUERY_BYTES: usize = 4096;

/// What the request guard counted in a document.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub aliases: usize,
    pub credential_fields: usize,
    /// `__schema` or `__type` selections.
    pub introspection: usize,
    /// The most root fields a subscription operation of the document selects
    /// (through fragments too); the spec allows one.
    pub subscription_roots: usize,
}

/// A document that parsed, passed the guard and validated at least once.
pub struct Checked {
    pub document: ExecutableDocument,
    pub counts: Counts,
    /// Its validation without variables, if it has had one.
    pub validated: Option<Validated>,
}

/// A validation result that holds for requests without variables.
#[derive(Clone)]
pub struct Validated {
    /// The operation name it was validated for.
    pub operation_name: Option<String>,
    pub result: ValidationResult,
}

impl Checked {
    /// The kept validation, if it holds for a request without variables that
    /// names this operation.
    pub fn validation_for(&self, operation_name: Option<&str>) -> Option<ValidationResult> {
        self.validated.as_ref().filter(|v| v.operation_name.as_deref() == operation_name).map(|v| v.result)
    }
}

/// The operation a request with this operation name runs, as the engine picks
/// it: the only one, or the one named. `None` when that is ambiguous or absent
/// (the engine answers those with an error).
pub fn selected_operation<'d>(
    document: &'d ExecutableDocument,
    operation_name: Option<&str>,
) -> Option<&'d Positioned<OperationDefinition>> {
    match (&document.operations, operation_name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        (DocumentOperations::Multiple(_), None) => None,
    }
}

pub struct DocumentCache {
    entries: Mutex<LruCache<String, Arc<Checked>>>,
}

impl DocumentCache {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self { entries: Mutex::new(LruCache::new(capacity)) }
    }

    /// Whether a document with this text may be kept at all.
    pub fn may_keep(query: &str) -> bool {
        query.len() <= MAX_QUERY_BYTES && !query.contains('"')
    }

    /// The checked document for this text, if kept.
    pub fn get(&self, query: &str) -> Option<Arc<Checked>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(query).cloned()
    }

    /// Keeps a checked document, unless its text may not be kept.
    pub fn put(&self, query: &str, checked: Checked) {
        if !Self::may_keep(query) {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.put(query.to_owned(), Arc::new(checked));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use async_graphql::CacheControl;

    use super::*;

    fn validation(complexity: usize) -> ValidationResult {
        ValidationResult { cache_control: CacheControl::default(), complexity, depth: 2 }
    }

    fn checked(query: &str, validated_for: Option<Option<&str>>) -> Checked {
        Checked {
            document: async_graphql::parser::parse_query(query).unwrap(),
            counts: Counts { aliases: 1, ..Counts::default() },
            validated: validated_for
                .map(|name| Validated { operation_name: name.map(str::to_owned), result: validation(2) }),
        }
    }

    #[test]
    fn keeps_a_document_for_its_text_and_its_validation_for_one_operation() {
        let cache = DocumentCache::new(NonZeroUsize::new(4).unwrap());
        let q = "query Me { me { id } } query Other { me { email } }";
        assert!(cache.get(q).is_none());
        cache.put(q, checked(q, Some(Some("Me"))));
        let hit = cache.get(q).expect("kept");
        assert_eq!(hit.counts.aliases, 1);
        assert_eq!(hit.validation_for(Some("Me")).map(|v| v.complexity), Some(2));
        // The same text for another operation, or none, was not validated for it.
        assert!(hit.validation_for(Some("Other")).is_none());
        assert!(hit.validation_for(None).is_none());
        // Text must match exactly.
        assert!(cache.get("query Me { me { id } }").is_none());
    }

    #[test]
    fn a_document_validated_only_with_variables_has_no_reusable_validation() {
        let cache = DocumentCache::new(NonZeroUsize::new(4).unwrap());
        let q = "mutation($i: LoginInput!) { login(input: $i) { accessToken } }";
        cache.put(q, checked(q, None));
        let hit = cache.get(q).expect("the parsed document is kept");
        assert!(hit.validation_for(None).is_none());
    }

    #[test]
    fn is_bounded_and_drops_the_least_recently_used() {
        let cache = DocumentCache::new(NonZeroUsize::new(2).unwrap());
        let (a, b, c) = ("{ a: __typename }", "{ b: __typename }", "{ c: __typename }");
        cache.put(a, checked(a, Some(None)));
        cache.put(b, checked(b, Some(None)));
        assert!(cache.get(a).is_some()); // a is now the most recent
        cache.put(c, checked(c, Some(None)));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(b).is_none(), "b was the least recently used");
        assert!(cache.get(a).is_some());
        assert!(cache.get(c).is_some());
    }

    #[test]
    fn never_keeps_string_literals_or_long_documents() {
        let cache = DocumentCache::new(NonZeroUsize::new(8).unwrap());
        let secret = r#"query { tokenInfo(accessToken: "eyJhbGciOi") { active } }"#;
        cache.put(secret, checked(secret, Some(None)));
        let block = r#"query { tokenInfo(accessToken: """eyJhbGciOi""") { active } }"#;
        cache.put(block, checked(block, None));
        let long = format!("{{ {} }}", "__typename ".repeat(MAX_QUERY_BYTES / 10));
        assert!(long.len() > MAX_QUERY_BYTES);
        cache.put(&long, checked(&long, Some(None)));
        assert_eq!(cache.len(), 0);
        assert!(!DocumentCache::may_keep(secret));
        assert!(DocumentCache::may_keep("{ me { id } }"));
    }
}
