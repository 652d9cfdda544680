//! [`CounterState`]: one counter as tally really holds it — the lattice every part runs.
//!
//! A counter is counted in many replica *incarnations* (an edge object's id until it rotates,
//! [`ReplicaId`]), each owning one slot of totals (`p` increments, `n` decrements) that only
//! grows. An incarnation that rotated is *retired*: its final slot is folded into its region's
//! *base* and the slot goes, so the slots a counter holds stay bounded by the live objects.
//! A *reset* starts a new epoch: the sums of every region at that moment become its *cuts*,
//! and the count is what grew above them. So the state is:
//!
//! - `slots`: per live replica, its region and totals;
//! - `carries`: per edge object, the sums of the final slots of its incarnations before a
//!   generation (a [`Carry`]). Incarnation ids name their object and generation
//!   ([`ReplicaId::lineage`]), so a slot of an earlier generation than its object's carry is
//!   in the carry and never live again. The merger writes a carry when it retires an
//!   incarnation, and the object itself keeps one per counter and re-sends it with every sync
//!   of that counter: a merger restored from an old backup gets back, from the edge, what
//!   every rotated-away incarnation counted;
//! - `bases`: per region, the sums of the final slots of replicas retired before carries
//!   existed, with those replicas (their tombstones); stores keep them as they were, nothing
//!   writes them any more;
//! - `epoch` (how many resets, whether the last was a delete, when) and `cuts`.
//!
//! Every change is a join with a small state, so any two views of a counter merge in any
//! order, any number of times, and a change applied twice or late is still right:
//! [`join`](CounterState::join) takes per object the max of each part of the carries (a
//! carry's sums are lower bounds of what its generations counted, which only grows with the
//! generation, so the max never counts a hit twice), per region the base that holds more
//! retired replicas, the max per live replica of the slots (a slot in a carry or a base
//! goes), and the later epoch with its cuts. The laws —
//! commutative, associative, idempotent, a value that never goes back within an epoch, a fold
//! that keeps it — are checked over random histories in `shared/tests/lattice.rs`.
//! [`merge_slot`](CounterState::merge_slot), [`merge_carry`](CounterState::merge_carry),
//! [`retire`](CounterState::retire) and [`reset`](CounterState::reset) are the changes a
//! commit makes;
//! [`value`](CounterState::value) is the count in the current epoch: per region, the slots
//! and base above its cut (never below zero: a view that lags the store may hold less than a
//! cut), summed.
//!
//! [`Bound`] is the summary a reader keeps of a counter — its totals in an epoch, a lower
//! bound the system really held — with its own join: the later epoch wins whatever its
//! totals, and within an epoch each half takes its max.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cmp::Ordering;

use crate::{GlobalTotals, ReplicaId, SlotTotals, Timestamp};

/// A region's name, shared by every slot, base and cut of it.
pub type Region = Arc<str>;

/// A counter's resets: how many, whether the last one was a delete, and when.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Epoch {
    /// Resets and deletes so far.
    pub number: u64,
    /// The last one was a delete: the counter is hidden from the lists until it counts again.
    pub deleted: bool,
    /// When the last one happened.
    pub at: Option<Timestamp>,
}

/// One live replica's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The replica's region of record.
    pub region: Region,
    /// Its totals.
    pub totals: SlotTotals,
}

/// One edge object's incarnations before generation `through`: the sums of their final
/// slots, as far as the writer knew them (a lower bound: a merger restored from a backup may
/// fold less than was counted, and the object's own carry, re-sent, raises it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carry {
    /// The object's region of record.
    pub region: Region,
    /// Every generation below this one is in the sums.
    pub through: u64,
    /// The sums of their final slots.
    pub totals: GlobalTotals,
}

