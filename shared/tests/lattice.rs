//! The laws of [`CounterState`], checked by proptest over random histories of one counter:
//! hits in replicas of several regions, retirements (folds into the object's carry), the
//! objects re-sending their own carries, objects rebasing their carries into a later frame,
//! and resets, applied one at a time as the store applies them. Its views are what the parts of tally can hold: the
//! store at some moment, or such a load with slots of later commits merged into it (a
//! merger's cache). Over those views `join` is commutative, associative and idempotent; the
//! latest state dominates every view; the value never goes back within an epoch; a fold
//! and a rebase keep the value; `merge_slot` is a join with one slot; the value is exactly what was
//! counted since the last reset; and a store restored to any earlier state, before resets
//! too, comes back to it once every object re-sends its live slot, its carry and its share of
//! the last reset (what the edge's anti-entropy does).
#![cfg(not(target_arch = "wasm32"))]

use std::sync::Arc;

use proptest::prelude::*;
use tally_crdt::{Carry, CounterState, GlobalTotals, Region, ReplicaId, SlotTotals, Timestamp};

/// One change of the counter, as the store applies it.
#[derive(Debug, Clone)]
enum Op {
    /// Replica `replica` (of region `replica % 2`) counts `p` up and `n` down.
    Hit { replica: u8, p: u64, n: u64 },
    /// Replica `replica`'s incarnation is retired: its slot folds into its object's carry,
    /// and the object goes on in its next generation.
    Retire { replica: u8 },
    /// Object `replica` re-sends its carry, as its syncs do.
    Resend { replica: u8 },
    /// Object `replica` rebases its carry into its next frame (what it carried is reclaimed,
    /// its carry starts again from zero) and sends it.
    Rebase { replica: u8 },
    /// The counter is reset (or deleted).
    Reset { delete: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..6u8, 0..50u64, 0..50u64).prop_map(|(replica, p, n)| Op::Hit { replica, p, n }),
        1 => (0..6u8).prop_map(|replica| Op::Retire { replica }),
        1 => (0..6u8).prop_map(|replica| Op::Resend { replica }),
        1 => (0..6u8).prop_map(|replica| Op::Rebase { replica }),
        1 => any::<bool>().prop_map(|delete| Op::Reset { delete }),
    ]
}

/// A replica's id: each retirement gives the object a new incarnation, so `(replica,
/// incarnation)` names it, as a lineage.
fn id(replica: u8, incarnation: u8) -> ReplicaId {
    ReplicaId::lineage(
        ReplicaId::from_u128((u128::from(replica) + 1) << 32),
        u32::from(incarnation),
    )
}

/// The object number `id` was made of.
fn object_of(id: ReplicaId) -> u128 {
    (id.object().as_u128() >> 32) - 1
}

/// What an object holds: per object, its incarnation, the sums of its retired incarnations'
/// final slots (its own carry) and its live slot.
#[derive(Debug, Clone, Default)]
struct Edge {
    incarnation: [u8; 6],
    carried: [GlobalTotals; 6],
    /// Per object, the frame of its carry and what it reclaimed into it.
    frame: [u64; 6],
    reclaimed: [GlobalTotals; 6],
}

impl Edge {
    /// Object `replica`'s carry, as it sends it.
    fn carry(&self, replica: u8) -> (ReplicaId, Carry) {
        let r = usize::from(replica);
        let object = id(replica, self.incarnation[r]);
        let carry = Carry {
            region: region(replica),
            through: u64::from(self.incarnation[r]),
            totals: self.carried[r],
            frame: self.frame[r],
            reclaimed: self.reclaimed[r],
        };
        (object, carry)
    }
}

fn region(replica: u8) -> Region {
    Arc::from(if replica.is_multiple_of(2) {
        "eu"
    } else {
        "us"
    })
}

/// A carry as the store merged it: after state `at`, `object`'s carry became `carry`.
#[derive(Debug, Clone)]
struct Fold {
    at: usize,
    object: ReplicaId,
    carry: Carry,
}

