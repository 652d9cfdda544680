//! The HyperLogLog as a specification: its estimates against exact counts and against a
//! reference implementation (`hyperloglogplus`), its merge laws (proptest), the edge →
//! merger register sync under replays and reordering, and its wire form, which refuses
//! every malformed input with a typed error and never panics (fuzzed with random bytes).
#![cfg(not(target_arch = "wasm32"))]

use std::hash::{BuildHasher, Hasher};

use hyperloglogplus::{HyperLogLog as _, HyperLogLogPlus};
use proptest::prelude::*;
use tally_crdt::{Error, HyperLogLog};

/// Item `i` of the deterministic data sets: its 8 little-endian bytes.
fn item(i: u64) -> [u8; 8] {
    i.to_le_bytes()
}

#[track_caller]
fn assert_within_3_standard_errors(what: &str, estimate: f64, exact: u64, relative_error: f64) {
    let exact = exact as f64;
    let bound = 3.0 * relative_error * exact;
    assert!(
        (estimate - exact).abs() <= bound,
        "{what}: estimate {estimate} of {exact} distinct is off by {:.3} %, more than 3 standard \
         errors ({:.3} %)",
        (estimate - exact).abs() / exact * 100.0,
        3.0 * relative_error * 100.0,
    );
}

/// One growing sketch at the default precision, checked at 1, 10, ..., 10M distinct items.
/// 10M inserts take about 0.6 s unoptimized (0.1 s in release), so this runs in every build.
#[test]
fn estimates_of_1_to_10m_distinct_items_are_within_3_standard_errors() {
    let mut sketch = HyperLogLog::new();
    let mut next = 0;
    for checkpoint in [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000] {
        while next < checkpoint {
            sketch.insert(&item(next));
            next += 1;
        }
        assert_within_3_standard_errors(
            "tally",
            sketch.estimate() as f64,
            checkpoint,
            sketch.relative_error(),
        );
    }
}

/// Below about 60 set registers (of 4,096), linear counting's correction for collisions is
/// under half an item: the estimate is the number of registers the items set.
#[test]
fn a_few_items_estimate_exactly_the_registers_they_set() {
    let mut sketch = HyperLogLog::new();
    for n in 1..=60u64 {
        sketch.insert(&item(n));
        let set = u64::try_from(sketch.registers().count()).unwrap();
        assert!(
            set == n || set == n - 1,
            "at most one collision in 60 items here"
        );
        assert_eq!(sketch.estimate(), set);
    }
}

#[test]
fn inserting_items_again_changes_nothing() {
    let mut sketch = HyperLogLog::new();
    for i in 0..20_000 {
        sketch.insert(&item(i));
    }
    let before = sketch.clone();
    for i in (0..20_000).rev() {
        assert!(!sketch.insert(&item(i)));
    }
    assert_eq!(sketch, before);
}

#[test]
fn every_precision_estimates_100k_items_within_3_standard_errors() {
    for p in HyperLogLog::MIN_PRECISION..=HyperLogLog::MAX_PRECISION {
        let mut sketch = HyperLogLog::with_precision(p).unwrap();
        for i in 0..100_000 {
            sketch.insert(&item(i));
        }
        assert_within_3_standard_errors(
            &format!("p = {p}"),
            sketch.estimate() as f64,
            100_000,
            sketch.relative_error(),
        );
    }
}

/// Feeds a hash computed beforehand to `hyperloglogplus` unchanged, so both sketches see
/// the same 64-bit hashes (u64's `Hash` calls `write_u64` once).
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
        // Only u64 items are inserted, which take `write_u64`; anything else is folded in.
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

#[test]
fn estimates_agree_with_hyperloglogplus_on_the_same_hashes() {
    let p = HyperLogLog::DEFAULT_PRECISION;
    let mut ours = HyperLogLog::new();
    let mut reference: HyperLogLogPlus<u64, PreHashed> =
        HyperLogLogPlus::new(p, PreHashed).unwrap();
    let mut next = 0;
    for checkpoint in [100, 1_000, 5_000, 20_000, 100_000, 300_000] {
        while next < checkpoint {
            let hash = HyperLogLog::hash(&item(next));
            ours.insert_hash(hash);
            reference.insert(&hash);
            next += 1;
        }
        let (mine, theirs) = (ours.estimate() as f64, reference.count());
        let error = ours.relative_error();
        assert_within_3_standard_errors("tally", mine, checkpoint, error);
        assert_within_3_standard_errors("hyperloglogplus", theirs, checkpoint, error);
        // Same registers (dense), different estimators: they stay close to each other.
        assert!(
            (mine - theirs).abs() <= 3.0 * error * checkpoint as f64,
            "{checkpoint}: tally {mine}, hyperloglogplus {theirs}"
        );
    }
}

