//! A replica's counters between syncs, as pure functions: hits, dirty state, sync batches,
//! applying the merger's answer, backoff, and the read formula.
//!
//! Per counter a replica keeps a [`Record`]: its own slot totals (`own`), the totals the
//! merger has acknowledged (`acked`), and the last global totals it heard (`cache`). A
//! counter is dirty while `own` is ahead of `acked`; a sync sends `own` (totals, never
//! increments), and an answer raises `acked` only to what *that* sync sent, so hits that
//! arrived meanwhile stay dirty. Nothing is dropped on failure: the totals simply go again.

use serde::{Deserialize, Serialize};
use tally_crdt::{CounterKind, Error, GlobalTotals, MergedCounter, SlotTotals, SlotUpdate};

use crate::api::Target;

/// What a replica knows of one counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// This replica's own slot.
    pub own: SlotTotals,
    /// The totals of its slot the merger has acknowledged (committed).
    pub acked: SlotTotals,
    /// The last global totals heard from the merger.
    pub cache: Option<Cache>,
    /// The newest change this replica knows of (a hit here, or the global value moving), Unix ms.
    pub changed_at: i64,
}

/// The merger's last word on a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cache {
    /// Global totals then.
    pub global: GlobalTotals,
    /// The merger's copy of this replica's slot then.
    pub recorded: SlotTotals,
    /// When it was heard, Unix ms.
    pub fetched_at: i64,
}

/// A read: the value and how old its global part is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// `global - recorded_own + current_own`.
    pub count: i128,
    /// Milliseconds since the global part was heard.
    pub age_ms: i64,
}

impl Record {
    /// Counts a hit in the own slot.
    ///
    /// # Errors
    ///
    /// [`Error::SlotOverflow`] if either half would pass `u64::MAX`; the record is unchanged.
    pub fn hit(
        &mut self,
        add: SlotTotals,
        replica: tally_crdt::ReplicaId,
        now: i64,
    ) -> Result<(), Error> {
        let overflow = |current: u64, by: u64| Error::SlotOverflow {
            replica,
            current,
            by,
        };
        let p = self
            .own
            .p
            .checked_add(add.p)
            .ok_or_else(|| overflow(self.own.p, add.p))?;
        let n = self
            .own
            .n
            .checked_add(add.n)
            .ok_or_else(|| overflow(self.own.n, add.n))?;
        self.own = SlotTotals { p, n };
        self.changed_at = self.changed_at.max(now);
        Ok(())
    }

    /// Whether the merger has not acknowledged all of the own slot yet.
    pub fn is_dirty(&self) -> bool {
        self.own.p > self.acked.p || self.own.n > self.acked.n
    }

    /// The sync entry for this counter: the own totals.
    pub fn update(&self, target: &Target) -> SlotUpdate {
        SlotUpdate {
            id: target.id.clone(),
            kind: target.kind,
            p: self.own.p,
            n: self.own.n,
        }
    }

    /// Applies the merger's answer to a sync that sent `sent`: the merger has committed
    /// `sent`, so `acked` rises to it (not to `own`, which may have moved since); the cache
    /// takes the answer unless it already holds a newer one.
    pub fn acknowledge(&mut self, sent: SlotTotals, merged: &MergedCounter, now: i64) {
        self.acked.p = self.acked.p.max(sent.p);
        self.acked.n = self.acked.n.max(sent.n);
        let newer = self.cache.is_none_or(|c| merged.global.dominates(c.global));
        if newer {
            let count = |r: &Record| r.estimate(now).and_then(Result::ok).map(|e| e.count);
            let before = count(self);
            self.cache = Some(Cache {
                global: merged.global,
                recorded: merged.recorded,
                fetched_at: now,
            });
            if count(self) != before {
                self.changed_at = self.changed_at.max(now);
            }
        }
    }

    /// The read formula from the cache, or `None` if nothing was heard from the merger yet.
    pub fn estimate(&self, now: i64) -> Option<Result<Estimate, Error>> {
        let cache = self.cache?;
        Some(
            cache
                .global
                .estimate(cache.recorded, self.own)
                .map(|count| Estimate {
                    count,
                    age_ms: now.saturating_sub(cache.fetched_at).max(0),
                }),
        )
    }

    /// Whether the cache is younger than `ttl_ms`.
    pub fn is_fresh(&self, now: i64, ttl_ms: u64) -> bool {
        let ttl = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        self.cache
            .is_some_and(|c| now.saturating_sub(c.fetched_at) < ttl)
    }

    /// The value of the own slot alone: what this replica can say with no global value.
    pub fn own_value(&self) -> i128 {
        self.own.value()
    }
}

/// The storage key of a counter's record: `c:<kind>:<id>`.
pub fn key(target: &Target) -> String {
    format!("c:{}:{}", target.kind, target.id)
}