/// A history: every state the store goes through (the first is empty), its carries, what
/// was counted since the last reset, and what the objects hold at the end.
struct History {
    states: Vec<CounterState>,
    folds: Vec<Fold>,
    counted: GlobalTotals,
    edge: Edge,
}

fn history(ops: &[Op]) -> History {
    let mut state = CounterState::new();
    let mut edge = Edge::default();
    let incarnation = |edge: &Edge, replica: u8| edge.incarnation[usize::from(replica)];
    let mut since_reset = GlobalTotals::default();
    let mut states = vec![state.clone()];
    let mut folds = Vec::new();
    for (at, op) in ops.iter().enumerate() {
        match *op {
            Op::Hit { replica, p, n } => {
                let r = id(replica, incarnation(&edge, replica));
                let totals = state.slot(r);
                state.merge_slot(
                    r,
                    &region(replica),
                    SlotTotals {
                        p: totals.p + p,
                        n: totals.n + n,
                    },
                );
                since_reset.p += u128::from(p);
                since_reset.n += u128::from(n);
            }
            Op::Retire { replica } => {
                let r = id(replica, incarnation(&edge, replica));
                let value = state.value();
                let last = state.slot(r);
                if let Some((object, carry)) = state.retire(r) {
                    assert_eq!(state.value(), value, "a fold keeps the value");
                    let i = usize::from(replica);
                    edge.incarnation[i] += 1;
                    edge.carried[i].p += u128::from(last.p);
                    edge.carried[i].n += u128::from(last.n);
                    assert_eq!(
                        carry.totals, edge.carried[i],
                        "the store's carry is the object's"
                    );
                    folds.push(Fold {
                        at: states.len(),
                        object,
                        carry,
                    });
                }
            }
            Op::Resend { replica } => {
                let (object, carry) = edge.carry(replica);
                let value = state.value();
                state.merge_carry(object, &carry);
                assert_eq!(state.value(), value, "a re-sent carry is known already");
                folds.push(Fold {
                    at: states.len(),
                    object,
                    carry,
                });
            }
            Op::Rebase { replica } => {
                let i = usize::from(replica);
                edge.frame[i] += 1;
                edge.reclaimed[i].p += edge.carried[i].p;
                edge.reclaimed[i].n += edge.carried[i].n;
                edge.carried[i] = GlobalTotals::default();
                let (object, carry) = edge.carry(replica);
                let value = state.value();
                state.merge_carry(object, &carry);
                assert_eq!(state.value(), value, "a rebase keeps the value");
                folds.push(Fold {
                    at: states.len(),
                    object,
                    carry,
                });
            }
            Op::Reset { delete } => {
                let ms = i64::try_from(at).expect("short histories");
                state.reset(Timestamp::from_unix_ms(ms), delete);
                since_reset = GlobalTotals::default();
                assert_eq!(state.value(), GlobalTotals::default());
            }
        }
        states.push(state.clone());
    }
    History {
        states,
        folds,
        counted: since_reset,
        edge,
    }
}

/// A view: the store's state at `load`, with what a merger's cache applies after it — the
/// slots of some replicas as later commits left them, and some later retirements — in the
/// order the picks say.
fn view(
    states: &[CounterState],
    folds: &[Fold],
    load: usize,
    later: usize,
    picks: u16,
) -> CounterState {
    let load = load % states.len();
    let commit = load + later % (states.len() - load);
    let mut view = states[load].clone();
    let mut applied = false;
    let apply_folds = |view: &mut CounterState| {
        for (i, fold) in folds.iter().enumerate() {
            if fold.at > load && fold.at <= commit && picks & (1 << (6 + i % 10)) != 0 {
                view.merge_carry(fold.object, &fold.carry);
            }
        }
    };
    if picks & (1 << 15) != 0 {
        apply_folds(&mut view);
        applied = true;
    }
    for (replica, slot) in states[commit].slots().iter() {
        if picks & (1 << object_of(*replica)) != 0 {
            view.merge_slot(*replica, slot.region, slot.totals);
        }
    }
    if !applied {
        apply_folds(&mut view);
    }
    view
}