#[test]
fn the_wire_form_is_frozen() {
    let mut sparse = HyperLogLog::new();
    for item in ["a", "b", "c"] {
        sparse.insert(item.as_bytes());
    }
    let json = serde_json::to_string(&sparse).unwrap();
    assert_eq!(json, GOLDEN_SPARSE);
    assert_eq!(serde_json::from_str::<HyperLogLog>(&json).unwrap(), sparse);

    let mut dense = HyperLogLog::with_precision(4).unwrap();
    dense
        .merge_registers(&[(0, 1), (3, 2), (5, 61), (9, 7), (15, 33)])
        .unwrap();
    let json = serde_json::to_string(&dense).unwrap();
    assert_eq!(json, GOLDEN_DENSE);
    assert_eq!(serde_json::from_str::<HyperLogLog>(&json).unwrap(), dense);
}

const GOLDEN_SPARSE: &str = r#""AQwAAAGBARHBAezB""#;
const GOLDEN_DENSE: &str = r#""AQQBBAACA9AAAHAAAAAh""#;

#[test]
fn each_malformed_wire_form_has_its_own_error() {
    let cases: &[(&[u8], Error)] = &[
        (&[], Error::HllBadLength { got: 0 }),
        (&[1, 12], Error::HllBadLength { got: 2 }),
        (
            &[2, 12, 0],
            Error::HllUnsupportedVersion {
                got: 2,
                supported: 1,
            },
        ),
        (&[1, 3, 0], Error::HllInvalidPrecision { got: 3 }),
        (&[1, 19, 1], Error::HllInvalidPrecision { got: 19 }),
        (&[1, 12, 2], Error::HllUnknownEncoding { got: 2 }),
        (&[1, 12, 0, 0, 0], Error::HllBadLength { got: 5 }),
        (&[1, 4, 1, 0, 0, 0], Error::HllBadLength { got: 6 }),
        // Sparse index 16 of 16 registers, rank 1.
        (
            &[1, 4, 0, 0, 4, 1],
            Error::HllRegisterOutOfRange { index: 16, rank: 1 },
        ),
        // Sparse rank 62 > 65 - 4.
        (
            &[1, 4, 0, 0, 0, 62],
            Error::HllRegisterOutOfRange { index: 0, rank: 62 },
        ),
        // Sparse rank 0 is not a set register.
        (
            &[1, 4, 0, 0, 0, 0],
            Error::HllRegisterOutOfRange { index: 0, rank: 0 },
        ),
        // Indexes 2 then 1; 1 twice.
        (
            &[1, 4, 0, 0, 0, 0x81, 0, 0, 0x41],
            Error::HllUnsortedSparse { index: 1 },
        ),
        (
            &[1, 4, 0, 0, 0, 0x41, 0, 0, 0x42],
            Error::HllUnsortedSparse { index: 1 },
        ),
        // Dense register 1 = 63 > 61.
        (
            &[1, 4, 1, 0x03, 0xf0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            Error::HllRegisterOutOfRange { index: 1, rank: 63 },
        ),
    ];
    for (bytes, error) in cases {
        assert_eq!(
            HyperLogLog::from_bytes(bytes).as_ref(),
            Err(error),
            "{bytes:?}"
        );
    }
}

#[test]
fn sketch_errors_have_distinct_stable_codes() {
    let errors = [
        Error::HllInvalidPrecision { got: 0 },
        Error::HllPrecisionMismatch { ours: 0, theirs: 0 },
        Error::HllUnsupportedVersion {
            got: 0,
            supported: 1,
        },
        Error::HllUnknownEncoding { got: 0 },
        Error::HllBadLength { got: 0 },
        Error::HllRegisterOutOfRange { index: 0, rank: 0 },
        Error::HllUnsortedSparse { index: 0 },
    ];
    let mut codes: Vec<_> = errors.iter().map(Error::code).collect();
    assert!(codes.iter().all(|c| c.starts_with("hll_")), "{codes:?}");
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), errors.len());
}