impl Carry {
    /// The carry a sync of `sender` (of `region`) brings with a counter's slot: `carried`,
    /// the sums of the final slots of the generations of `sender`'s object below its own
    /// ([`SlotUpdate::carried`](crate::SlotUpdate::carried)). Merged into the object's carry
    /// ([`CounterState::merge_carry`] takes `sender` for its object).
    pub fn sent(sender: ReplicaId, region: Region, carried: SlotTotals) -> Carry {
        Carry {
            region,
            through: u64::from(sender.generation()),
            totals: GlobalTotals {
                p: u128::from(carried.p),
                n: u128::from(carried.n),
            },
        }
    }

    /// Each part's max: a later generation's sums are at least an earlier one's, so the
    /// result is still a lower bound of what its generations counted.
    fn join(&mut self, other: &Carry) -> bool {
        let joined = Carry {
            region: core::cmp::max(&self.region, &other.region).clone(),
            through: self.through.max(other.through),
            totals: self.totals.join(other.totals),
        };
        let grew = joined != *self;
        *self = joined;
        grew
    }

    /// Whether `self` holds everything `other` does: joining `other` changes nothing.
    pub fn covers(&self, other: &Carry) -> bool {
        !self.clone().join(other)
    }

    /// Whether `replica`'s slot is in this carry (`replica` belongs to the carry's object).
    fn holds(&self, replica: ReplicaId) -> bool {
        u64::from(replica.generation()) < self.through
    }
}

/// One region's replicas retired before carries: the sums of their final slots, and which
/// they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Base {
    /// The sums of their final slots.
    pub totals: GlobalTotals,
    /// The replicas folded into it.
    pub replicas: BTreeSet<ReplicaId>,
}

impl Base {
    /// Of two bases of one region, the later: the one holding more replicas (one writer folds
    /// one at a time, so it holds every replica of the other), then the larger sums.
    fn join(&mut self, other: &Base) {
        let later = match other.replicas.len().cmp(&self.replicas.len()) {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => other.totals.dominates(self.totals) && other.totals != self.totals,
        };
        if later {
            self.clone_from(other);
        }
    }
}

/// A counter's live slots, by replica: one vector sorted by replica id, so a join of two
/// views of the same replicas (a merger's steady state) is one pass that raises slots in
/// place, with no tree to walk and nothing to allocate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slots(Vec<(ReplicaId, Slot)>);

impl Slots {
    fn find(&self, replica: &ReplicaId) -> Result<usize, usize> {
        self.0.binary_search_by(|(r, _)| r.cmp(replica))
    }

    /// `replica`'s slot.
    pub fn get(&self, replica: &ReplicaId) -> Option<&Slot> {
        self.find(replica).ok().map(|i| &self.0[i].1)
    }