fn joined(a: &CounterState, b: &CounterState) -> CounterState {
    let mut j = a.clone();
    j.join(b);
    j
}

/// A history and three views of it.
fn views() -> impl Strategy<Value = (Vec<CounterState>, GlobalTotals, [CounterState; 3])> {
    (
        prop::collection::vec(op(), 0..40),
        prop::array::uniform3((any::<usize>(), any::<usize>(), any::<u16>())),
    )
        .prop_map(|(ops, picks)| {
            let h = history(&ops);
            let views =
                picks.map(|(load, later, picks)| view(&h.states, &h.folds, load, later, picks));
            (h.states, h.counted, views)
        })
}

/// A history and the index of one of its states.
fn restores() -> impl Strategy<Value = (History, usize)> {
    (prop::collection::vec(op(), 0..40), any::<usize>()).prop_map(|(ops, at)| (history(&ops), at))
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} states, edge {:?}", self.states.len(), self.edge)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn join_is_commutative_associative_and_idempotent((_, _, [a, b, c]) in views()) {
        prop_assert_eq!(joined(&a, &b), joined(&b, &a));
        prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
        prop_assert_eq!(joined(&a, &a), a.clone());
        let ab = joined(&a, &b);
        prop_assert_eq!(joined(&ab, &b), ab.clone());
        prop_assert!(ab.dominates(&a) && ab.dominates(&b));
    }

    #[test]
    fn the_latest_state_dominates_every_view_and_counts_exactly((states, counted, views) in views()) {
        let last = states.last().expect("a history has a state");
        prop_assert_eq!(last.value(), counted);
        for v in &views {
            prop_assert!(last.dominates(v), "{:?}\ndoes not dominate\n{:?}", last, v);
            prop_assert_eq!(joined(v, last), last.clone());
        }
    }

    #[test]
    fn the_value_never_goes_back_within_an_epoch((_, _, [a, b, _]) in views()) {
        let ab = joined(&a, &b);
        if ab.epoch().number == a.epoch().number {
            prop_assert!(ab.value().dominates(a.value()), "{:?} after {:?}", ab.value(), a.value());
        } else {
            prop_assert!(ab.epoch().number > a.epoch().number);
        }
        let brief = |c: &CounterState| format!(
            "epoch {} value {:?} slots {:?} bases {:?} cuts {:?}",
            c.epoch().number,
            c.value(),
            c.slots().iter().map(|(r, s)| (r.as_u128(), s.totals.p, s.totals.n)).collect::<Vec<_>>(),
            c.bases(),
            c.cuts()
        );
        prop_assert!(
            ab.bound().covers(a.bound()) && ab.bound().covers(b.bound()),
            "a {}\nb {}\nab {}", brief(&a), brief(&b), brief(&ab)
        );
    }

    #[test]
    fn merging_a_slot_is_joining_a_state_of_that_slot(
        (states, _, [a, _, _]) in views(),
        replica in 0..6u8,
        p in 0..200u64,
        n in 0..200u64,
    ) {
        let r = id(replica, 0);
        let totals = SlotTotals { p, n };
        let mut merged = a.clone();
        let grew = merged.merge_slot(r, &region(replica), totals);
        // The same slot as a state of the view's retirements and epoch.
        let mut one = CounterState::from_parts(
            [(r, region(replica), totals)],
            a.carries().iter().map(|(k, v)| (*k, v.clone())),
            a.bases().iter().map(|(k, v)| (Arc::clone(k), v.clone())),
            a.epoch(),
            a.cuts().iter().map(|(k, v)| (Arc::clone(k), *v)),
        );
        one.join(&a);
        prop_assert_eq!(&merged, &one);
        prop_assert_eq!(grew, merged != a);
        prop_assert_eq!(merged.value(), one.value(), "the sums kept on the way are the sums");
        let _ = states;
    }

    #[test]
    fn the_kept_sums_are_the_sums_of_the_parts((_, _, [a, b, c]) in views()) {
        for v in [a, b, c] {
            let rebuilt = CounterState::from_parts(
                v.slots().iter().map(|(r, s)| (*r, Arc::clone(s.region), s.totals)),
                v.carries().iter().map(|(k, c)| (*k, c.clone())),
                v.bases().iter().map(|(k, b)| (Arc::clone(k), b.clone())),
                v.epoch(),
                v.cuts().iter().map(|(k, t)| (Arc::clone(k), *t)),
            );
            prop_assert_eq!(rebuilt.value(), v.value());
            prop_assert_eq!(rebuilt.shares(), v.shares());
            prop_assert_eq!(rebuilt.replicas(), v.replicas());
        }
    }

    #[test]
    fn a_store_restored_to_any_earlier_state_heals_from_what_the_objects_resend(
        (h, at) in restores(),
    ) {
        // A restore takes the store back to an earlier state, before resets too: each
        // object re-sends its share of the last reset (as the store told it), and the
        // restored store takes that epoch up from the first, then each share.
        let mut restored = h.states[at % h.states.len()].clone();
        let last = h.states.last().expect("a history has a state");
        for replica in 0..6u8 {
            let (object, carry) = h.edge.carry(replica);
            if last.epoch().number > 0 {
                restored.adopt(last.epoch());
                restored.tell_cut(object, &region(replica), last.object_cut(object));
            }
            restored.merge_carry(object, &carry);
            if let Some(slot) = last.slots().get(&object) {
                restored.merge_slot(object, slot.region, slot.totals);
            }
        }
        prop_assert_eq!(restored.epoch(), last.epoch());
        prop_assert_eq!(restored.value(), last.value());
        prop_assert_eq!(restored.value(), h.counted);
    }
}