#[test]
fn json_that_is_not_a_base64_sketch_is_refused() {
    for bad in [
        r#""AQwA=""#,
        r#""AQw+""#,
        r#""AQw""#,
        "12",
        r#"["AQwA"]"#,
        r#""""#,
    ] {
        assert!(serde_json::from_str::<HyperLogLog>(bad).is_err(), "{bad}");
    }
    assert!(
        serde_json::from_str::<HyperLogLog>(r#""AQwA""#)
            .unwrap()
            .is_empty()
    );
}

/// Hashes whose ranks reach the top of the range too: the non-index bits shifted right.
fn hash() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        (any::<u64>(), 0..64u32).prop_map(|(h, s)| (h & !(u64::MAX >> 8)) | ((h << 8) >> 8 >> s)),
    ]
}

/// Sketches of one precision (256 registers, sparse up to 64) with 0 to 300 items: sparse
/// and dense alike.
fn sketch() -> impl Strategy<Value = HyperLogLog> {
    prop::collection::vec(hash(), 0..300).prop_map(|hashes| built(8, &hashes))
}

fn built(p: u8, hashes: &[u64]) -> HyperLogLog {
    let mut s = HyperLogLog::with_precision(p).unwrap();
    for &h in hashes {
        s.insert_hash(h);
    }
    s
}

fn merged(a: &HyperLogLog, b: &HyperLogLog) -> HyperLogLog {
    let mut m = a.clone();
    m.merge(b).unwrap();
    m
}

/// A deterministic shuffle (xorshift from `seed`).
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..items.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = x % u64::try_from(i + 1).unwrap();
        items.swap(i, usize::try_from(j).unwrap());
    }
}

/// Well-formed wire forms of any precision, both encodings.
fn wire_form() -> impl Strategy<Value = Vec<u8>> {
    (4..=10u8, prop::collection::vec(hash(), 0..600)).prop_map(|(p, h)| built(p, &h).to_bytes())
}

