//! The counter lattice (`CounterState`) under fuzzer-chosen histories: hits in replicas of two
//! regions, retirements (folds into the object's carry), objects re-sending their carries or
//! rebasing them into a later frame, and resets applied by one writer (the store), and views of that history as a merger's
//! cache can hold them — a load at some step with slots of later commits and later carries
//! applied to it, in either order.
//!
//! - join is commutative, associative and idempotent over those views;
//! - the latest state dominates every view, and its value is exactly what was counted since
//!   the last reset (totals near `u64::MAX` included: no panic, no wrap);
//! - a fold, a re-sent carry or a rebased one keeps the value; within an epoch a join never lowers it;
//! - a store restored to an earlier state, before resets too, comes back to the latest value
//!   once every object re-sends its share of the last reset, its carry and its live slot.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tally_crdt::{Carry, CounterState, GlobalTotals, Region, ReplicaId, SlotTotals, Timestamp};

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Op {
    /// Object `object % 6` counts `p` up and `n` down (small, or near `u64::MAX`).
    Hit {
        object: u8,
        p: u8,
        n: u8,
        huge: bool,
    },
    /// Object `object % 6` rotates: its incarnation is retired.
    Retire { object: u8 },
    /// Object `object % 6` re-sends its carry.
    Resend { object: u8 },
    /// Object `object % 6` rebases its carry into its next frame and sends it.
    Rebase { object: u8 },
    /// The counter is reset (or deleted).
    Reset { delete: bool },
}

#[derive(Debug, Arbitrary)]
struct Input {
    ops: Vec<Op>,
    /// Three views: (load step, later step, which slots and folds they take, folds first).
    views: [(u8, u8, u16, bool); 3],
}

fn region(object: u8) -> Region {
    Arc::from(if object.is_multiple_of(2) { "eu" } else { "us" })
}

struct Fold {
    at: usize,
    object: ReplicaId,
    carry: Carry,
}

/// Object `object`'s carry as it sends it: the generations below `through`, in `frame`.
fn carry_of(
    object: u8,
    through: u32,
    totals: GlobalTotals,
    frame: u64,
    reclaimed: GlobalTotals,
) -> Carry {
    Carry {
        region: region(object),
        through: u64::from(through),
        totals,
        frame,
        reclaimed,
    }
}

/// Incarnation `generation` of object `object`.
fn id(object: u8, generation: u32) -> ReplicaId {
    ReplicaId::lineage(
        ReplicaId::from_u128((u128::from(object) + 1) << 32),
        generation,
    )
}

