//! The Worker's read cache: recent answers kept in the isolate's memory, so a read of a
//! popular counter is answered by the Worker alone, without a round trip to its Durable
//! Object.
//!
//! Reads outnumber writes ten to one, and a Durable Object serves one request at a time: the
//! objects would be the bottleneck of the read path. Each isolate (many per data centre in
//! production, one under `wrangler dev`) keeps the last view of up to `EDGE_CACHE_COUNTERS`
//! counters per region for `EDGE_CACHE_MS`. A cached view is a value the system really held,
//! so it stays a lower bound of the global count; it is at most `EDGE_CACHE_MS` older than the
//! object's own answer, and the session token still holds every client to what it has seen.
//! A newer view replaces a cached one only if it covers it (a later epoch, or both halves at
//! least as high in the same one), so the cache never moves backwards while an entry lives.

use std::num::NonZeroUsize;

use lru::LruCache;
use tally_crdt::{CounterKey, Timestamp};

use crate::counter::View;

/// Cached views, by region and counter.
pub struct IsolateCache {
    entries: LruCache<(String, CounterKey), (View, Timestamp)>,
    ttl_ms: u64,
}

impl IsolateCache {
    /// A cache of `capacity` counters, each fresh for `ttl_ms` (0 turns the cache off).
    pub fn new(capacity: usize, ttl_ms: u64) -> IsolateCache {
        IsolateCache {
            entries: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
            ttl_ms,
        }
    }

    /// The cached view of `key` in `region`, if fresh at `now`, aged by its time in the cache.
    pub fn get(&mut self, region: &str, key: &CounterKey, now: Timestamp) -> Option<View> {
        if self.ttl_ms == 0 {
            return None;
        }
        let slot = (region.to_owned(), key.clone());
        let (view, at) = *self.entries.get(&slot)?;
        let age = now.millis_since(at);
        if age >= self.ttl_ms {
            self.entries.pop(&slot);
            return None;
        }
        Some(View {
            age_ms: view.age_ms.map(|a| a.saturating_add(age)),
            ..view
        })
    }

    /// Keeps an object's answer, unless a fresh cached view is ahead of it. Views without a
    /// global part (nothing heard yet) are not kept: the next read asks the object again.
    pub fn put(&mut self, region: &str, key: &CounterKey, view: View, now: Timestamp) {
        if self.ttl_ms == 0 || view.age_ms.is_none() {
            return;
        }
        let slot = (region.to_owned(), key.clone());
        if let Some((held, at)) = self.entries.peek(&slot)
            && now.millis_since(*at) < self.ttl_ms
            && !view.bound().covers(held.bound())
        {
            return;
        }
        self.entries.put(slot, (view, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_crdt::{CounterKind, GlobalTotals};

    fn key() -> CounterKey {
        CounterKey::new(CounterKind::G, "home").unwrap()
    }
    fn view(p: u128) -> View {
        View {
            totals: GlobalTotals { p, n: 0 },
            updated_at: None,
            age_ms: Some(100),
            epoch: 0,
        }
    }
    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms)
    }

    #[test]
    fn a_view_is_served_until_it_expires_and_ages_meanwhile() {
        let mut c = IsolateCache::new(10, 1000);
        c.put("eu", &key(), view(5), at(0));
        assert_eq!(
            c.get("eu", &key(), at(400)).map(|v| v.age_ms),
            Some(Some(500))
        );
        assert!(c.get("us", &key(), at(400)).is_none(), "per region");
        assert!(c.get("eu", &key(), at(1000)).is_none());
    }

    #[test]
    fn an_older_view_never_replaces_a_newer_one() {
        let mut c = IsolateCache::new(10, 1000);
        c.put("eu", &key(), view(9), at(0));
        c.put("eu", &key(), view(7), at(10));
        assert_eq!(c.get("eu", &key(), at(20)).unwrap().totals.p, 9);
        c.put("eu", &key(), view(12), at(30));
        assert_eq!(c.get("eu", &key(), at(40)).unwrap().totals.p, 12);
    }

    #[test]
    fn a_reset_replaces_a_higher_count_of_the_epoch_before() {
        let mut c = IsolateCache::new(10, 1000);
        c.put("eu", &key(), view(9), at(0));
        c.put(
            "eu",
            &key(),
            View {
                epoch: 1,
                ..view(2)
            },
            at(10),
        );
        assert_eq!(c.get("eu", &key(), at(20)).unwrap().totals.p, 2);
        c.put("eu", &key(), view(12), at(30));
        assert_eq!(
            c.get("eu", &key(), at(40)).unwrap().bound(),
            View {
                epoch: 1,
                ..view(2)
            }
            .bound(),
            "a view of the epoch before never comes back"
        );
    }

    #[test]
    fn partial_views_and_a_zero_ttl_are_not_cached() {
        let mut c = IsolateCache::new(10, 1000);
        let mut partial = view(3);
        partial.age_ms = None;
        c.put("eu", &key(), partial, at(0));
        assert!(c.get("eu", &key(), at(1)).is_none());
        let mut off = IsolateCache::new(10, 0);
        off.put("eu", &key(), view(3), at(0));
        assert!(off.get("eu", &key(), at(1)).is_none());
    }

    #[test]
    fn the_capacity_bounds_the_cache() {
        let mut c = IsolateCache::new(2, 1000);
        for id in ["a", "b", "c"] {
            c.put(
                "eu",
                &CounterKey::new(CounterKind::G, id).unwrap(),
                view(1),
                at(0),
            );
        }
        let a = CounterKey::new(CounterKind::G, "a").unwrap();
        assert!(
            c.get("eu", &a, at(1)).is_none(),
            "the least recently used went first"
        );
    }
}
