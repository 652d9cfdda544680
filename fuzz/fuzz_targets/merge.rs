//! The CRDT algebra under arbitrary slots: three G-Counters and three PN-Counters built from
//! fuzzer-chosen `(replica, total)` pairs (replicas from a small set so slots collide, totals
//! biased towards 0 and `u64::MAX`).
//!
//! - merge is commutative, associative and idempotent; the result holds the max of each slot
//!   and nothing else;
//! - `value()` equals the sum of the slots computed here in `u128` (`i128` for PN), with no
//!   panic at `u64::MAX` totals;
//! - building by `collect`, by `merge_slot` one by one, or by JSON round trip gives one state;
//! - `delta_since` carries exactly what a merge needs;
//! - `increment`/`decrement` that would pass `u64::MAX` return `SlotOverflow` and change
//!   nothing; the ones that fit add exactly;
//! - the counters (views of `CounterState`, the lattice the edge and the merger run) agree
//!   with that lattice driven on its own: a state built from the same slots with
//!   `CounterState::merge_slot` in a region of its own, and joined with `CounterState::join`,
//!   holds the same slots and the same value as the merged counter.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tally_crdt::{CounterState, Error, GCounter, PNCounter, Region, ReplicaId, SlotTotals};

/// A slot total: mostly small or near `u64::MAX`, sometimes anything.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Total {
    Small(u8),
    NearMax(u8),
    Any(u64),
}

impl Total {
    fn get(self) -> u64 {
        match self {
            Total::Small(v) => u64::from(v),
            Total::NearMax(v) => u64::MAX - u64::from(v),
            Total::Any(v) => v,
        }
    }
}

/// One of 16 replicas; the ids spread over the whole `u128` range (high bits included) so the
/// ordering of slots is exercised, not only small ids.
#[derive(Debug, Clone, Copy, Arbitrary)]
struct Replica(u8);