    /// Whether `replica` has a live slot.
    pub fn contains_key(&self, replica: &ReplicaId) -> bool {
        self.find(replica).is_ok()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The slots in replica order.
    pub fn iter(&self) -> impl Iterator<Item = (&ReplicaId, &Slot)> {
        self.0.iter().map(pair)
    }

    /// The replicas in order.
    pub fn keys(&self) -> impl Iterator<Item = &ReplicaId> {
        self.0.iter().map(|(r, _)| r)
    }

    /// The slots in replica order.
    pub fn values(&self) -> impl Iterator<Item = &Slot> {
        self.0.iter().map(|(_, s)| s)
    }

    /// The index range of the replicas in `first..=last`.
    fn range(&self, first: ReplicaId, last: ReplicaId) -> core::ops::Range<usize> {
        let start = self.0.partition_point(|(r, _)| *r < first);
        let end = self.0.partition_point(|(r, _)| *r <= last);
        start..end.max(start)
    }
}

fn pair(entry: &(ReplicaId, Slot)) -> (&ReplicaId, &Slot) {
    (&entry.0, &entry.1)
}

impl<'a> IntoIterator for &'a Slots {
    type Item = (&'a ReplicaId, &'a Slot);
    type IntoIter = core::iter::Map<
        core::slice::Iter<'a, (ReplicaId, Slot)>,
        fn(&'a (ReplicaId, Slot)) -> (&'a ReplicaId, &'a Slot),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(pair)
    }
}

/// One counter's state: slots, bases with their retired replicas, epoch and cuts, with the
/// sums kept up to date.
#[derive(Debug, Clone, Default)]
pub struct CounterState {
    slots: Slots,
    /// Per object ([`ReplicaId::object`]).
    carries: BTreeMap<ReplicaId, Carry>,
    bases: BTreeMap<Region, Base>,
    epoch: Epoch,
    cuts: BTreeMap<Region, GlobalTotals>,
    /// Every replica of every base.
    retired: BTreeSet<ReplicaId>,
    /// Per region (in name order): its slots, carries and base minus its cut.
    shares: Vec<(Region, GlobalTotals)>,
    /// The sum of the shares.
    value: GlobalTotals,
    /// Live replicas with a non-zero slot.
    replicas: usize,
}

/// Equal states hold the same slots, bases, epoch and cuts (the sums follow).
impl PartialEq for CounterState {
    fn eq(&self, other: &CounterState) -> bool {
        self.slots == other.slots
            && self.carries == other.carries
            && self.bases == other.bases
            && self.epoch == other.epoch
            && self.cuts == other.cuts
    }
}

impl Eq for CounterState {}

impl CounterState {
    /// A counter nobody has counted.
    pub const fn new() -> CounterState {
        CounterState {
            slots: Slots(Vec::new()),
            carries: BTreeMap::new(),
            bases: BTreeMap::new(),
            epoch: Epoch {
                number: 0,
                deleted: false,
                at: None,
            },
            cuts: BTreeMap::new(),
            retired: BTreeSet::new(),
            shares: Vec::new(),
            value: GlobalTotals { p: 0, n: 0 },
            replicas: 0,
        }
    }

