//! The CRDT laws, checked by proptest on arbitrary counters: merge is a join
//! (commutative, associative, idempotent, monotone), deltas are as good as full states, and
//! counts survive any interleaving, duplication and staleness of what replicas exchange.
//!
//! `GCounter` and `PNCounter` are views of `CounterState`, the lattice the edge and the merger
//! run (its own laws are in `lattice.rs`); the `*_agrees_with_counter_state` laws still check
//! what they do against that lattice driven on its own from the same slots, with
//! `CounterState::merge_slot` (in a region of its own) — merge is `CounterState::join`, value
//! is `CounterState::value`, an increment is a `merge_slot` of the raised total — so a view
//! that slipped a slot, a half or a zero would fail here.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::BTreeMap;

use proptest::prelude::*;
use tally_crdt::{CounterState, GCounter, PNCounter, Region, ReplicaId, SlotTotals};

/// Few replica ids, so arbitrary counters share slots; totals across the whole u64 range,
/// with a bias towards the extremes.
fn total() -> impl Strategy<Value = u64> {
    prop_oneof![0..1000u64, any::<u64>(), (u64::MAX - 3)..=u64::MAX]
}

fn slots() -> impl Strategy<Value = Vec<(u8, u64)>> {
    prop::collection::vec((0..12u8, total()), 0..16)
}

fn gcounter() -> impl Strategy<Value = GCounter> {
    slots().prop_map(|s| g_of(&s))
}

fn g_of(slots: &[(u8, u64)]) -> GCounter {
    slots.iter().map(|&(r, v)| (rid(r), v)).collect()
}

fn pn_slots() -> impl Strategy<Value = Vec<(ReplicaId, SlotTotals)>> {
    prop::collection::vec((0..12u8, total(), total()), 0..16).prop_map(|s| {
        s.into_iter()
            .map(|(r, p, n)| (rid(r), SlotTotals { p, n }))
            .collect()
    })
}

fn pncounter() -> impl Strategy<Value = PNCounter> {
    pn_slots().prop_map(|s| pn_of(&s))
}

fn pn_of(slots: &[(ReplicaId, SlotTotals)]) -> PNCounter {
    let mut c = PNCounter::new();
    for &(r, totals) in slots {
        c.merge_slot(r, totals);
    }
    c
}

fn rid(r: impl Into<u128>) -> ReplicaId {
    ReplicaId::from_u128(r.into() + 1)
}

/// The id of replica number `i` in a simulation.
fn nth(i: usize) -> ReplicaId {
    rid(u128::try_from(i).expect("simulations have few replicas"))
}

fn merged(a: &GCounter, b: &GCounter) -> GCounter {
    let mut m = a.clone();
    m.merge(b);
    m
}

fn merged_pn(a: &PNCounter, b: &PNCounter) -> PNCounter {
    let mut m = a.clone();
    m.merge(b);
    m
}

/// The lattice state of these slot totals, built with `CounterState`'s own operations (in a
/// region of its own: a view's slots are in the nameless region, and the value does not
/// depend on it).
fn lattice(slots: impl IntoIterator<Item = (ReplicaId, SlotTotals)>) -> CounterState {
    let region = Region::from("eu");
    let mut state = CounterState::new();
    for (replica, totals) in slots {
        state.merge_slot(replica, &region, totals);
    }
    state
}

fn lattice_g(slots: &[(u8, u64)]) -> CounterState {
    lattice(slots.iter().map(|&(r, p)| (rid(r), SlotTotals { p, n: 0 })))
}

fn joined(a: &CounterState, b: &CounterState) -> CounterState {
    let mut m = a.clone();
    m.join(b);
    m
}

/// A state's non-zero slot totals, regions aside.
fn totals(state: &CounterState) -> Vec<(ReplicaId, SlotTotals)> {
    state
        .slots()
        .iter()
        .map(|(r, s)| (*r, s.totals))
        .filter(|(_, t)| *t != SlotTotals::default())
        .collect()
}

/// A G-Counter's non-zero slots, as slot totals.
fn g_totals(c: &GCounter) -> Vec<(ReplicaId, SlotTotals)> {
    c.iter()
        .filter(|(_, p)| *p != 0)
        .map(|(r, p)| (r, SlotTotals { p, n: 0 }))
        .collect()
}

