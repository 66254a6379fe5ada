//! A small map whose entries expire: what one process remembers between requests (the
//! authorizer's allowed credentials, the organization → tenant and API-key lookups, tenants'
//! plans, and the dataset definitions queries are compiled against).
//!
//! Bounded: past its capacity it starts over, so a flood of distinct valid credentials (or
//! datasets) costs lookups, never memory. A zero TTL turns it off. Its `Debug` shows the
//! settings and the size, never an entry.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Entries of type `V` under keys of type `K`, each good for `ttl` after it was inserted.
pub(crate) struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
    /// Bumped by [`forget`](Self::forget): a lookup that began before it may not write back
    /// what it read.
    generation: AtomicU64,
}

/// When a lookup began, for [`TtlCache::insert_read_at`].
#[derive(Clone, Copy, Debug)]
pub struct Generation(u64);

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    /// A cache keeping entries for `ttl` (zero: never), holding at most `capacity`.
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: Mutex::default(),
            generation: AtomicU64::new(0),
        }
    }

    /// Take before reading what will be inserted with [`insert_read_at`](Self::insert_read_at).
    pub(crate) fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::SeqCst))
    }

    /// The entry under `key`, if it is younger than the TTL.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = self.entries.lock().ok()?;
        let (at, value) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    /// Remembers `value` under `key` from now on (nothing, when the TTL is zero).
    pub(crate) fn insert(&self, key: K, value: V) {
        self.insert_unless_forgotten(None, key, value);
    }

    /// Remembers `value`, read since `read_at`, unless something was forgotten meanwhile (the
    /// value may be what was just changed: it is read again next time instead).
    pub(crate) fn insert_read_at(&self, read_at: Generation, key: K, value: V) {
        self.insert_unless_forgotten(Some(read_at), key, value);
    }

    fn insert_unless_forgotten(&self, read_at: Option<Generation>, key: K, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            // Under the lock `forget` bumps the generation in, so no forget slips between.
            if read_at.is_some_and(|g| g.0 != self.generation.load(Ordering::SeqCst)) {
                return;
            }
            if entries.len() >= self.capacity {
                entries.clear();
            }
            entries.insert(key, (Instant::now(), value));
        }
    }

    /// Drops the entry under `key` (and, like [`forget`](Self::forget), keeps a lookup that began
    /// before from writing back what it read).
    pub(crate) fn forget_key<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Ok(mut entries) = self.entries.lock() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            entries.remove(key);
        }
    }

    /// Drops every entry whose value `stale` says is out of date (what this process itself just
    /// changed: it need not wait out the TTL).
    pub(crate) fn forget(&self, stale: impl Fn(&V) -> bool) {
        if let Ok(mut entries) = self.entries.lock() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            entries.retain(|_, (_, v)| !stale(v));
        }
    }
}

impl<K, V> std::fmt::Debug for TtlCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.entries.lock().map_or(0, |e| e.len());
        f.debug_struct("TtlCache")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("len", &len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_serves_until_its_ttl_and_not_after() {
        let cache = TtlCache::new(Duration::from_millis(200), 10);
        cache.insert("org_a".to_owned(), 1);
        assert_eq!(cache.get("org_a"), Some(1));
        assert_eq!(cache.get("org_b"), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(cache.get("org_a"), None, "expired");
        cache.insert("org_a".to_owned(), 2);
        assert_eq!(cache.get("org_a"), Some(2), "a fresh insert serves again");
    }

    fn len<K, V>(cache: &TtlCache<K, V>) -> Option<usize> {
        cache.entries.lock().ok().map(|e| e.len())
    }

    #[test]
    fn a_zero_ttl_remembers_nothing() {
        let cache = TtlCache::new(Duration::ZERO, 10);
        cache.insert(1u8, "x");
        assert_eq!(cache.get(&1), None);
        assert_eq!(len(&cache), Some(0));
    }

    #[test]
    fn past_its_capacity_it_starts_over_and_holds_several_below_it() {
        let cache = TtlCache::new(Duration::from_secs(60), 3);
        for k in 0..3u8 {
            cache.insert(k, k);
        }
        assert_eq!(
            (0..3u8).map(|k| cache.get(&k)).collect::<Vec<_>>(),
            vec![Some(0), Some(1), Some(2)]
        );
        cache.insert(3, 3);
        assert_eq!(len(&cache), Some(1));
        assert_eq!(cache.get(&0), None);
        assert_eq!(cache.get(&3), Some(3));
    }

    #[test]
    fn forget_drops_only_the_stale_entries() {
        let cache = TtlCache::new(Duration::from_secs(60), 10);
        for k in 0..4u8 {
            cache.insert(k, k % 2);
        }
        cache.forget(|v| *v == 1);
        assert_eq!(
            (0..4u8).map(|k| cache.get(&k)).collect::<Vec<_>>(),
            vec![Some(0), None, Some(0), None]
        );
    }

    #[test]
    fn a_lookup_that_began_before_a_forget_is_not_written_back() {
        let cache = TtlCache::new(Duration::from_secs(60), 10);
        let before = cache.generation();
        cache.forget(|_: &u8| false);
        cache.insert_read_at(before, 1u8, 1u8);
        assert_eq!(cache.get(&1), None, "read before the forget: maybe stale");
        let after = cache.generation();
        cache.insert_read_at(after, 1, 2);
        assert_eq!(cache.get(&1), Some(2));
    }

    #[test]
    fn debug_shows_no_entry() {
        let cache = TtlCache::new(Duration::from_secs(5), 10);
        cache.insert("sk_secret_value".to_owned(), "tenant");
        let shown = format!("{cache:?}");
        assert!(shown.contains("len: 1"), "{shown}");
        assert!(
            !shown.contains("sk_secret_value") && !shown.contains("tenant"),
            "{shown}"
        );
    }
}