    /// A state from its parts, as a store holds them (a replica listed twice keeps the max of
    /// its slots, an object listed twice the join of its carries, a region listed twice its
    /// later base and the max of its cuts; a slot in a carry or a base is left out).
    pub fn from_parts(
        slots: impl IntoIterator<Item = (ReplicaId, Region, SlotTotals)>,
        carries: impl IntoIterator<Item = (ReplicaId, Carry)>,
        bases: impl IntoIterator<Item = (Region, Base)>,
        epoch: Epoch,
        cuts: impl IntoIterator<Item = (Region, GlobalTotals)>,
    ) -> CounterState {
        let mut state = CounterState {
            epoch,
            ..CounterState::default()
        };
        for (object, carry) in carries {
            let object = object.object();
            match state.carries.get_mut(&object) {
                Some(held) => {
                    held.join(&carry);
                }
                None => {
                    state.carries.insert(object, carry);
                }
            }
        }
        for (region, base) in bases {
            state.bases.entry(region).or_default().join(&base);
        }
        state.retired = state
            .bases
            .values()
            .flat_map(|b| b.replicas.iter().copied())
            .collect();
        let mut live: Vec<(ReplicaId, Slot)> = slots
            .into_iter()
            .filter(|(replica, _, _)| !state.is_retired(*replica))
            .map(|(replica, region, totals)| (replica, Slot { region, totals }))
            .collect();
        // Sorted, then a replica listed twice keeps the max of its slots (and its first
        // region).
        live.sort_by_key(|(replica, _)| *replica);
        live.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1.totals = kept.1.totals.join(later.1.totals);
            }
            same
        });
        state.slots = Slots(live);
        for (region, cut) in cuts {
            let held = state.cuts.entry(region).or_default();
            *held = held.join(cut);
        }
        state.recompute();
        state
    }

    /// The count in the current epoch, per half: the sum of [`shares`](Self::shares).
    pub fn value(&self) -> GlobalTotals {
        self.value
    }

    /// Per region (in name order), its slots, carries and base above its cut.
    pub fn shares(&self) -> &[(Region, GlobalTotals)] {
        &self.shares
    }

    /// The live slots.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    /// `replica`'s live slot (zero for none, or a retired one).
    pub fn slot(&self, replica: ReplicaId) -> SlotTotals {
        self.slots
            .get(&replica)
            .map_or_else(SlotTotals::default, |s| s.totals)
    }

    /// Per object, the carry of its earlier incarnations.
    pub fn carries(&self) -> &BTreeMap<ReplicaId, Carry> {
        &self.carries
    }

    /// Per region, the replicas retired before carries and the sums of their final slots.
    pub fn bases(&self) -> &BTreeMap<Region, Base> {
        &self.bases
    }

    /// Whether `replica` is retired here (its final slot is in a carry or a base).
    pub fn is_retired(&self, replica: ReplicaId) -> bool {
        folded(&self.retired, &self.carries, replica)
    }

    /// Its resets.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Per region, the sums at the last reset (empty if never reset).
    pub fn cuts(&self) -> &BTreeMap<Region, GlobalTotals> {
        &self.cuts
    }

    /// Live replicas with a non-zero slot.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The summary a reader keeps: the value in the current epoch.
    pub fn bound(&self) -> Bound {
        Bound {
            totals: self.value,
            epoch: self.epoch.number,
        }
    }

    /// Per region, the sums of its slots and base, all epochs together: what a reset cuts
    /// (a region cut before that holds nothing now is cut at zero).
    pub fn region_sums(&self) -> BTreeMap<Region, GlobalTotals> {
        let mut sums: BTreeMap<Region, GlobalTotals> = self
            .cuts
            .keys()
            .map(|region| (Arc::clone(region), GlobalTotals::default()))
            .collect();
        let mut parts = Vec::new();
        self.sums_of_parts(&mut parts);
        sums.extend(parts);
        sums
    }

    /// Fills `sums` (emptied first, in no order) with the sums of every region that has a
    /// slot, a carry or a base; answers how many live slots are not zero. One pass over the
    /// slots: a run of slots of one region (as a view's all are) finds its entry once.
    fn sums_of_parts(&self, sums: &mut Vec<(Region, GlobalTotals)>) -> usize {
        sums.clear();
        let mut replicas = 0;
        let mut run: Option<usize> = None;
        for (_, slot) in &self.slots.0 {
            let i = match run {
                Some(i) if Arc::ptr_eq(&sums[i].0, &slot.region) => i,
                _ => index_of(sums, &slot.region),
            };
            run = Some(i);
            // Sums of u64 slots: a u128 overflows only past 2^64 slots.
            let sum = &mut sums[i].1;
            sum.p += u128::from(slot.totals.p);
            sum.n += u128::from(slot.totals.n);
            if slot.totals != SlotTotals::default() {
                replicas += 1;
            }
        }
        for carry in self.carries.values() {
            let i = index_of(sums, &carry.region);
            let sum = &mut sums[i].1;
            sum.p = sum.p.saturating_add(carry.totals.p);
            sum.n = sum.n.saturating_add(carry.totals.n);
        }
        for (region, base) in &self.bases {
            let i = index_of(sums, region);
            let sum = &mut sums[i].1;
            sum.p += base.totals.p;
            sum.n += base.totals.n;
        }
        replicas
    }

    /// Whether `self` holds everything `other` does: joining `other` changes nothing.
    pub fn dominates(&self, other: &CounterState) -> bool {
        let mut joined = self.clone();
        joined.join(other);
        joined == *self
    }

    /// Merges another view of this counter into this one (see the module's text).
    pub fn join(&mut self, other: &CounterState) {
        if other.epoch.number > self.epoch.number {
            self.epoch = other.epoch;
            self.cuts.clone_from(&other.cuts);
        }
        for (region, base) in &other.bases {
            self.bases.entry(Arc::clone(region)).or_default().join(base);
        }
        let mut dropped = false;
        for (object, carry) in &other.carries {
            dropped |= self.join_carry(*object, carry);
        }
        if other.retired.iter().any(|r| !self.retired.contains(r)) {
            self.retired.extend(other.retired.iter().copied());
            dropped = true;
        }
        if dropped {
            self.drop_retired_slots();
        }
        self.join_slots(&other.slots);
        self.recompute();
    }

    /// Joins `other`'s slots in by max, leaving out the retired ones: what
    /// [`merge_slot`](Self::merge_slot) per slot would do, as one walk over both sorted
    /// vectors, so the slots both hold (a merger's steady state: fresher copies of the same
    /// replicas) are raised in place, and only new ones are inserted (a live slot here is
    /// never a retired one: the carries and bases were joined first).
    fn join_slots(&mut self, other: &Slots) {
        let mut new: Vec<(ReplicaId, Slot)> = Vec::new();
        let held = &mut self.slots.0;
        let mut i = 0;
        for (replica, slot) in &other.0 {
            while i < held.len() && held[i].0 < *replica {
                i += 1;
            }
            match held.get_mut(i) {
                Some((r, mine)) if r == replica => {
                    mine.totals = mine.totals.join(slot.totals);
                    i += 1;
                }
                _ => {
                    if !folded(&self.retired, &self.carries, *replica) {
                        new.push((*replica, slot.clone()));
                    }
                }
            }
        }
        if !new.is_empty() {
            held.extend(new);
            held.sort_by_key(|(replica, _)| *replica);
        }
    }

    /// Merges one slot of `replica` (of `region`, if the replica is new here) by max, as a
    /// commit of a sync does: a join with a state of that slot alone. A retired replica's slot
    /// is final already and changes nothing. Returns whether it grew.
    pub fn merge_slot(&mut self, replica: ReplicaId, region: &Region, totals: SlotTotals) -> bool {
        if self.is_retired(replica) {
            return false;
        }
        let before = self.slot(replica);
        if before.dominates(totals) {
            return false;
        }
        let i = match self.slots.find(&replica) {
            Ok(i) => i,
            Err(i) => {
                let slot = Slot {
                    region: Arc::clone(region),
                    totals: SlotTotals::default(),
                };
                self.slots.0.insert(i, (replica, slot));
                i
            }
        };
        let slot = &mut self.slots.0[i].1;
        slot.totals = before.join(totals);
        let after = slot.totals;
        if self.cuts.is_empty() {
            // The sums grow by exactly the slot's growth (no cut to saturate at).
            let (dp, dn) = (
                u128::from(after.p - before.p),
                u128::from(after.n - before.n),
            );
            self.value.p += dp;
            self.value.n += dn;
            let share = share_of(&mut self.shares, &slot.region);
            share.p += dp;
            share.n += dn;
            if before == SlotTotals::default() {
                self.replicas += 1;
            }
        } else {
            self.recompute();
        }
        true
    }

    /// Merges a carry of `object`'s incarnations (as an object re-sends it, or a store wrote
    /// it on retiring one): a join with a state of that carry alone, so a carry applied twice,
    /// late, or to a view that missed an earlier one is still right. The slots it holds go.
    /// Returns whether anything changed.
    pub fn merge_carry(&mut self, object: ReplicaId, carry: &Carry) -> bool {
        let changed = self.join_carry(object.object(), carry);
        if changed {
            self.drop_retired_slots();
            self.recompute();
        }
        changed
    }

    /// Retires the incarnation `replica` in the authoritative state (the store's, or a model
    /// of it): every live slot of its object up to its generation goes into the object's
    /// carry, which then covers the generations through `replica`'s. Answers the object and
    /// its new carry (what [`merge_carry`](Self::merge_carry) takes), or `None` if the object
    /// has no slot to fold here (nothing changes: a retirement repeated, or of a replica that
    /// never counted this counter).
    pub fn retire(&mut self, replica: ReplicaId) -> Option<(ReplicaId, Carry)> {
        let object = replica.object();
        let through = u64::from(replica.generation()) + 1;
        let mut carry = self.carries.get(&object).cloned();
        let folded = self
            .slots
            .range(object, ReplicaId::lineage(object, replica.generation()));
        if folded.is_empty() {
            return None;
        }
        for (_, slot) in &self.slots.0[folded] {
            let carry = carry.get_or_insert_with(|| Carry {
                region: Arc::clone(&slot.region),
                through: 0,
                totals: GlobalTotals::default(),
            });
            carry.totals.p = carry.totals.p.saturating_add(u128::from(slot.totals.p));
            carry.totals.n = carry.totals.n.saturating_add(u128::from(slot.totals.n));
        }
        let mut carry = carry?;
        carry.through = carry.through.max(through);
        self.merge_carry(object, &carry);
        Some((object, carry))
    }

    /// Starts a new epoch at `at` (a delete if `delete`) in the authoritative state: the sums
    /// of every region now are the cuts, so the count starts again from zero.
    pub fn reset(&mut self, at: Timestamp, delete: bool) {
        self.cuts = self.region_sums();
        self.epoch = Epoch {
            number: self.epoch.number + 1,
            deleted: delete,
            at: Some(at),
        };
        self.recompute();
    }

    /// Joins one carry in, without dropping slots or recomputing; returns whether it changed.
    fn join_carry(&mut self, object: ReplicaId, carry: &Carry) -> bool {
        match self.carries.get_mut(&object) {
            Some(held) => held.join(carry),
            None => {
                self.carries.insert(object, carry.clone());
                true
            }
        }
    }

    /// Drops the live slots that a carry or a base now holds.
    fn drop_retired_slots(&mut self) {
        let (retired, carries) = (&self.retired, &self.carries);
        self.slots
            .0
            .retain(|(replica, _)| !folded(retired, carries, *replica));
    }

    /// The shares, the value and the replica count from the parts.
    fn recompute(&mut self) {
        let mut shares = core::mem::take(&mut self.shares);
        self.replicas = self.sums_of_parts(&mut shares);
        self.value = GlobalTotals::default();
        for (region, share) in &mut shares {
            if let Some(cut) = self.cuts.get(region) {
                *share = minus(*share, *cut);
            }
            self.value.p += share.p;
            self.value.n += share.n;
        }
        shares.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.shares = shares;
    }
}

