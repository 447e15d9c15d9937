//! Parsed and validated documents, kept per query text.
//!
//! Clients send the same few documents again and again (`me`, a session list),
//! and parsing plus validation costs more than answering them. A document that
//! parsed, passed the request guard and validated without variables is kept
//! here, with what the guard counted in it and its validation result, and
//! handed out again for the same text and operation name.
//!
//! What is kept is bounded and holds no secrets:
//! - at most `capacity` documents, least recently used first out;
//! - only documents of at most `MAX_QUERY_BYTES`;
//! - never a document containing a string literal (every GraphQL string
//!   literal starts with `"`), so no password, token or search term written
//!   inline stays in memory.
//!
//! Requests with variables are never answered from here: validation reads
//! variable values, so its result belongs to one request only.

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex},
};

use async_graphql::{ValidationResult, parser::types::ExecutableDocument};
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
}

/// A document that parsed, passed the guard and validated.
pub struct Checked {
    pub document: ExecutableDocument,
    pub counts: Counts,
    /// The operation name it was validated for.
    pub operation_name: Option<String>,
    pub validation: ValidationResult,
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

    /// The checked document for this text and operation name, if kept.
    pub fn get(&self, query: &str, operation_name: Option<&str>) -> Option<Arc<Checked>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(query).filter(|c| c.operation_name.as_deref() == operation_name).cloned()
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

    fn checked(query: &str, operation_name: Option<&str>) -> Checked {
        Checked {
            document: async_graphql::parser::parse_query(query).unwrap(),
            counts: Counts { aliases: 1, ..Counts::default() },
            operation_name: operation_name.map(str::to_owned),
            validation: ValidationResult { cache_control: CacheControl::default(), complexity: 2, depth: 2 },
        }
    }

    #[test]
    fn keeps_and_returns_a_document_for_its_text_and_operation_name() {
        let cache = DocumentCache::new(NonZeroUsize::new(4).unwrap());
        let q = "query Me { me { id } } query Other { me { email } }";
        assert!(cache.get(q, Some("Me")).is_none());
        cache.put(q, checked(q, Some("Me")));
        let hit = cache.get(q, Some("Me")).expect("kept");
        assert_eq!(hit.counts.aliases, 1);
        assert_eq!(hit.validation.complexity, 2);
        // The same text for another operation was not validated for it.
        assert!(cache.get(q, Some("Other")).is_none());
        assert!(cache.get(q, None).is_none());
        // Text must match exactly.
        assert!(cache.get("query Me { me { id } }", Some("Me")).is_none());
    }

    #[test]
    fn is_bounded_and_drops_the_least_recently_used() {
        let cache = DocumentCache::new(NonZeroUsize::new(2).unwrap());
        let (a, b, c) = ("{ a: __typename }", "{ b: __typename }", "{ c: __typename }");
        cache.put(a, checked(a, None));
        cache.put(b, checked(b, None));
        assert!(cache.get(a, None).is_some()); // a is now the most recent
        cache.put(c, checked(c, None));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(b, None).is_none(), "b was the least recently used");
        assert!(cache.get(a, None).is_some());
        assert!(cache.get(c, None).is_some());
    }

    #[test]
    fn never_keeps_string_literals_or_long_documents() {
        let cache = DocumentCache::new(NonZeroUsize::new(8).unwrap());
        let secret = r#"query { tokenInfo(accessToken: "eyJhbGciOi") { active } }"#;
        cache.put(secret, checked(secret, None));
        let block = r#"query { tokenInfo(accessToken: """eyJhbGciOi""") { active } }"#;
        cache.put(block, checked(block, None));
        let long = format!("{{ {} }}", "__typename ".repeat(MAX_QUERY_BYTES / 10));
        assert!(long.len() > MAX_QUERY_BYTES);
        cache.put(&long, checked(&long, None));
        assert_eq!(cache.len(), 0);
        assert!(!DocumentCache::may_keep(secret));
        assert!(DocumentCache::may_keep("{ me { id } }"));
    }
}
