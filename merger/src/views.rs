//! [`ViewCache`]: the public reads of viewers now, unique visitors and milestone lists, from
//! memory.
//!
//! `GET /v1/presence/{id}`, `GET /v1/unique/{id}` and `GET /v1/counters/{id}/milestones` are
//! open to anyone (without `--private-reads`), and each used to query the store. Their answers are kept here for
//! [`VIEW_TTL`] (one second, as the edge's isolate cache keeps a count), at most
//! `--cache-counters` of each (oldest out first), so a popular id costs the store one query a
//! second and a flood of random ids costs a bounded amount of memory. A report, sketch merge,
//! milestone registration or cancel, or a commit deciding a milestone, through this merger
//! drops the entries it changes, so its own writes show at once; another merger's show within
//! [`VIEW_TTL`].

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

/// How long an answer is served from memory.
pub const VIEW_TTL: Duration = Duration::from_secs(1);

/// A bounded, short-lived map from a view's key to its answer.
#[derive(Debug)]
pub struct ViewCache<V> {
    entries: Mutex<Entries<V>>,
    capacity: usize,
    ttl: Duration,
    /// Reads answered from memory.
    pub hits: Counter,
    /// Reads that went to the store.
    pub misses: Counter,
}

#[derive(Debug)]
enum Entry<V> {
    /// The store's answer, as of when it was asked.
    Answer(Instant, V),
    /// The key's state changed here at that instant: an answer asked before is stale.
    Changed(Instant),
}

#[derive(Debug)]
struct Entries<V> {
    map: HashMap<String, Entry<V>>,
    /// The keys of `map` in insertion order (a key leaves both only when it is the oldest).
    order: VecDeque<String>,
}

impl<V: Clone> ViewCache<V> {
    /// An empty cache of at most `capacity` answers (at least 1), each fresh for `ttl`,
    /// counting into `hits` and `misses`.
    pub fn new(capacity: usize, ttl: Duration, hits: Counter, misses: Counter) -> ViewCache<V> {
        ViewCache {
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
            capacity: capacity.max(1),
            ttl,
            hits,
            misses,
        }
    }

    /// The fresh answer for `key`, if any (counted as a hit or a miss).
    pub fn get(&self, key: &str) -> Option<V> {
        let entries = self.lock();
        let fresh = match entries.map.get(key) {
            Some(Entry::Answer(at, v)) if at.elapsed() < self.ttl => Some(v.clone()),
            _ => None,
        };
        if fresh.is_some() {
            self.hits.inc();
        } else {
            self.misses.inc();
        }
        fresh
    }

    /// Keeps `value` as `key`'s answer, as of `loaded` (when the store was asked): not if the
    /// key changed here since, nor if it is older than the TTL.
    pub fn put(&self, key: String, value: V, loaded: Instant) {
        let mut entries = self.lock();
        if loaded.elapsed() >= self.ttl {
            return;
        }
        if let Some(Entry::Changed(at) | Entry::Answer(at, _)) = entries.map.get(&key)
            && *at > loaded
        {
            return;
        }
        if entries
            .map
            .insert(key.clone(), Entry::Answer(loaded, value))
            .is_none()
        {
            entries.order.push_back(key);
        }
        self.bound(&mut entries);
    }

    /// Notes that `key`'s state changed here: its answer goes, and an answer asked before now
    /// is not kept.
    pub fn changed(&self, key: &str) {
        let mut entries = self.lock();
        let now = Instant::now();
        if entries
            .map
            .insert(key.to_owned(), Entry::Changed(now))
            .is_none()
        {
            entries.order.push_back(key.to_owned());
        }
        self.bound(&mut entries);
    }

    fn bound(&self, entries: &mut Entries<V>) {
        while entries.map.len() > self.capacity {
            match entries.order.pop_front() {
                Some(oldest) => {
                    entries.map.remove(&oldest);
                }
                None => break,
            }
        }
    }

    /// Answers held now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<V>> {
        self.entries
            .lock()
            .expect("no thread panics while holding the view cache")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_served_for_their_ttl_and_at_most_capacity_are_kept() {
        let cache = ViewCache::new(
            3,
            Duration::from_secs(60),
            Counter::default(),
            Counter::default(),
        );
        assert_eq!(cache.get("a"), None);
        for (i, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
            cache.put(key.into(), i, Instant::now());
        }
        assert_eq!(cache.len(), 3, "the oldest went");
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("d"), Some(3));
        let before = Instant::now();
        cache.changed("d");
        assert_eq!(cache.get("d"), None);
        cache.put("d".into(), 3, before);
        assert_eq!(
            cache.get("d"),
            None,
            "an answer asked before the change is stale"
        );
        cache.put("d".into(), 4, Instant::now());
        assert_eq!((cache.hits.get(), cache.misses.get()), (1, 4));
        assert_eq!(cache.get("d"), Some(4));
        // Random keys never grow it past its capacity.
        for i in 0..1000 {
            cache.put(format!("random-{i}"), i, Instant::now());
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.lock().order.len() <= 2 * 3 + 16);
    }

    #[test]
    fn an_answer_is_fresh_for_the_ttl_only() {
        let cache = ViewCache::new(
            10,
            Duration::from_millis(20),
            Counter::default(),
            Counter::default(),
        );
        cache.put("a".into(), 1, Instant::now());
        assert_eq!(cache.get("a"), Some(1));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(cache.get("a"), None);
        // An answer loaded longer ago than the TTL is not kept.
        let old = Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        cache.put("b".into(), 2, old);
        assert_eq!(cache.get("b"), None);
    }
}