/// The index of `region`'s entry in `shares`, added (zero) if missing.
fn index_of(shares: &mut Vec<(Region, GlobalTotals)>, region: &Region) -> usize {
    // The slots of a region usually share its `Arc`: pointers first, names only if none is.
    let found = shares
        .iter()
        .position(|(r, _)| Arc::ptr_eq(r, region))
        .or_else(|| shares.iter().position(|(r, _)| r == region));
    match found {
        Some(i) => i,
        None => {
            shares.push((Arc::clone(region), GlobalTotals::default()));
            shares.len() - 1
        }
    }
}

/// `region`'s share in `shares` (sorted by region), added (zero) in its place if missing.
fn share_of<'a>(
    shares: &'a mut Vec<(Region, GlobalTotals)>,
    region: &Region,
) -> &'a mut GlobalTotals {
    let i = match shares.binary_search_by(|(r, _)| r.cmp(region)) {
        Ok(i) => i,
        Err(i) => {
            shares.insert(i, (Arc::clone(region), GlobalTotals::default()));
            i
        }
    };
    &mut shares[i].1
}

/// Whether `replica`'s slot is in a base (`retired`) or in its object's carry.
fn folded(
    retired: &BTreeSet<ReplicaId>,
    carries: &BTreeMap<ReplicaId, Carry>,
    replica: ReplicaId,
) -> bool {
    retired.contains(&replica)
        || carries
            .get(&replica.object())
            .is_some_and(|c| c.holds(replica))
}