/// The counter of a storage key.
pub fn target_of(key: &str) -> Option<Target> {
    let rest = key.strip_prefix("c:")?;
    let (kind, id) = rest.split_once(':')?;
    let kind = match kind {
        "g" => CounterKind::G,
        "pn" => CounterKind::Pn,
        _ => return None,
    };
    Some(Target {
        kind,
        id: id.to_owned(),
    })
}

/// The record as stored: `u64`/`u128` totals as decimal strings, since Durable Object
/// storage keeps JavaScript values and a JS number is exact only to 2^53.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    p: String,
    n: String,
    ap: String,
    an: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache: Option<StoredCache>,
    at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredCache {
    gp: String,
    gn: String,
    rp: String,
    rn: String,
    at: i64,
}

impl Record {
    /// The stored form (JSON text).
    pub fn to_stored(&self) -> String {
        let stored = Stored {
            p: self.own.p.to_string(),
            n: self.own.n.to_string(),
            ap: self.acked.p.to_string(),
            an: self.acked.n.to_string(),
            cache: self.cache.map(|c| StoredCache {
                gp: c.global.p.to_string(),
                gn: c.global.n.to_string(),
                rp: c.recorded.p.to_string(),
                rn: c.recorded.n.to_string(),
                at: c.fetched_at,
            }),
            at: self.changed_at,
        };
        serde_json::to_string(&stored).expect("a struct of strings and integers serializes")
    }

    /// Reads the stored form; `None` if it is damaged.
    pub fn from_stored(text: &str) -> Option<Record> {
        let s: Stored = serde_json::from_str(text).ok()?;
        let cache = match s.cache {
            None => None,
            Some(c) => Some(Cache {
                global: GlobalTotals {
                    p: c.gp.parse().ok()?,
                    n: c.gn.parse().ok()?,
                },
                recorded: SlotTotals {
                    p: c.rp.parse().ok()?,
                    n: c.rn.parse().ok()?,
                },
                fetched_at: c.at,
            }),
        };
        Some(Record {
            own: SlotTotals {
                p: s.p.parse().ok()?,
                n: s.n.parse().ok()?,
            },
            acked: SlotTotals {
                p: s.ap.parse().ok()?,
                n: s.an.parse().ok()?,
            },
            cache,
            changed_at: s.at,
        })
    }
}

/// The sync entries of every dirty record, in key order, split into syncs of at most
/// `max` counters.
pub fn dirty_batches<'a>(
    records: impl Iterator<Item = (&'a Target, &'a Record)>,
    max: usize,
) -> Vec<Vec<SlotUpdate>> {
    let mut dirty: Vec<SlotUpdate> = records
        .filter(|(_, r)| r.is_dirty())
        .map(|(t, r)| r.update(t))
        .collect();
    dirty.sort_by(|a, b| (a.kind, &a.id).cmp(&(b.kind, &b.id)));
    dirty
        .chunks(max.max(1))
        .map(<[SlotUpdate]>::to_vec)
        .collect()
}

