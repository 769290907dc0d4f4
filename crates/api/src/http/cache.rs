//! Serialized regional summaries, reused while they are current.
//!
//! A summary at a past position never changes (the log is append-only), and a live summary
//! stays valid until the views apply another event, so a read-mostly load computes each
//! summary once. Read-your-writes holds: an acknowledged append has moved the views'
//! position, which invalidates every live entry.

use std::collections::HashMap;
use std::sync::RwLock;

use axum::body::Bytes;

/// (region code or "*" for all, from, to, resolved position or `None` for live).
pub type Key = (String, Option<String>, Option<String>, Option<u64>);

/// Entries kept before the cache starts over (bounds memory under many distinct queries).
const MAX_ENTRIES: usize = 4096;

#[derive(Default)]
pub struct SummaryCache {
    map: RwLock<HashMap<Key, (u64, Bytes)>>,
}

impl SummaryCache {
    /// The cached body for `key` if it is still current: always for a past position, for a
    /// live one only while the views are at `live_position`.
    pub fn get(&self, key: &Key, live_position: u64) -> Option<Bytes> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let (position, body) = map.get(key)?;
        (key.3.is_some() || *position == live_position).then(|| body.clone())
    }

    pub fn put(&self, key: Key, position: u64, body: Bytes) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
            map.clear();
        }
        map.insert(key, (position, body));
    }
}