/// `sums - cut` per half, never below zero. The sums only grow and a cut is the sums at a
/// reset, so this is exact for sums read with the cut; a view that lags may hold less, and
/// reads 0 there until it catches up.
pub fn minus(sums: GlobalTotals, cut: GlobalTotals) -> GlobalTotals {
    GlobalTotals {
        p: sums.p.saturating_sub(cut.p),
        n: sums.n.saturating_sub(cut.n),
    }
}

/// A lower bound of a counter's totals within one epoch: a value the system really held.
///
/// A reset starts a new epoch whose totals start again from zero, so bounds compare by epoch
/// first: any bound of a later epoch is newer than every bound of an earlier one, and within
/// an epoch both halves only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bound {
    /// The totals.
    pub totals: GlobalTotals,
    /// Their epoch.
    pub epoch: u64,
}

impl Bound {
    /// Of two bounds, the tighter: the later epoch's, or within one epoch the larger of
    /// each half.
    #[must_use]
    pub fn join(self, other: Bound) -> Bound {
        match self.epoch.cmp(&other.epoch) {
            Ordering::Less => other,
            Ordering::Greater => self,
            Ordering::Equal => Bound {
                totals: self.totals.join(other.totals),
                epoch: self.epoch,
            },
        }
    }

    /// Whether `self` is at least as new as `other`: a later epoch, or the same with both
    /// halves at least as high.
    pub fn covers(self, other: Bound) -> bool {
        self.epoch > other.epoch
            || (self.epoch == other.epoch && self.totals.dominates(other.totals))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u128) -> ReplicaId {
        ReplicaId::from_u128(n)
    }
    fn eu() -> Region {
        Arc::from("eu")
    }
    fn us() -> Region {
        Arc::from("us")
    }
    fn t(p: u64, n: u64) -> SlotTotals {
        SlotTotals { p, n }
    }
    fn g(p: u128, n: u128) -> GlobalTotals {
        GlobalTotals { p, n }
    }