/// Slots as views may name them: a replica (of 8) in any of three regions, whatever region
/// another view names it in.
fn placed_slots() -> impl Strategy<Value = Vec<(u8, u8, u64, u64)>> {
    prop::collection::vec((0..8u8, 0..3u8, 0..1000u64, 0..1000u64), 0..24)
}

fn placed_view(slots: &[(u8, u8, u64, u64)]) -> CounterState {
    let regions: [Region; 3] = [Region::from("ap"), Region::from("eu"), Region::from("us")];
    let mut view = CounterState::new();
    for &(replica, region, p, n) in slots {
        view.merge_slot(
            id(replica, 0),
            &regions[usize::from(region)],
            SlotTotals { p, n },
        );
    }
    view
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A view keeps each replica in its region of record, so two views that name a replica
    /// in different regions join to different regions; but whatever the regions and the
    /// order, a join holds each replica once, with the max of its slots, and counts it once.
    #[test]
    fn a_replica_named_in_several_regions_is_held_and_counted_once(
        a in placed_slots(), b in placed_slots(), c in placed_slots(),
    ) {
        let mut max = std::collections::BTreeMap::<u8, SlotTotals>::new();
        for &(replica, _, p, n) in a.iter().chain(&b).chain(&c) {
            let held = max.entry(replica).or_default();
            *held = held.join(SlotTotals { p, n });
        }
        max.retain(|_, t| *t != SlotTotals::default());
        let counted = max.values().fold(GlobalTotals::default(), |sum, t| GlobalTotals {
            p: sum.p + u128::from(t.p),
            n: sum.n + u128::from(t.n),
        });
        let views = [placed_view(&a), placed_view(&b), placed_view(&c)];
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let mut joined = views[order[0]].clone();
            joined.join(&views[order[1]]);
            joined.join(&views[order[2]]);
            prop_assert_eq!(joined.value(), counted);
            prop_assert_eq!(joined.slots().len(), max.len());
            for (&replica, &totals) in &max {
                prop_assert_eq!(joined.slot(id(replica, 0)), totals);
            }
            let shares = joined.shares().iter().fold(GlobalTotals::default(), |sum, (_, s)| {
                GlobalTotals { p: sum.p + s.p, n: sum.n + s.n }
            });
            prop_assert_eq!(shares, counted, "the shares sum to the value");
        }
    }
}
