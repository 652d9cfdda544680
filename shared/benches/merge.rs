//! Merge + read of G- and PN-Counters: tally-crdt against the `crdts` crate, same work, same
//! run. Each iteration merges a second replica state into a copy of the first and reads the
//! value; the copies are made outside the timed part for both libraries (`crdts` takes the
//! other state by value, so it also gets its copy for free).
//!
//! `GCounter` and `PNCounter` are views of `CounterState` (slots in one region);
//! `counter_state_join_value` times the same work on `CounterState` as the merger holds it
//! (slots in three regions).
//!
//! `cargo bench -p tally-crdt --bench merge` (`-- --quick` for a short run); figures in
//! docs/benchmarks.md.

use std::hint::black_box;

use crdts::{CmRDT, CvRDT};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use tally_crdt::{CounterState, GCounter, PNCounter, Region, ReplicaId, SlotTotals};

const SIZES: [u64; 3] = [8, 64, 1024];

/// Deterministic pseudo-random totals (xorshift), so every run measures the same states.
fn totals(seed: u64, n: u64) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 1_000_000 + 1
        })
        .collect()
}

/// Two states of the same replicas with different totals: the steady state of a merger that
/// keeps receiving fresher copies of the same slots.
/// Slot totals as (replica number, total).
type Slots = Vec<(u64, u64)>;

fn pair(n: u64) -> (Slots, Slots) {
    let ids = 0..n;
    let a = ids.clone().zip(totals(1, n)).collect();
    let b = ids.zip(totals(2, n)).collect();
    (a, b)
}

fn tally_g(slots: &[(u64, u64)]) -> GCounter {
    slots
        .iter()
        .map(|&(r, v)| (ReplicaId::from_u128(u128::from(r) + 1), v))
        .collect()
}

fn crdts_g(slots: &[(u64, u64)]) -> crdts::GCounter<u64> {
    let mut c = crdts::GCounter::new();
    for &(r, v) in slots {
        c.apply(c.inc_many(r, v));
    }
    c
}

fn tally_pn(slots: &[(u64, u64)]) -> PNCounter {
    let mut c = PNCounter::new();
    for &(r, v) in slots {
        let id = ReplicaId::from_u128(u128::from(r) + 1);
        c.increment(id, v)
            .expect("bench totals are far below u64::MAX");
        c.decrement(id, v / 3)
            .expect("bench totals are far below u64::MAX");
    }
    c
}

fn crdts_pn(slots: &[(u64, u64)]) -> crdts::PNCounter<u64> {
    let mut c = crdts::PNCounter::new();
    for &(r, v) in slots {
        c.apply(c.inc_many(r, v));
        c.apply(c.dec_many(r, v / 3));
    }
    c
}

/// The lattice state of the PN slots of `tally_pn`, spread over three regions.
fn tally_state(slots: &[(u64, u64)]) -> CounterState {
    let regions: [Region; 3] = ["eu".into(), "us".into(), "ap".into()];
    let mut c = CounterState::new();
    for &(r, v) in slots {
        let id = ReplicaId::from_u128(u128::from(r) + 1);
        let region = &regions[usize::try_from(r % 3).expect("0..3 is a usize")];
        c.merge_slot(id, region, SlotTotals { p: v, n: v / 3 });
    }
    c
}

fn gcounter(c: &mut Criterion) {
    let mut group = c.benchmark_group("gcounter_merge_value");
    for n in SIZES {
        let (a, b) = pair(n);
        let (ta, tb) = (tally_g(&a), tally_g(&b));
        let (ca, cb) = (crdts_g(&a), crdts_g(&b));
        assert_eq!(ta.value().to_string(), ca.read().to_string());
        group.bench_with_input(BenchmarkId::new("tally", n), &n, |bench, _| {
            bench.iter_batched(
                || ta.clone(),
                |mut x| {
                    x.merge(black_box(&tb));
                    x.value()
                },
                BatchSize::SmallInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("crdts", n), &n, |bench, _| {
            bench.iter_batched(
                || (ca.clone(), cb.clone()),
                |(mut x, y)| {
                    x.merge(black_box(y));
                    x.read()
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn pncounter(c: &mut Criterion) {
    let mut group = c.benchmark_group("pncounter_merge_value");
    for n in SIZES {
        let (a, b) = pair(n);
        let (ta, tb) = (tally_pn(&a), tally_pn(&b));
        let (ca, cb) = (crdts_pn(&a), crdts_pn(&b));
        assert_eq!(ta.value().to_string(), ca.read().to_string());
        group.bench_with_input(BenchmarkId::new("tally", n), &n, |bench, _| {
            bench.iter_batched(
                || ta.clone(),
                |mut x| {
                    x.merge(black_box(&tb));
                    x.value()
                },
                BatchSize::SmallInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("crdts", n), &n, |bench, _| {
            bench.iter_batched(
                || (ca.clone(), cb.clone()),
                |(mut x, y)| {
                    x.merge(black_box(y));
                    x.read()
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn counter_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("counter_state_join_value");
    for n in SIZES {
        let (a, b) = pair(n);
        let (sa, sb) = (tally_state(&a), tally_state(&b));
        let v = sa.value();
        assert_eq!(
            i128::try_from(v.p).unwrap() - i128::try_from(v.n).unwrap(),
            tally_pn(&a).value(),
            "the lattice counts what the PN-Counter does"
        );
        group.bench_with_input(BenchmarkId::new("tally", n), &n, |bench, _| {
            bench.iter_batched(
                || sa.clone(),
                |mut x| {
                    x.join(black_box(&sb));
                    x.value()
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, gcounter, pncounter, counter_state);
criterion_main!(benches);