    #[test]
    fn slots_merge_by_max_and_the_value_sums_them() {
        let mut c = CounterState::new();
        assert!(c.merge_slot(r(1), &eu(), t(5, 1)));
        assert!(c.merge_slot(r(2), &us(), t(3, 0)));
        assert!(
            !c.merge_slot(r(1), &eu(), t(4, 1)),
            "an old total is no growth"
        );
        assert!(c.merge_slot(r(1), &eu(), t(4, 2)));
        assert_eq!(c.value(), g(8, 2));
        assert_eq!(c.shares(), [(eu(), g(5, 2)), (us(), g(3, 0))]);
        assert_eq!(c.replicas(), 2);
        assert_eq!(
            c.bound(),
            Bound {
                totals: g(8, 2),
                epoch: 0
            }
        );
    }

    /// Incarnation `generation` of object `object`.
    fn inc(object: u128, generation: u32) -> ReplicaId {
        ReplicaId::lineage(ReplicaId::from_u128(object << 32), generation)
    }

    #[test]
    fn lineage_ids_name_their_object_and_generation() {
        let id = inc(0xabc, 7);
        assert_eq!((id.object(), id.generation()), (inc(0xabc, 0), 7));
        assert_eq!(ReplicaId::lineage(id, 9), inc(0xabc, 9));
    }

    #[test]
    fn a_fold_keeps_the_value_and_a_later_view_wins_across_it() {
        let mut at_store = CounterState::new();
        at_store.merge_slot(inc(1, 0), &eu(), t(5, 0));
        at_store.merge_slot(inc(2, 0), &eu(), t(2, 0));
        let before = at_store.clone();
        let (object, carry) = at_store.retire(inc(1, 0)).unwrap();
        assert_eq!(
            (object, carry.through, carry.totals),
            (inc(1, 0), 1, g(5, 0))
        );
        assert_eq!(at_store.value(), before.value());
        assert!(at_store.retire(inc(1, 0)).is_none(), "retired once");
        // A view from before the fold does not bring the slot back, whichever joins which.
        let mut old = before.clone();
        old.join(&at_store);
        assert_eq!(old, at_store);
        let mut new = at_store.clone();
        new.join(&before);
        assert_eq!(new, at_store);
        assert_eq!(new.value(), g(7, 0));
    }

