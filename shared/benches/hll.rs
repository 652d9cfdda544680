//! HyperLogLog: tally-crdt's sketch against `hyperloglogplus` (HLL++, a maintained crate) and
//! against the exact answer, a `HashSet<u64>`, in the same run.
//!
//! - `hll_insert`: 100,000 distinct items into an empty sketch (or set), so the sparse phase
//!   is included. Both sketches get the same precomputed xxh3 hashes (`hyperloglogplus`
//!   through a pass-through hasher), so the sketches, not the hash, are compared; tally's
//!   `insert(&[u8])`, hash included, is measured beside them.
//! - `hll_merge`: merging a second sketch (or set) of `n` distinct items, half of them new,
//!   into a copy of the first, then estimating (counting); copies are made outside the timed
//!   part for all three (Criterion `iter_batched`).
//!
//! With `cargo bench` (not in test mode) it also prints bytes per counter (sketch vs exact
//! set) and the estimates of both sketches against the exact counts.
//!
//! `cargo bench -p tally-crdt --bench hll -- --warm-up-time 1 --measurement-time 3`; figures in
//! docs/benchmarks.md.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group};
use hyperloglogplus::{HyperLogLog as _, HyperLogLogPlus};
use tally_crdt::HyperLogLog;

const P: u8 = HyperLogLog::DEFAULT_PRECISION;
const INSERTS: u64 = 100_000;
const MERGE_SIZES: [u64; 3] = [1_000, 100_000, 1_000_000];

/// Passes a precomputed hash through to `hyperloglogplus` (u64's `Hash` is one `write_u64`).
#[derive(Clone, Copy, Default)]
struct PreHashed;

struct PreHashedHasher(u64);

impl BuildHasher for PreHashed {
    type Hasher = PreHashedHasher;
    fn build_hasher(&self) -> PreHashedHasher {
        PreHashedHasher(0)
    }
}

impl Hasher for PreHashedHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Reference = HyperLogLogPlus<u64, PreHashed>;

fn reference() -> Reference {
    HyperLogLogPlus::new(P, PreHashed).expect("12 is a valid precision")
}

/// The hashes of items `from..to` (each item its 8 little-endian bytes).
fn hashes(from: u64, to: u64) -> Vec<u64> {
    (from..to)
        .map(|i| HyperLogLog::hash(&i.to_le_bytes()))
        .collect()
}

fn tally_of(hashes: &[u64]) -> HyperLogLog {
    let mut s = HyperLogLog::new();
    for &h in hashes {
        s.insert_hash(h);
    }
    s
}

fn reference_of(hashes: &[u64]) -> Reference {
    let mut s = reference();
    for h in hashes {
        s.insert(h);
    }
    s
}

fn insert(c: &mut Criterion) {
    let items: Vec<[u8; 8]> = (0..INSERTS).map(u64::to_le_bytes).collect();
    let hashes = hashes(0, INSERTS);
    let mut group = c.benchmark_group("hll_insert");
    group.throughput(Throughput::Elements(INSERTS));
    group.bench_function("tally_bytes", |b| {
        b.iter(|| {
            let mut s = HyperLogLog::new();
            for item in &items {
                s.insert(black_box(item));
            }
            s
        })
    });
    group.bench_function("tally_prehashed", |b| {
        b.iter(|| tally_of(black_box(&hashes)))
    });
    group.bench_function("hyperloglogplus_prehashed", |b| {
        b.iter(|| reference_of(black_box(&hashes)))
    });
    group.bench_function("hashset_prehashed", |b| {
        b.iter(|| black_box(&hashes).iter().copied().collect::<HashSet<u64>>())
    });
    group.finish();
}

fn merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("hll_merge");
    group.sample_size(20);
    for n in MERGE_SIZES {
        // Two sets of n distinct items, overlapping by half.
        let (a, b) = (hashes(0, n), hashes(n / 2, n + n / 2));
        let (ta, tb) = (tally_of(&a), tally_of(&b));
        let (ra, rb) = (reference_of(&a), reference_of(&b));
        let (sa, sb): (HashSet<u64>, HashSet<u64>) =
            (a.iter().copied().collect(), b.iter().copied().collect());
        group.bench_with_input(BenchmarkId::new("tally", n), &n, |bench, _| {
            bench.iter_batched(
                || ta.clone(),
                |mut x| {
                    x.merge(black_box(&tb)).expect("same precision");
                    x.estimate()
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("hyperloglogplus", n), &n, |bench, _| {
            bench.iter_batched(
                || ra.clone(),
                |mut x| {
                    x.merge(black_box(&rb)).expect("same precision");
                    x.count()
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("hashset", n), &n, |bench, _| {
            bench.iter_batched(
                || sa.clone(),
                |mut x| {
                    x.extend(black_box(&sb).iter().copied());
                    x.len()
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// Heap bytes of a `HashSet<u64>` (hashbrown: one 8-byte bucket and one control byte per
/// bucket, plus a 16-byte control group), from its capacity.
fn hashset_bytes(set: &HashSet<u64>) -> usize {
    let cap = set.capacity();
    let buckets = if cap < 8 { cap + 1 } else { cap / 7 * 8 };
    buckets * 9 + 16
}

fn print_sizes() {
    println!("bytes per counter (precision {P}):");
    println!(
        "| distinct | sketch, wire | sketch, memory | exact set, wire (8 B each) | exact HashSet<u64>, memory |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for n in [1u64, 100, 1_000, 10_000, 100_000, 1_000_000] {
        let h = hashes(0, n);
        let sketch = tally_of(&h);
        let set: HashSet<u64> = h.iter().copied().collect();
        println!(
            "| {n} | {} | {} | {} | {} |",
            sketch.encoded_len(),
            sketch.size_in_bytes(),
            n * 8,
            hashset_bytes(&set)
        );
    }
}

fn print_accuracy() {
    println!("estimates (precision {P}, standard error 1.625 %):");
    println!("| distinct | tally | error | hyperloglogplus | error |");
    println!("|---:|---:|---:|---:|---:|");
    let (mut ours, mut theirs) = (HyperLogLog::new(), reference());
    let mut next = 0u64;
    for n in [100u64, 1_000, 10_000, 100_000, 1_000_000, 10_000_000] {
        for h in hashes(next, n) {
            ours.insert_hash(h);
            theirs.insert(&h);
        }
        next = n;
        let (e1, e2) = (ours.estimate() as f64, theirs.count());
        let err = |e: f64| (e - n as f64) / n as f64 * 100.0;
        println!(
            "| {n} | {e1:.0} | {:+.2} % | {e2:.0} | {:+.2} % |",
            err(e1),
            err(e2)
        );
    }
}

criterion_group!(benches, insert, merge);

fn main() {
    // Only under `cargo bench` (which passes --bench), not in test mode.
    if std::env::args().any(|a| a == "--bench") {
        print_sizes();
        print_accuracy();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