/// A PN-Counter's non-zero slots, as slot totals.
fn pn_totals(c: &PNCounter) -> Vec<(ReplicaId, SlotTotals)> {
    let replicas: std::collections::BTreeSet<ReplicaId> = c
        .increments()
        .iter()
        .chain(c.decrements().iter())
        .map(|(r, _)| r)
        .collect();
    replicas
        .into_iter()
        .map(|r| (r, c.get(r)))
        .filter(|(_, t)| *t != SlotTotals::default())
        .collect()
}

/// `p - n` of a state's value.
fn signed(state: &CounterState) -> i128 {
    let v = state.value();
    i128::try_from(v.p).unwrap() - i128::try_from(v.n).unwrap()
}

proptest! {
    #[test]
    fn gcounter_merge_matches_a_max_per_slot_model(a in gcounter(), b in gcounter()) {
        let mut model: BTreeMap<ReplicaId, u64> = a.iter().collect();
        for (r, v) in b.iter() {
            let slot = model.entry(r).or_default();
            *slot = (*slot).max(v);
        }
        let m = merged(&a, &b);
        prop_assert_eq!(m.iter().collect::<Vec<_>>(), model.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn gcounter_merge_is_commutative(a in gcounter(), b in gcounter()) {
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
    }

    #[test]
    fn gcounter_merge_is_associative(a in gcounter(), b in gcounter(), c in gcounter()) {
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
    }

    #[test]
    fn gcounter_merge_is_idempotent(a in gcounter(), b in gcounter()) {
        prop_assert_eq!(merged(&a, &a), a.clone());
        let ab = merged(&a, &b);
        prop_assert_eq!(merged(&ab, &b), ab.clone());
        prop_assert_eq!(merged(&ab, &a), ab);
    }

    #[test]
    fn gcounter_merge_never_decreases_a_slot_or_the_value(a in gcounter(), b in gcounter()) {
        let m = merged(&a, &b);
        for (r, v) in a.iter().chain(b.iter()) {
            prop_assert!(m.get(r) >= v);
        }
        prop_assert!(m.value() >= a.value().max(b.value()));
    }

    #[test]
    fn gcounter_value_is_the_exact_sum_of_slots(a in gcounter()) {
        let mut sum = 0u128;
        for (_, v) in a.iter() {
            sum = sum.checked_add(u128::from(v)).unwrap();
        }
        prop_assert_eq!(a.value(), sum);
    }

    #[test]
    fn gcounter_delta_merged_into_the_older_state_equals_the_full_merge(
        old in gcounter(), new in gcounter()
    ) {
        let delta = new.delta_since(&old);
        prop_assert!(delta.len() <= new.len());
        prop_assert_eq!(merged(&old, &delta), merged(&old, &new));
    }

    #[test]
    fn gcounter_merge_agrees_with_counter_state_join(sa in slots(), sb in slots()) {
        let (a, b) = (g_of(&sa), g_of(&sb));
        let (la, lb) = (lattice_g(&sa), lattice_g(&sb));
        let m = merged(&a, &b);
        let l = joined(&la, &lb);
        prop_assert_eq!(m.value(), l.value().p);
        prop_assert_eq!(l.value().n, 0);
        prop_assert_eq!(g_totals(&m), totals(&l));
        prop_assert_eq!(g_totals(&a), totals(&la));
    }

    #[test]
    fn gcounter_increments_and_slot_merges_agree_with_counter_state_merge_slot(
        start in slots(),
        ops in prop::collection::vec((0..12u8, any::<bool>(), total()), 0..24),
    ) {
        let mut view = g_of(&start);
        let mut state = lattice_g(&start);
        let region = Region::from("eu");
        for (r, increment, by) in ops {
            let r = rid(r);
            let held = state.slot(r).p;
            if increment {
                match held.checked_add(by) {
                    Some(total) => {
                        prop_assert_eq!(view.increment(r, by), Ok(total));
                        state.merge_slot(r, &region, SlotTotals { p: total, n: 0 });
                    }
                    None => prop_assert!(view.increment(r, by).is_err()),
                }
            } else {
                let grew = state.merge_slot(r, &region, SlotTotals { p: by, n: 0 });
                prop_assert_eq!(view.merge_slot(r, by), grew);
            }
            prop_assert_eq!(view.value(), state.value().p);
            prop_assert_eq!(view.get(r), state.slot(r).p);
        }
        prop_assert_eq!(g_totals(&view), totals(&state));
    }

    #[test]
    fn pncounter_merge_agrees_with_counter_state_join(sa in pn_slots(), sb in pn_slots()) {
        let (a, b) = (pn_of(&sa), pn_of(&sb));
        let (la, lb) = (lattice(sa), lattice(sb));
        let m = merged_pn(&a, &b);
        let l = joined(&la, &lb);
        prop_assert_eq!(m.value(), signed(&l));
        prop_assert_eq!(pn_totals(&m), totals(&l));
        for (r, t) in totals(&l) {
            prop_assert_eq!(m.get(r), t);
        }
        let (p, n) = (m.increments(), m.decrements());
        prop_assert_eq!(p.value(), l.value().p);
        prop_assert_eq!(n.value(), l.value().n);
    }

    #[test]
    fn pncounter_merge_is_a_join(a in pncounter(), b in pncounter(), c in pncounter()) {
        prop_assert_eq!(merged_pn(&a, &b), merged_pn(&b, &a));
        prop_assert_eq!(merged_pn(&merged_pn(&a, &b), &c), merged_pn(&a, &merged_pn(&b, &c)));
        prop_assert_eq!(merged_pn(&a, &a), a.clone());
        let ab = merged_pn(&a, &b);
        let (p, n) = (ab.increments().value(), ab.decrements().value());
        prop_assert_eq!(ab.value(), i128::try_from(p).unwrap() - i128::try_from(n).unwrap());
    }

    #[test]
    fn pncounter_delta_merged_into_the_older_state_equals_the_full_merge(
        old in pncounter(), new in pncounter()
    ) {
        prop_assert_eq!(merged_pn(&old, &new.delta_since(&old)), merged_pn(&old, &new));
    }

    /// Replicas apply increments and decrements locally while gossiping states in an
    /// arbitrary schedule (stale states, repeats, any direction); once everything is merged,
    /// the value is exactly increments minus decrements.
    #[test]
    fn pncounter_value_is_increments_minus_decrements_in_any_interleaving(
        ops in prop::collection::vec((0..5usize, any::<bool>(), 1..1_000_000u64), 0..200),
        gossip in prop::collection::vec((0..5usize, 0..5usize, 0..200usize), 0..60),
        final_order in Just((0..5usize).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let mut replicas = vec![PNCounter::new(); 5];
        let mut history: Vec<Vec<PNCounter>> = vec![Vec::new(); 5];
        let mut expected = 0i128;
        for (step, &(r, up, by)) in ops.iter().enumerate() {
            if up {
                replicas[r].increment(nth(r), by).unwrap();
                expected += i128::from(by);
            } else {
                replicas[r].decrement(nth(r), by).unwrap();
                expected -= i128::from(by);
            }
            history[r].push(replicas[r].clone());
            for &(from, to, at) in gossip.iter().filter(|g| g.2 == step) {
                // Send an arbitrary (possibly stale) state of `from` to `to`.
                if let Some(state) = history[from].get(at % history[from].len().max(1)).cloned() {
                    replicas[to].merge(&state);
                }
            }
        }
        let mut global = PNCounter::new();
        for &r in &final_order {
            global.merge(&replicas[r]);
            global.merge(&replicas[r]);
        }
        prop_assert_eq!(global.value(), expected);
    }

    /// The merger's view: one replica's successive slot totals, delivered shuffled and
    /// duplicated (retries, reordering), leave exactly the newest totals.
    #[test]
    fn stale_and_duplicated_syncs_change_nothing(
        steps in prop::collection::vec((0..1000u64, 0..1000u64), 1..30),
        extra in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        seed in any::<u64>(),
    ) {
        let me = rid(1u8);
        let mut own = PNCounter::new();
        let mut sent = Vec::new();
        for (up, down) in steps {
            own.increment(me, up).unwrap();
            own.decrement(me, down).unwrap();
            sent.push(own.get(me));
        }
        for i in &extra {
            sent.push(*i.get(&sent));
        }
        // Deterministic shuffle from the seed.
        let mut x = seed | 1;
        for i in (1..sent.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            let j = x % u64::try_from(i + 1).unwrap();
            sent.swap(i, usize::try_from(j).unwrap());
        }
        let mut merger = PNCounter::new();
        for totals in sent {
            merger.merge_slot(me, totals);
        }
        prop_assert_eq!(merger, own);
    }
}
