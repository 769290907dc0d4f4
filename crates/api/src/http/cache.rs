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

/// Entries, and bytes of bodies, kept before the cache starts over (bounds memory under many
/// distinct queries: a `/v1/regions` body is ~2 MB with thousands of regions).
const MAX_ENTRIES: usize = 4096;
const MAX_BYTES: usize = 64 << 20;

#[derive(Default)]
pub struct SummaryCache {
    map: RwLock<Entries>,
}

#[derive(Default)]
struct Entries {
    /// key -> (views generation, position, body).
    map: HashMap<Key, (u64, u64, Bytes)>,
    bytes: usize,
}

impl SummaryCache {
    /// The cached body for `key` if it is still current: made from the views of `generation`
    /// (a replay swaps in new ones), and for a live key only while the views are at
    /// `live_position` (a past position never changes).
    pub fn get(&self, key: &Key, live_position: u64, generation: u64) -> Option<Bytes> {
        let entries = self.map.read().unwrap_or_else(|p| p.into_inner());
        let (made_from, position, body) = entries.map.get(key)?;
        (*made_from == generation && (key.3.is_some() || *position == live_position))
            .then(|| body.clone())
    }

    /// Keeps `body`, computed from the views of `generation` (read before computing it).
    pub fn put(&self, key: Key, position: u64, generation: u64, body: Bytes) {
        let mut entries = self.map.write().unwrap_or_else(|p| p.into_inner());
        let full = entries.map.len() >= MAX_ENTRIES || entries.bytes + body.len() > MAX_BYTES;
        if full && !entries.map.contains_key(&key) {
            entries.map.clear();
            entries.bytes = 0;
        }
        entries.bytes += body.len();
        if let Some((_, _, old)) = entries.map.insert(key, (generation, position, body)) {
            entries.bytes -= old.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(at: Option<u64>) -> Key {
        ("UA-63".into(), None, None, at)
    }

    #[test]
    fn entries_of_replaced_views_are_stale() {
        let cache = SummaryCache::default();
        cache.put(key(Some(5)), 5, 0, Bytes::from_static(b"old"));
        cache.put(key(None), 9, 0, Bytes::from_static(b"live"));
        assert_eq!(cache.get(&key(Some(5)), 9, 0).as_deref(), Some(&b"old"[..]));
        assert_eq!(cache.get(&key(None), 9, 0).as_deref(), Some(&b"live"[..]));
        assert_eq!(cache.get(&key(None), 10, 0), None, "the views moved on");
        // A replay swapped in rebuilt views: nothing made from the old ones is served.
        assert_eq!(cache.get(&key(Some(5)), 9, 1), None);
        assert_eq!(cache.get(&key(None), 9, 1), None);
    }

    #[test]
    fn bodies_are_bounded_in_bytes() {
        let cache = SummaryCache::default();
        let big = Bytes::from(vec![b'x'; MAX_BYTES / 2 + 1]);
        cache.put(key(Some(1)), 1, 0, big.clone());
        cache.put(key(Some(2)), 2, 0, big);
        // The second did not fit beside the first: the cache started over.
        assert_eq!(cache.get(&key(Some(1)), 2, 0), None);
        assert!(cache.get(&key(Some(2)), 2, 0).is_some());
        let entries = cache.map.read().unwrap();
        assert_eq!(entries.bytes, MAX_BYTES / 2 + 1);
    }
}
