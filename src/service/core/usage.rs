//! API keys' last-use times, gathered in memory and written to the database
//! once a minute (and at shutdown) instead of on every request.

use std::{collections::HashMap, sync::Mutex};

use chrono::{DateTime, Utc};

use crate::domain::ApiKeyId;

/// Last-use times not yet written to the database.
#[derive(Default)]
pub struct UsageTracker {
    pending: Mutex<HashMap<ApiKeyId, DateTime<Utc>>>,
}

impl UsageTracker {
    /// Records a use at `at`; an older time never replaces a newer one (a
    /// failed write puts its times back after newer uses may have come in).
    pub(in crate::service) fn touch(&self, id: ApiKeyId, at: DateTime<Utc>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let slot = pending.entry(id).or_insert(at);
        *slot = Ord::max(*slot, at);
    }
    pub(in crate::service) fn peek(&self, id: ApiKeyId) -> Option<DateTime<Utc>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).get(&id).copied()
    }
    pub(in crate::service) fn take(&self) -> HashMap<ApiKeyId, DateTime<Utc>> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration as ChronoDuration;

    use super::*;

    #[test]
    fn a_pending_use_time_never_moves_backwards() {
        let t = UsageTracker::default();
        let id = ApiKeyId::new();
        let newer = Utc::now();
        let older = newer - ChronoDuration::seconds(30);
        t.touch(id, newer);
        // What a failed flush puts back after a newer use arrived.
        t.touch(id, older);
        assert_eq!(t.peek(id), Some(newer));
        t.touch(id, newer + ChronoDuration::seconds(1));
        assert_eq!(t.peek(id), Some(newer + ChronoDuration::seconds(1)));
    }
}