fuzz_target!(|input: Input| {
    let mut state = CounterState::new();
    let mut incarnation = [0u32; 6];
    let mut carried = [GlobalTotals::default(); 6];
    let mut frame = [0u64; 6];
    let mut reclaimed = [GlobalTotals::default(); 6];
    let mut counted = GlobalTotals::default();
    let mut states = vec![state.clone()];
    let mut folds: Vec<Fold> = Vec::new();
    for (step, op) in input.ops.iter().take(64).enumerate() {
        match *op {
            Op::Hit { object, p, n, huge } => {
                let object = object % 6;
                let replica = id(object, incarnation[usize::from(object)]);
                let own = state.slot(replica);
                let (dp, dn) = if huge {
                    (u64::MAX / 4 - u64::from(p), u64::MAX / 4 - u64::from(n))
                } else {
                    (u64::from(p), u64::from(n))
                };
                let (Some(tp), Some(tn)) = (own.p.checked_add(dp), own.n.checked_add(dn)) else {
                    continue;
                };
                let grew = state.merge_slot(replica, &region(object), SlotTotals { p: tp, n: tn });
                assert_eq!(grew, dp > 0 || dn > 0);
                counted.p += u128::from(dp);
                counted.n += u128::from(dn);
            }
            Op::Retire { object } => {
                let object = object % 6;
                let replica = id(object, incarnation[usize::from(object)]);
                let value = state.value();
                let last = state.slot(replica);
                if let Some((object_id, carry)) = state.retire(replica) {
                    assert_eq!(state.value(), value, "a fold keeps the value");
                    let i = usize::from(object);
                    incarnation[i] += 1;
                    carried[i].p += u128::from(last.p);
                    carried[i].n += u128::from(last.n);
                    assert_eq!(
                        carry.totals, carried[i],
                        "the store's carry is the object's"
                    );
                    folds.push(Fold {
                        at: states.len(),
                        object: object_id,
                        carry,
                    });
                }
            }
            Op::Resend { object } | Op::Rebase { object } => {
                let rebase = matches!(op, Op::Rebase { .. });
                let object = object % 6;
                let i = usize::from(object);
                if rebase {
                    frame[i] += 1;
                    reclaimed[i].p = reclaimed[i].p.saturating_add(carried[i].p);
                    reclaimed[i].n = reclaimed[i].n.saturating_add(carried[i].n);
                    carried[i] = GlobalTotals::default();
                }
                let carry = carry_of(object, incarnation[i], carried[i], frame[i], reclaimed[i]);
                let value = state.value();
                state.merge_carry(id(object, incarnation[i]), &carry);
                assert_eq!(
                    state.value(),
                    value,
                    "a re-sent or rebased carry keeps the value"
                );
                folds.push(Fold {
                    at: states.len(),
                    object: id(object, 0),
                    carry,
                });
            }
            Op::Reset { delete } => {
                let ms = i64::try_from(step).unwrap_or(i64::MAX);
                state.reset(Timestamp::from_unix_ms(ms), delete);
                counted = GlobalTotals::default();
            }
        }
        states.push(state.clone());
    }
    assert_eq!(
        state.value(),
        counted,
        "the value is what was counted since the reset"
    );

    let views: Vec<CounterState> = input
        .views
        .iter()
        .map(|&(load, later, picks, folds_first)| {
            let load = usize::from(load) % states.len();
            let commit = load + usize::from(later) % (states.len() - load);
            let mut view = states[load].clone();
            let apply_folds = |view: &mut CounterState| {
                for (i, fold) in folds.iter().enumerate() {
                    if fold.at > load && fold.at <= commit && picks & (1 << (6 + i % 10)) != 0 {
                        view.merge_carry(fold.object, &fold.carry);
                    }
                }
            };
            if folds_first {
                apply_folds(&mut view);
            }
            for (replica, slot) in states[commit].slots().iter() {
                if picks & (1 << ((replica.as_u128() >> 32) % 6)) != 0 {
                    view.merge_slot(*replica, slot.region, slot.totals);
                }
            }
            if !folds_first {
                apply_folds(&mut view);
            }
            view
        })
        .collect();
    let join = |a: &CounterState, b: &CounterState| {
        let mut j = a.clone();
        j.join(b);
        j
    };
    let (a, b, c) = (&views[0], &views[1], &views[2]);
    assert_eq!(join(a, b), join(b, a));
    assert_eq!(join(&join(a, b), c), join(a, &join(b, c)));
    assert_eq!(join(a, a), *a);
    for v in &views {
        assert_eq!(
            join(v, &state),
            state,
            "the latest state dominates every view"
        );
    }
    let ab = join(a, b);
    if ab.epoch().number == a.epoch().number {
        assert!(ab.value().dominates(a.value()), "a join lowered the value");
    }

    // A store restored to the state of the first view's load, before resets too, heals once
    // every object re-sends its share of the last reset, its carry and its live slot.
    let mut restored = states[usize::from(input.views[0].0) % states.len()].clone();
    for object in 0..6u8 {
        let i = usize::from(object);
        let replica = id(object, incarnation[i]);
        if state.epoch().number > 0 {
            restored.adopt(state.epoch());
            restored.tell_cut(replica, &region(object), state.object_cut(replica));
        }
        let carry = carry_of(object, incarnation[i], carried[i], frame[i], reclaimed[i]);
        restored.merge_carry(replica, &carry);
        restored.merge_slot(replica, &region(object), state.slot(replica));
    }
    assert_eq!(restored.epoch(), state.epoch());
    assert_eq!(
        restored.value(),
        state.value(),
        "a restore heals from the objects"
    );
});