/// The wait before the next attempt after `failures` failed syncs in a row: exponential from
/// 1 s, capped at `cap_ms`, with "equal jitter" (half fixed, half drawn from `random`) so
/// replicas that failed together do not retry together.
pub fn backoff_ms(failures: u32, cap_ms: u64, random: u64) -> u64 {
    const BASE_MS: u64 = 1000;
    let exp = BASE_MS
        .saturating_mul(1u64 << failures.saturating_sub(1).min(30))
        .min(cap_ms);
    let half = exp / 2;
    half + random % half.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_crdt::ReplicaId;

    const ME: ReplicaId = ReplicaId::from_u128(7);

    fn target(id: &str) -> Target {
        Target {
            kind: CounterKind::Pn,
            id: id.into(),
        }
    }

    fn merged(global: (u128, u128), recorded: (u64, u64)) -> MergedCounter {
        MergedCounter {
            id: "x".into(),
            kind: CounterKind::Pn,
            global: GlobalTotals {
                p: global.0,
                n: global.1,
            },
            recorded: SlotTotals {
                p: recorded.0,
                n: recorded.1,
            },
        }
    }

    #[test]
    fn hits_arriving_during_a_sync_stay_dirty() {
        let mut r = Record::default();
        r.hit(SlotTotals { p: 3, n: 0 }, ME, 1).unwrap();
        let sent = r.own;
        r.hit(SlotTotals { p: 2, n: 1 }, ME, 2).unwrap(); // during the sync
        r.acknowledge(sent, &merged((103, 0), (3, 0)), 3);
        assert_eq!(r.acked, SlotTotals { p: 3, n: 0 });
        assert!(r.is_dirty());
        r.acknowledge(r.own, &merged((105, 1), (5, 1)), 4);
        assert!(!r.is_dirty());
    }

    #[test]
    fn the_read_formula_counts_own_hits_the_merger_has_not_seen() {
        let mut r = Record::default();
        assert_eq!(r.estimate(0), None, "nothing heard: no estimate");
        r.hit(SlotTotals { p: 10, n: 0 }, ME, 1).unwrap();
        r.acknowledge(r.own, &merged((700, 0), (10, 0)), 1000);
        r.hit(SlotTotals { p: 5, n: 2 }, ME, 1500).unwrap();
        assert_eq!(
            r.estimate(1600),
            Some(Ok(Estimate {
                count: 703,
                age_ms: 600
            }))
        );
        assert_eq!(r.own_value(), 13);
    }

    #[test]
    fn an_older_answer_never_replaces_a_newer_cache() {
        let mut r = Record::default();
        r.acknowledge(SlotTotals::default(), &merged((500, 10), (0, 0)), 10);
        let before = r.estimate(20);
        r.acknowledge(SlotTotals::default(), &merged((400, 10), (0, 0)), 20);
        assert_eq!(r.estimate(20), before, "a crossed, older answer is ignored");
        assert_eq!(r.cache.unwrap().fetched_at, 10);
    }

    #[test]
    fn reads_never_go_backwards_for_a_counter_as_answers_arrive() {
        let mut r = Record {
            own: SlotTotals { p: 50, n: 0 },
            ..Record::default()
        };
        let mut last = 0;
        // Answers as a merger would send them while this replica's syncs land one by one.
        for (g, rec) in [(100, 0), (120, 20), (150, 50), (160, 50)] {
            r.acknowledge(SlotTotals { p: rec, n: 0 }, &merged((g, 0), (rec, 0)), 1);
            let now = r.estimate(1).unwrap().unwrap().count;
            assert!(now >= last, "{now} after {last}");
            last = now;
        }
    }

    #[test]
    fn overflow_is_refused_and_changes_nothing() {
        let mut r = Record::default();
        r.hit(SlotTotals { p: u64::MAX, n: 0 }, ME, 1).unwrap();
        let before = r.clone();
        assert!(matches!(
            r.hit(SlotTotals { p: 1, n: 0 }, ME, 2),
            Err(Error::SlotOverflow { .. })
        ));
        assert_eq!(r, before);
    }

    #[test]
    fn stored_form_keeps_u64_and_u128_exact() {
        let r = Record {
            own: SlotTotals {
                p: u64::MAX,
                n: (1 << 53) + 1,
            },
            acked: SlotTotals {
                p: u64::MAX - 1,
                n: 0,
            },
            cache: Some(Cache {
                global: GlobalTotals { p: u128::MAX, n: 1 },
                recorded: SlotTotals {
                    p: u64::MAX - 1,
                    n: 0,
                },
                fetched_at: 42,
            }),
            changed_at: 43,
        };
        let text = r.to_stored();
        assert!(text.contains("\"18446744073709551615\""), "{text}");
        assert_eq!(Record::from_stored(&text), Some(r));
        assert_eq!(Record::from_stored("{\"p\":1}"), None);
    }

    #[test]
    fn keys_round_trip() {
        for t in [
            target("a:b.c"),
            Target {
                kind: CounterKind::G,
                id: "x".into(),
            },
        ] {
            assert_eq!(target_of(&key(&t)), Some(t));
        }
        assert_eq!(target_of("replica"), None);
        assert_eq!(target_of("c:zz:x"), None);
    }

    #[test]
    fn only_dirty_counters_are_batched_in_bounded_syncs() {
        let targets: Vec<Target> = (0..5).map(|i| target(&format!("c{i}"))).collect();
        let mut records: Vec<Record> = vec![Record::default(); 5];
        for (i, r) in records.iter_mut().enumerate() {
            r.hit(SlotTotals { p: 1, n: 0 }, ME, 0).unwrap();
            if i == 2 {
                r.acked = r.own; // already synced
            }
        }
        let batches = dirty_batches(targets.iter().zip(records.iter()), 2);
        let ids: Vec<Vec<&str>> = batches
            .iter()
            .map(|b| b.iter().map(|u| u.id.as_str()).collect())
            .collect();
        assert_eq!(ids, vec![vec!["c0", "c1"], vec!["c3", "c4"]]);
        assert!(dirty_batches(std::iter::empty(), 10).is_empty());
    }

    #[test]
    fn backoff_doubles_from_one_second_to_the_cap_with_jitter() {
        assert_eq!(backoff_ms(1, 60_000, 0), 500);
        assert_eq!(backoff_ms(1, 60_000, 499), 999);
        assert_eq!(backoff_ms(1, 60_000, 500), 500);
        assert_eq!(backoff_ms(2, 60_000, 0), 1000);
        assert_eq!(backoff_ms(3, 60_000, 1000), 3000);
        for f in 7..100 {
            for random in [0, 12_345, u64::MAX] {
                let b = backoff_ms(f, 60_000, random);
                assert!((30_000..60_000).contains(&b), "{f}: {b}");
            }
        }
    }
}