    #[test]
    fn a_fold_is_a_join_so_twice_is_once_and_a_replica_born_later_survives_a_stale_load() {
        let mut store = CounterState::new();
        store.merge_slot(inc(1, 0), &eu(), t(5, 0));
        let (object, carry) = store.retire(inc(1, 0)).unwrap();
        let stale_load = store.clone();
        // The object's next incarnation, committed after the load was read.
        store.merge_slot(inc(1, 1), &eu(), t(3, 0));
        let mut cache = CounterState::new();
        cache.merge_slot(inc(1, 0), &eu(), t(4, 0));
        cache.merge_slot(inc(1, 1), &eu(), t(3, 0));
        cache.merge_carry(object, &carry);
        assert!(!cache.merge_carry(object, &carry), "twice is once");
        assert_eq!(cache, store);
        cache.join(&stale_load);
        assert_eq!((cache.value(), cache.slot(inc(1, 1))), (g(8, 0), t(3, 0)));
        // A late slot of a retired replica changes nothing.
        assert!(!cache.merge_slot(inc(1, 0), &eu(), t(9, 0)));
        assert_eq!(cache.value(), g(8, 0));
    }

    #[test]
    fn an_objects_own_carry_heals_what_a_restored_store_lost() {
        // The store saw generation 0 at 5, then lost (a restore) everything after: the
        // generations 1 and 2 the object counted 4 and 6 in, and their retirements.
        let mut restored = CounterState::new();
        restored.merge_slot(inc(1, 0), &eu(), t(5, 0));
        // The object, at generation 3, re-sends its carry of generations 0..3 (5 + 4 + 6)
        // with its live slot.
        let carry = Carry {
            region: eu(),
            through: 3,
            totals: g(15, 0),
        };
        restored.merge_carry(inc(1, 0), &carry);
        restored.merge_slot(inc(1, 3), &eu(), t(2, 0));
        assert_eq!(restored.value(), g(17, 0));
        assert_eq!(
            restored.slots().len(),
            1,
            "generation 0's slot is in the carry"
        );
        // A late retirement of generation 2, folding what the store holds, lowers nothing.
        assert!(restored.retire(inc(1, 2)).is_none());
        assert_eq!(restored.value(), g(17, 0));
        // A restored store that folded less than the object carries is raised by the max.
        let mut lossy = CounterState::new();
        lossy.merge_slot(inc(1, 2), &eu(), t(1, 0));
        lossy.retire(inc(1, 2));
        assert_eq!(lossy.carries()[&inc(1, 0)].totals, g(1, 0));
        lossy.merge_carry(inc(1, 3), &carry);
        assert_eq!(lossy.value(), g(15, 0));
    }

    #[test]
    fn a_reset_cuts_every_region_and_counts_what_grows_above() {
        let mut c = CounterState::new();
        c.merge_slot(r(1), &eu(), t(5, 0));
        c.merge_slot(r(2), &us(), t(2, 0));
        c.reset(Timestamp::from_unix_ms(10), false);
        assert_eq!(c.value(), g(0, 0));
        assert_eq!(c.epoch().number, 1);
        c.merge_slot(r(1), &eu(), t(7, 0));
        assert_eq!(c.value(), g(2, 0));
        // A view of the old epoch that is ahead in slots joins without undoing the reset.
        let mut old = CounterState::new();
        old.merge_slot(r(2), &us(), t(4, 0));
        c.join(&old);
        assert_eq!((c.value(), c.epoch().number), (g(4, 0), 1));
    }

    #[test]
    fn a_view_behind_a_cut_reads_zero_not_below() {
        let lagging = CounterState::from_parts(
            [(r(1), eu(), t(3, 0))],
            [],
            [],
            Epoch {
                number: 1,
                ..Epoch::default()
            },
            [(eu(), g(5, 0))],
        );
        assert_eq!(lagging.value(), g(0, 0));
    }

    #[test]
    fn bounds_compare_by_epoch_then_halves() {
        let b = |p, epoch| Bound {
            totals: g(p, 0),
            epoch,
        };
        assert_eq!(b(900, 0).join(b(4, 1)), b(4, 1));
        assert_eq!(b(4, 1).join(b(900, 0)), b(4, 1));
        assert_eq!(b(4, 1).join(b(6, 1)), b(6, 1));
        assert!(b(4, 1).covers(b(900, 0)));
        assert!(!b(4, 1).covers(b(5, 1)));
    }
}