proptest! {
    #[test]
    fn merging_equals_inserting_both_item_sets(
        a in prop::collection::vec(hash(), 0..300),
        b in prop::collection::vec(hash(), 0..300),
    ) {
        let both: Vec<u64> = a.iter().chain(&b).copied().collect();
        prop_assert_eq!(merged(&built(8, &a), &built(8, &b)), built(8, &both));
    }

    #[test]
    fn merge_is_commutative(a in sketch(), b in sketch()) {
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
    }

    #[test]
    fn merge_is_associative(a in sketch(), b in sketch(), c in sketch()) {
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
    }

    #[test]
    fn merge_is_idempotent(a in sketch(), b in sketch()) {
        prop_assert_eq!(merged(&a, &a), a.clone());
        let ab = merged(&a, &b);
        prop_assert_eq!(merged(&ab, &b), ab.clone());
        prop_assert_eq!(merged(&ab, &a), ab.clone());
        prop_assert!(!ab.clone().merge(&a).unwrap(), "merging what is already in changes nothing");
    }

    #[test]
    fn merge_never_lowers_a_register(a in sketch(), b in sketch()) {
        let m = merged(&a, &b);
        for (index, rank) in a.registers().chain(b.registers()) {
            prop_assert!(m.get(index) >= rank);
        }
        prop_assert_eq!(m.is_sparse(), m.registers().count() <= 64);
    }

    #[test]
    fn changes_merged_into_the_older_state_equal_the_full_merge(old in sketch(), new in sketch()) {
        let changes = new.changes_since(&old).unwrap();
        prop_assert!(changes.iter().all(|&(i, r)| r > old.get(i) && r == new.get(i)));
        let mut via_changes = old.clone();
        via_changes.merge_registers(&changes).unwrap();
        prop_assert_eq!(via_changes, merged(&old, &new));
    }

    #[test]
    fn downsampling_commutes_with_merging(a in sketch(), b in sketch(), p in 4..=8u8) {
        let (da, db) = (a.downsample(p).unwrap(), b.downsample(p).unwrap());
        prop_assert_eq!(merged(&a, &b).downsample(p).unwrap(), merged(&da, &db));
    }

    /// An edge replica inserts items and sends the registers that grew since the merger's
    /// last acknowledgement; the batches reach the merger shuffled, some twice, some stale.
    /// Once every batch has arrived at least once, the merger's sketch is the replica's.
    #[test]
    fn replayed_and_reordered_register_batches_leave_the_replicas_sketch(
        rounds in prop::collection::vec(prop::collection::vec(hash(), 0..80), 1..12),
        acked in prop::collection::vec(any::<bool>(), 12),
        replays in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        seed in any::<u64>(),
    ) {
        let mut edge = HyperLogLog::with_precision(8).unwrap();
        let mut acknowledged = edge.clone();
        let mut sent = Vec::new();
        for (round, hashes) in rounds.iter().enumerate() {
            for &h in hashes {
                edge.insert_hash(h);
            }
            let batch = edge.changes_since(&acknowledged).unwrap();
            sent.push(batch.clone());
            // A lost acknowledgement means the next batch repeats these registers.
            if acked[round] {
                acknowledged.merge_registers(&batch).unwrap();
            }
        }
        for i in &replays {
            sent.push(i.get(&sent).clone());
        }
        shuffle(&mut sent, seed);
        let mut merger = HyperLogLog::with_precision(8).unwrap();
        for batch in &sent {
            merger.merge_registers(batch).unwrap();
        }
        prop_assert_eq!(merger, edge);
    }

    #[test]
    fn the_wire_form_round_trips_at_every_size(bytes in wire_form()) {
        let sketch = HyperLogLog::from_bytes(&bytes).unwrap();
        prop_assert_eq!(sketch.encoded_len(), bytes.len());
        prop_assert_eq!(sketch.to_bytes(), bytes);
        let json = serde_json::to_string(&sketch).unwrap();
        prop_assert_eq!(serde_json::from_str::<HyperLogLog>(&json).unwrap(), sketch);
    }

    #[test]
    fn random_bytes_are_refused_or_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(sketch) = HyperLogLog::from_bytes(&bytes) {
            prop_assert_eq!(HyperLogLog::from_bytes(&sketch.to_bytes()).unwrap(), sketch);
        }
    }

    /// Random bodies behind plausible headers, so the fuzz reaches the register checks.
    #[test]
    fn random_bodies_behind_valid_headers_are_refused_or_round_trip(
        precision in 3..=19u8,
        encoding in prop_oneof![Just(0u8), Just(1u8), any::<u8>()],
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            (4..=8u8).prop_flat_map(|p| prop::collection::vec(any::<u8>(), 3usize << p >> 2)),
        ],
    ) {
        let mut bytes = vec![1, precision, encoding];
        bytes.extend_from_slice(&body);
        if let Ok(sketch) = HyperLogLog::from_bytes(&bytes) {
            prop_assert_eq!(sketch.precision(), precision);
            prop_assert_eq!(HyperLogLog::from_bytes(&sketch.to_bytes()).unwrap(), sketch);
        }
    }

    /// Well-formed forms with one byte changed, or cut short, or grown.
    #[test]
    fn damaged_wire_forms_are_refused_or_round_trip(
        bytes in wire_form(),
        at in any::<prop::sample::Index>(),
        xor in 1..=255u8,
        cut in any::<prop::sample::Index>(),
        extra in prop::collection::vec(any::<u8>(), 1..4),
    ) {
        let mut flipped = bytes.clone();
        flipped[at.index(bytes.len())] ^= xor;
        let cut = bytes[..cut.index(bytes.len())].to_vec();
        let mut grown = bytes.clone();
        grown.extend_from_slice(&extra);
        for damaged in [flipped, cut, grown] {
            if let Ok(sketch) = HyperLogLog::from_bytes(&damaged) {
                prop_assert_eq!(HyperLogLog::from_bytes(&sketch.to_bytes()).unwrap(), sketch);
            }
        }
    }

    #[test]
    fn merge_registers_refuses_out_of_range_lists_whole(
        a in sketch(),
        good in prop::collection::vec((0..256u32, 0..=57u8), 0..20),
        bad in prop_oneof![(256..u32::MAX, 0..=57u8), (0..256u32, 58..=u8::MAX)],
        at in any::<prop::sample::Index>(),
    ) {
        let mut list = good.clone();
        list.insert(at.index(good.len() + 1), bad);
        let mut b = a.clone();
        prop_assert_eq!(
            b.merge_registers(&list),
            Err(Error::HllRegisterOutOfRange { index: bad.0, rank: bad.1 })
        );
        prop_assert_eq!(b, a);
    }
}