impl Replica {
    fn id(self) -> ReplicaId {
        let r = u128::from(self.0 % 16);
        ReplicaId::from_u128((r << 124) | (r * 0x0101) | 1)
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    g: [Vec<(Replica, Total)>; 3],
    pn: [Vec<(Replica, Total, Total)>; 3],
    increment: (Replica, Total),
    decrement: (Replica, Total),
}

/// The reference model: max per replica.
fn model_g(slots: &[(Replica, Total)]) -> BTreeMap<ReplicaId, u64> {
    let mut m = BTreeMap::new();
    for &(r, t) in slots {
        let e = m.entry(r.id()).or_insert(0);
        *e = (*e).max(t.get());
    }
    m.retain(|_, v| *v > 0);
    m
}

fn union(a: &BTreeMap<ReplicaId, u64>, b: &BTreeMap<ReplicaId, u64>) -> BTreeMap<ReplicaId, u64> {
    let mut m = a.clone();
    for (&r, &v) in b {
        let e = m.entry(r).or_insert(0);
        *e = (*e).max(v);
    }
    m
}

fn sum(m: &BTreeMap<ReplicaId, u64>) -> u128 {
    m.values().map(|&v| u128::from(v)).sum()
}

/// The lattice state of these slot totals, built with `CounterState::merge_slot`.
fn lattice(slots: impl IntoIterator<Item = (ReplicaId, SlotTotals)>) -> CounterState {
    let region = Region::from("eu");
    let mut state = CounterState::new();
    for (replica, totals) in slots {
        state.merge_slot(replica, &region, totals);
    }
    state
}

/// Checks a counter's slot totals against a lattice state built on its own from the same
/// slots: the same non-zero slot totals (the region aside).
fn assert_agrees(slots: Vec<(ReplicaId, SlotTotals)>, lattice: &CounterState) {
    let held: Vec<(ReplicaId, SlotTotals)> = lattice
        .slots()
        .iter()
        .map(|(r, slot)| (*r, slot.totals))
        .filter(|(_, t)| *t != SlotTotals::default())
        .collect();
    let slots: Vec<(ReplicaId, SlotTotals)> = slots
        .into_iter()
        .filter(|(_, t)| *t != SlotTotals::default())
        .collect();
    assert_eq!(slots, held, "a counter's merge holds the lattice's slots");
}

/// A G-Counter's slots as slot totals.
fn g_totals(c: &GCounter) -> Vec<(ReplicaId, SlotTotals)> {
    c.iter().map(|(r, p)| (r, SlotTotals { p, n: 0 })).collect()
}

/// A PN-Counter's slots as slot totals, by replica.
fn pn_totals(c: &PNCounter) -> Vec<(ReplicaId, SlotTotals)> {
    let replicas: std::collections::BTreeSet<ReplicaId> = c
        .increments()
        .iter()
        .chain(c.decrements().iter())
        .map(|(r, _)| r)
        .collect();
    replicas.into_iter().map(|r| (r, c.get(r))).collect()
}

/// `p - n` of a lattice state's value.
fn signed(state: &CounterState) -> i128 {
    let v = state.value();
    i128::try_from(v.p).expect("fewer than 2^63 slots")
        - i128::try_from(v.n).expect("fewer than 2^63 slots")
}

fn merged<T: Clone>(a: &T, b: &T, merge: impl Fn(&mut T, &T)) -> T {
    let mut out = a.clone();
    merge(&mut out, b);
    out
}

/// Checks the slots against the model: sorted, no zero slot, exactly the model's.
fn assert_matches_model(c: &GCounter, model: &BTreeMap<ReplicaId, u64>) {
    let slots: Vec<_> = c.iter().collect();
    let expected: Vec<_> = model.iter().map(|(&r, &v)| (r, v)).collect();
    assert_eq!(
        slots, expected,
        "slots are the max per replica, sorted, none zero"
    );
    assert_eq!(c.len(), model.len());
    assert_eq!(
        c.value(),
        sum(model),
        "value is the exact u128 sum of the slots"
    );
    for (&r, &v) in model {
        assert_eq!(c.get(r), v);
    }
}

fn check_g(input: &Input) {
    let models: Vec<_> = input.g.iter().map(|s| model_g(s)).collect();
    let counters: Vec<GCounter> = input
        .g
        .iter()
        .map(|s| s.iter().map(|&(r, t)| (r.id(), t.get())).collect())
        .collect();
    for ((c, model), slots) in counters.iter().zip(&models).zip(&input.g) {
        assert_matches_model(c, model);
        // merge_slot one by one builds the same state, and says when it changed something.
        let mut one_by_one = GCounter::new();
        for &(r, t) in slots {
            let before = one_by_one.get(r.id());
            let changed = one_by_one.merge_slot(r.id(), t.get());
            assert_eq!(
                changed,
                t.get() > before,
                "merge_slot reports a change exactly"
            );
        }
        assert_eq!(&one_by_one, c);
        // JSON round trip.
        let json = serde_json::to_string(c).expect("a counter serializes");
        let back: GCounter = serde_json::from_str(&json).expect("a counter's JSON decodes");
        assert_eq!(&back, c);
    }
    let (a, b, c) = (&counters[0], &counters[1], &counters[2]);
    let m = |x: &mut GCounter, y: &GCounter| x.merge(y);
    let ab = merged(a, b, m);
    assert_eq!(ab, merged(b, a, m), "merge is commutative");
    assert_eq!(
        merged(&ab, c, m),
        merged(a, &merged(b, c, m), m),
        "merge is associative"
    );
    assert_eq!(&merged(a, a, m), a, "merge is idempotent");
    assert_eq!(merged(&ab, b, m), ab, "merging again changes nothing");
    assert_matches_model(&ab, &union(&models[0], &models[1]));
    let abc = merged(&ab, c, m);
    assert_matches_model(&abc, &union(&union(&models[0], &models[1]), &models[2]));
    // The counter's merge is the lattice's join.
    let g_slots = |i: usize| {
        input.g[i]
            .iter()
            .map(|&(r, t)| (r.id(), SlotTotals { p: t.get(), n: 0 }))
    };
    let mut l = lattice(g_slots(0));
    l.join(&lattice(g_slots(1)));
    assert_agrees(g_totals(&ab), &l);
    assert_eq!(
        (ab.value(), 0),
        (l.value().p, l.value().n),
        "merge's value is the join's"
    );
    l.join(&lattice(g_slots(2)));
    assert_agrees(g_totals(&abc), &l);
    assert_eq!(abc.value(), l.value().p, "merge's value is the join's");
    // A delta carries what the merge needs, and only slots that moved.
    let delta = b.delta_since(a);
    assert_eq!(merged(a, &delta, m), ab, "a ∪ (b - a) = a ∪ b");
    for (r, v) in delta.iter() {
        assert!(v > a.get(r), "a delta holds only slots that grew");
    }

    // increment: exact when it fits, refused and unchanged when it would pass u64::MAX.
    let (r, by) = (input.increment.0.id(), input.increment.1.get());
    let mut x = abc.clone();
    let current = x.get(r);
    match current.checked_add(by) {
        Some(total) => {
            assert_eq!(x.increment(r, by), Ok(total));
            assert_eq!(x.get(r), total);
            assert_eq!(x.value(), abc.value() + u128::from(by));
        }
        None => {
            assert_eq!(
                x.increment(r, by),
                Err(Error::SlotOverflow {
                    replica: r,
                    current,
                    by
                })
            );
            assert_eq!(x, abc, "a refused increment changes nothing");
        }
    }
}

fn check_pn(input: &Input) {
    let halves = |i: usize| {
        let p: Vec<_> = input.pn[i].iter().map(|&(r, p, _)| (r, p)).collect();
        let n: Vec<_> = input.pn[i].iter().map(|&(r, _, n)| (r, n)).collect();
        (model_g(&p), model_g(&n))
    };
    let counters: Vec<PNCounter> = input
        .pn
        .iter()
        .map(|slots| {
            let mut c = PNCounter::new();
            for &(r, p, n) in slots {
                c.merge_slot(
                    r.id(),
                    SlotTotals {
                        p: p.get(),
                        n: n.get(),
                    },
                );
            }
            c
        })
        .collect();
    for (i, c) in counters.iter().enumerate() {
        let (p, n) = halves(i);
        assert_matches_model(&c.increments(), &p);
        assert_matches_model(&c.decrements(), &n);
        let value = i128::try_from(sum(&p)).expect("fewer than 2^63 slots")
            - i128::try_from(sum(&n)).expect("fewer than 2^63 slots");
        assert_eq!(c.value(), value, "value is the exact i128 difference");
        let json = serde_json::to_string(c).expect("a counter serializes");
        let back: PNCounter = serde_json::from_str(&json).expect("a counter's JSON decodes");
        assert_eq!(&back, c);
    }
    let (a, b, c) = (&counters[0], &counters[1], &counters[2]);
    let m = |x: &mut PNCounter, y: &PNCounter| x.merge(y);
    let ab = merged(a, b, m);
    assert_eq!(ab, merged(b, a, m), "merge is commutative");
    let abc = merged(&ab, c, m);
    assert_eq!(abc, merged(a, &merged(b, c, m), m), "merge is associative");
    assert_eq!(&merged(a, a, m), a, "merge is idempotent");
    assert_eq!(merged(a, &b.delta_since(a), m), ab, "a ∪ (b - a) = a ∪ b");
    let ((p0, n0), (p1, n1), (p2, n2)) = (halves(0), halves(1), halves(2));
    let (p, n) = (union(&union(&p0, &p1), &p2), union(&union(&n0, &n1), &n2));
    assert_matches_model(&abc.increments(), &p);
    assert_matches_model(&abc.decrements(), &n);
    // The counter's merge is the lattice's join.
    let pn_slots = |i: usize| {
        input.pn[i].iter().map(|&(r, p, n)| {
            let totals = SlotTotals {
                p: p.get(),
                n: n.get(),
            };
            (r.id(), totals)
        })
    };
    let mut l = lattice(pn_slots(0));
    l.join(&lattice(pn_slots(1)));
    assert_agrees(pn_totals(&ab), &l);
    assert_eq!(ab.value(), signed(&l), "merge's value is the join's");
    l.join(&lattice(pn_slots(2)));
    assert_agrees(pn_totals(&abc), &l);
    assert_eq!(abc.value(), signed(&l), "merge's value is the join's");

    let (r, by) = (input.decrement.0.id(), input.decrement.1.get());
    let mut x = abc.clone();
    let current = x.get(r);
    match current.n.checked_add(by) {
        Some(total) => {
            assert_eq!(x.decrement(r, by), Ok(total));
            assert_eq!(x.value(), abc.value() - i128::from(by));
        }
        None => {
            assert!(matches!(
                x.decrement(r, by),
                Err(Error::SlotOverflow { current: c, by: b, .. }) if c == current.n && b == by
            ));
            assert_eq!(x, abc, "a refused decrement changes nothing");
        }
    }
    let (r, by) = (input.increment.0.id(), input.increment.1.get());
    let mut y = abc.clone();
    let current = y.get(r).p;
    if current.checked_add(by).is_none() {
        assert!(y.increment(r, by).is_err());
        assert_eq!(y, abc, "a refused increment changes nothing");
    } else {
        assert_eq!(y.increment(r, by), Ok(current + by));
    }
}

fuzz_target!(|input: Input| {
    check_g(&input);
    check_pn(&input);
});
