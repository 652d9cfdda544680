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
//!   every rotated-away incarnation counted. A carry counts in a *frame*: an object may
//!   rebase the carry of a counter nobody counts any more into a later one, where what it
//!   carried is `reclaimed` and its totals start again ([`Carry`]);
//! - `bases`: per region, the sums of the final slots of replicas retired before carries
//!   existed, with those replicas (their tombstones); stores keep them as they were, nothing
//!   writes them any more;
//! - `epoch` (how many resets, whether the last was a delete, when) and `cuts`, with each
//!   object's share of them ([`ObjectCut`]): what it had counted at the reset. The merger
//!   tells each object its share, the object sends it back, and a store restored from before
//!   the reset takes the reset up from it ([`adopt`](CounterState::adopt),
//!   [`tell_cut`](CounterState::tell_cut)).
//!
//! Every change is a join with a small state, so any two views of a counter merge in any
//! order, any number of times, and a change applied twice or late is still right:
//! [`join`](CounterState::join) takes per object the carry of the later frame, and within a
//! frame the max of each part (a carry's sums are lower bounds of what its generations
//! counted, which only grows with the generation, so the max never counts a hit twice), per
//! region the base that holds more
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

use smallvec::SmallVec;

use crate::{GlobalTotals, ReplicaId, SlotTotals, Timestamp};

/// A region's name, shared by every slot, base and cut of it.
pub type Region = Arc<str>;

/// Per region, its part of the value: inline while there is one region.
type Shares = SmallVec<[(Region, GlobalTotals); 1]>;

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

/// One edge object's incarnations before generation `through`: the sums of their final
/// slots, as far as the writer knew them (a lower bound: a merger restored from a backup may
/// fold less than was counted, and the object's own carry, re-sent, raises it).
///
/// A carry counts in a *frame*. An object that holds a counter nobody counts any more (reset
/// or deleted, nothing since) can *rebase* its carry into a later frame: what it carried
/// becomes `reclaimed`, fixed for the frame, and `totals` start again from zero, so that the
/// object can forget its row and the merger its carry once no restore or replay can need
/// them (protocol version 5, [`Frame`](crate::Frame)). The sums a carry adds to its region
/// are `reclaimed + totals` in every frame, so a rebase changes no count. Of two carries of
/// one object the later frame's wins whole (its `reclaimed` holds everything the earlier
/// frames counted); within a frame each part takes its max.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carry {
    /// The object's region of record.
    pub region: Region,
    /// Every generation below this one is in the sums.
    pub through: u64,
    /// The sums of their final slots counted in this frame.
    pub totals: GlobalTotals,
    /// The frame: 0 until the object first rebased this carry, then the epoch it rebased in.
    pub frame: u64,
    /// What the carry held when it was rebased into `frame` (zero in frame 0): still counted,
    /// no longer re-sent by the object.
    pub reclaimed: GlobalTotals,
}

impl Carry {
    /// The carry a sync of `sender` (of `region`) brings with a counter's slot: `carried`,
    /// the sums of the final slots of the generations of `sender`'s object below its own
    /// ([`SlotUpdate::carried`](crate::SlotUpdate::carried)), counted in `frame`
    /// ([`SlotUpdate::frame`](crate::SlotUpdate::frame); `None`: frame 0). Merged into the
    /// object's carry ([`CounterState::merge_carry`] takes `sender` for its object).
    pub fn sent(
        sender: ReplicaId,
        region: Region,
        carried: SlotTotals,
        frame: Option<crate::Frame>,
    ) -> Carry {
        let wide = |t: SlotTotals| GlobalTotals {
            p: u128::from(t.p),
            n: u128::from(t.n),
        };
        Carry {
            region,
            through: u64::from(sender.generation()),
            totals: wide(carried),
            frame: frame.map_or(0, |f| f.epoch),
            reclaimed: frame.map_or_else(GlobalTotals::default, |f| wide(f.reclaimed)),
        }
    }

    /// What the carry adds to its region's sums: `reclaimed + totals`.
    pub fn sums(&self) -> GlobalTotals {
        GlobalTotals {
            p: self.reclaimed.p.saturating_add(self.totals.p),
            n: self.reclaimed.n.saturating_add(self.totals.n),
        }
    }

    /// The later frame's carry whole; within one frame each part's max (a later
    /// generation's sums are at least an earlier one's, so the result is still a lower bound
    /// of what its generations counted). Returns whether `self` changed.
    pub fn join(&mut self, other: &Carry) -> bool {
        let joined = match other.frame.cmp(&self.frame) {
            Ordering::Less => return false,
            Ordering::Greater => other.clone(),
            Ordering::Equal => Carry {
                region: core::cmp::max(&self.region, &other.region).clone(),
                through: self.through.max(other.through),
                totals: self.totals.join(other.totals),
                frame: self.frame,
                reclaimed: self.reclaimed.join(other.reclaimed),
            },
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

/// One edge object's share of its counter's last cut: what the object — its live slots and
/// its carry — had counted when the epoch began, and its region of record. The merger tells
/// it to the object ([`Cut`](crate::Cut)), which sends it back with every sync of the
/// counter; a merger that holds less (restored from a backup older than the reset) raises it,
/// and its region's cut with it ([`CounterState::tell_cut`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectCut {
    /// The object's region of record.
    pub region: Region,
    /// What it had counted.
    pub totals: GlobalTotals,
}

/// One live replica's slot, as [`Slots`] answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot<'a> {
    /// The replica's region of record.
    pub region: &'a Region,
    /// Its totals.
    pub totals: SlotTotals,
}

/// One region's live slots, sorted by replica.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    region: Region,
    slots: Vec<(ReplicaId, SlotTotals)>,
}

impl Group {
    fn find(&self, replica: &ReplicaId) -> Result<usize, usize> {
        self.slots.binary_search_by(|(r, _)| r.cmp(replica))
    }

    /// The index range of the replicas in `first..=last`.
    fn range(&self, first: ReplicaId, last: ReplicaId) -> core::ops::Range<usize> {
        let start = self.slots.partition_point(|(r, _)| *r < first);
        let end = self.slots.partition_point(|(r, _)| *r <= last);
        start..end.max(start)
    }
}

/// A counter's live slots, grouped by region: the groups in region order, each one vector
/// of 24-byte slots sorted by replica, no group empty, a replica in one group only (its
/// region of record). A join of two views of the same replicas (a merger's steady state) is
/// one pass per region that raises slots in place; a region's name is held once, not per
/// slot; and a counter counted in one region — a [`GCounter`](crate::GCounter) or a
/// [`PNCounter`](crate::PNCounter), which are views of this type — is one flat vector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slots(SmallVec<[Group; 1]>);

impl Slots {
    /// Where `replica`'s slot is: its group and index.
    fn locate(&self, replica: &ReplicaId) -> Option<(usize, usize)> {
        self.0
            .iter()
            .enumerate()
            .find_map(|(g, group)| group.find(replica).ok().map(|i| (g, i)))
    }

    /// Where `replica`'s slot is, looked for in `region`'s group first (where it usually is).
    fn locate_in(&self, region: &Region, replica: &ReplicaId) -> Option<(usize, usize)> {
        match self.group(region) {
            Ok(g) => match self.0[g].find(replica) {
                Ok(i) => Some((g, i)),
                Err(_) if self.0.len() == 1 => None,
                Err(_) => self.locate(replica),
            },
            Err(_) => self.locate(replica),
        }
    }

    /// The index of `region`'s group, or where it would go.
    fn group(&self, region: &Region) -> Result<usize, usize> {
        // The slots of a region usually share its `Arc`: pointers first, names only if none is.
        match self.0.iter().position(|g| Arc::ptr_eq(&g.region, region)) {
            Some(g) => Ok(g),
            None => self.0.binary_search_by(|g| g.region.cmp(region)),
        }
    }

    /// The index of `region`'s group, added empty in its place if missing (for the caller to
    /// fill: no group stays empty).
    fn group_or_new(&mut self, region: &Region) -> usize {
        self.group(region).unwrap_or_else(|g| {
            let group = Group {
                region: Arc::clone(region),
                slots: Vec::new(),
            };
            self.0.insert(g, group);
            g
        })
    }

    /// Adds a zero slot of `replica` (held nowhere yet) in `region`; answers where.
    fn insert(&mut self, region: &Region, replica: ReplicaId) -> (usize, usize) {
        let g = self.group_or_new(region);
        let group = &mut self.0[g];
        let i = group.find(&replica).unwrap_err();
        group.slots.insert(i, (replica, SlotTotals::default()));
        (g, i)
    }

    /// `replica`'s slot.
    pub fn get(&self, replica: &ReplicaId) -> Option<Slot<'_>> {
        self.locate(replica).map(|(g, i)| Slot {
            region: &self.0[g].region,
            totals: self.0[g].slots[i].1,
        })
    }

    /// Whether `replica` has a live slot.
    pub fn contains_key(&self, replica: &ReplicaId) -> bool {
        self.locate(replica).is_some()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.iter().map(|g| g.slots.len()).sum()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The slots, by region, then by replica.
    pub fn iter(&self) -> impl Iterator<Item = (&ReplicaId, Slot<'_>)> {
        self.0.iter().flat_map(|g| {
            g.slots.iter().map(|(replica, totals)| {
                let slot = Slot {
                    region: &g.region,
                    totals: *totals,
                };
                (replica, slot)
            })
        })
    }

    /// The replicas, by region, then by replica.
    pub fn keys(&self) -> impl Iterator<Item = &ReplicaId> {
        self.0.iter().flat_map(|g| g.slots.iter().map(|(r, _)| r))
    }

    /// The slots of a state whose slots are all in one region (a view's): in replica order.
    pub(crate) fn only_region(&self) -> &[(ReplicaId, SlotTotals)] {
        debug_assert!(self.0.len() <= 1, "a view's slots are in one region");
        self.0.first().map_or(&[], |g| &g.slots)
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
    /// Per object ([`ReplicaId::object`]), its share of the cuts (part of each region's cut;
    /// empty for a counter last reset before objects were told their share).
    object_cuts: BTreeMap<ReplicaId, ObjectCut>,
    /// Every replica of every base.
    retired: BTreeSet<ReplicaId>,
    /// Per region (in name order): its slots, carries and base minus its cut.
    shares: Shares,
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
            && self.object_cuts == other.object_cuts
    }
}

impl Eq for CounterState {}

impl CounterState {
    /// A counter nobody has counted.
    pub const fn new() -> CounterState {
        CounterState {
            slots: Slots(SmallVec::new_const()),
            carries: BTreeMap::new(),
            bases: BTreeMap::new(),
            epoch: Epoch {
                number: 0,
                deleted: false,
                at: None,
            },
            cuts: BTreeMap::new(),
            object_cuts: BTreeMap::new(),
            retired: BTreeSet::new(),
            shares: SmallVec::new_const(),
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
        let mut live: Vec<(ReplicaId, Region, SlotTotals)> = slots
            .into_iter()
            .filter(|(replica, _, _)| !state.is_retired(*replica))
            .collect();
        // Sorted, then a replica listed twice keeps the max of its slots (and its first
        // region).
        live.sort_by_key(|(replica, _, _)| *replica);
        live.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.2 = kept.2.join(later.2);
            }
            same
        });
        for (replica, region, totals) in live {
            // In replica order: each group's slots stay sorted.
            let g = state.slots.group_or_new(&region);
            state.slots.0[g].slots.push((replica, totals));
        }
        for (region, cut) in cuts {
            let held = state.cuts.entry(region).or_default();
            *held = held.join(cut);
        }
        state.recompute();
        state
    }

    /// The same state with these shares of its cuts per object (an object listed twice keeps
    /// the max of each half); the cuts themselves are [`from_parts`](Self::from_parts)'.
    #[must_use]
    pub fn with_object_cuts(
        mut self,
        object_cuts: impl IntoIterator<Item = (ReplicaId, ObjectCut)>,
    ) -> CounterState {
        for (object, cut) in object_cuts {
            join_object_cut(&mut self.object_cuts, object.object(), &cut);
        }
        self
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
            .locate(&replica)
            .map_or_else(SlotTotals::default, |(g, i)| self.slots.0[g].slots[i].1)
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

    /// Per object, its share of the cuts ([`ObjectCut`]).
    pub fn object_cuts(&self) -> &BTreeMap<ReplicaId, ObjectCut> {
        &self.object_cuts
    }

    /// `object`'s share of the cuts: what it had counted when the epoch began (zero for an
    /// object that had counted nothing then).
    pub fn object_cut(&self, object: ReplicaId) -> GlobalTotals {
        self.object_cuts
            .get(&object.object())
            .map_or_else(GlobalTotals::default, |c| c.totals)
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
        let mut parts = Shares::new();
        self.sums_of_parts(&mut parts);
        sums.extend(parts);
        sums
    }

    /// Fills `sums` (what it held is overwritten; in no order) with the sums of every region
    /// that has a slot, a carry or a base; answers how many live slots are not zero. One pass
    /// over each region's slots.
    fn sums_of_parts(&self, sums: &mut Shares) -> usize {
        let mut replicas = 0;
        for (i, group) in self.slots.0.iter().enumerate() {
            // Sums of u64 slots: a u128 overflows only past 2^64 slots.
            let mut sum = GlobalTotals::default();
            for (_, totals) in &group.slots {
                sum.p += u128::from(totals.p);
                sum.n += u128::from(totals.n);
                replicas += usize::from(*totals != SlotTotals::default());
            }
            // The entries of the last sums are usually these regions, in this order: kept.
            match sums.get_mut(i) {
                Some(entry) if Arc::ptr_eq(&entry.0, &group.region) => entry.1 = sum,
                Some(entry) => *entry = (Arc::clone(&group.region), sum),
                None => sums.push((Arc::clone(&group.region), sum)),
            }
        }
        sums.truncate(self.slots.0.len());
        for carry in self.carries.values() {
            let i = index_of(sums, &carry.region);
            let sum = &mut sums[i].1;
            let carried = carry.sums();
            sum.p = sum.p.saturating_add(carried.p);
            sum.n = sum.n.saturating_add(carried.n);
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
        match other.epoch.number.cmp(&self.epoch.number) {
            Ordering::Greater => {
                self.epoch = other.epoch;
                self.cuts.clone_from(&other.cuts);
                self.object_cuts.clone_from(&other.object_cuts);
            }
            // One epoch's cuts only grow (a restored merger raises them as objects tell it
            // their share, [`tell_cut`](Self::tell_cut)): the max of each.
            Ordering::Equal => {
                for (region, cut) in &other.cuts {
                    let held = self.cuts.entry(Arc::clone(region)).or_default();
                    *held = held.join(*cut);
                }
                for (object, cut) in &other.object_cuts {
                    join_object_cut(&mut self.object_cuts, *object, cut);
                }
            }
            Ordering::Less => {}
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
    /// [`merge_slot`](Self::merge_slot) per slot would do, as one walk per region over both
    /// sorted vectors, so the slots both hold (a merger's steady state: fresher copies of the
    /// same replicas) are raised in place, and only new ones are inserted (a live slot here is
    /// never a retired one: the carries and bases were joined first). A replica this state
    /// holds in another region keeps its region of record here.
    fn join_slots(&mut self, other: &Slots) {
        for group in &other.0 {
            let held = self.slots.group(&group.region);
            let mut new: Vec<(ReplicaId, SlotTotals)> = Vec::new();
            if let Ok(g) = held {
                let held = &mut self.slots.0[g].slots;
                let mut i = 0;
                for (replica, totals) in &group.slots {
                    while i < held.len() && held[i].0 < *replica {
                        i += 1;
                    }
                    match held.get_mut(i) {
                        Some((r, mine)) if r == replica => {
                            *mine = mine.join(*totals);
                            i += 1;
                        }
                        _ => new.push((*replica, *totals)),
                    }
                }
            } else {
                new.clone_from(&group.slots);
            }
            let (retired, carries, slots) = (&self.retired, &self.carries, &mut self.slots);
            let elsewhere = slots.0.len() > usize::from(held.is_ok());
            new.retain(|(replica, totals)| {
                if folded(retired, carries, *replica) {
                    return false;
                }
                match slots.locate(replica).filter(|_| elsewhere) {
                    Some((g, i)) => {
                        let mine = &mut slots.0[g].slots[i].1;
                        *mine = mine.join(*totals);
                        false
                    }
                    None => true,
                }
            });
            if new.is_empty() {
                continue;
            }
            // The joins above changed slots, not groups: `held` still places this region.
            let g = held.unwrap_or_else(|_| self.slots.group_or_new(&group.region));
            let held = &mut self.slots.0[g].slots;
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
        let (g, i) = match self.slots.locate_in(region, &replica) {
            Some(at) => at,
            // A zero slot is no growth of none.
            None if totals == SlotTotals::default() => return false,
            None => self.slots.insert(region, replica),
        };
        let group = &mut self.slots.0[g];
        let slot = &mut group.slots[i].1;
        let before = *slot;
        if before.dominates(totals) {
            return false;
        }
        *slot = before.join(totals);
        let after = *slot;
        if self.cuts.is_empty() {
            // The sums grow by exactly the slot's growth (no cut to saturate at).
            let (dp, dn) = (
                u128::from(after.p - before.p),
                u128::from(after.n - before.n),
            );
            self.value.p += dp;
            self.value.n += dn;
            let share = share_of(&mut self.shares, &group.region);
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
        let carry = self.carries.get(&object).cloned();
        let last = ReplicaId::lineage(object, replica.generation());
        // The slots it folds, with the region of the earliest (the object's region of record).
        let mut first: Option<(ReplicaId, &Region)> = None;
        let mut sums = GlobalTotals::default();
        for group in &self.slots.0 {
            for (r, totals) in &group.slots[group.range(object, last)] {
                if first.is_none_or(|(f, _)| r < &f) {
                    first = Some((*r, &group.region));
                }
                sums.p = sums.p.saturating_add(u128::from(totals.p));
                sums.n = sums.n.saturating_add(u128::from(totals.n));
            }
        }
        let (_, region) = first?;
        let mut carry = carry.unwrap_or_else(|| Carry {
            region: Arc::clone(region),
            ..Carry::default()
        });
        carry.totals.p = carry.totals.p.saturating_add(sums.p);
        carry.totals.n = carry.totals.n.saturating_add(sums.n);
        carry.through = carry.through.max(through);
        self.merge_carry(object, &carry);
        Some((object, carry))
    }

    /// Starts a new epoch at `at` (a delete if `delete`) in the authoritative state: the sums
    /// of every region now are the cuts, so the count starts again from zero.
    pub fn reset(&mut self, at: Timestamp, delete: bool) {
        self.start(Epoch {
            number: self.epoch.number + 1,
            deleted: delete,
            at: Some(at),
        });
    }

    /// Starts `epoch`, a later one than held, in the authoritative state of a merger that
    /// missed the reset that began it (restored from a backup older than it) and hears of
    /// it from an object ([`Cut`](crate::Cut)): as a reset, it cuts everything held — all
    /// of it was counted before that reset — and each object's share of the cut is raised
    /// when the object tells it ([`tell_cut`](Self::tell_cut)). Returns whether it started.
    pub fn adopt(&mut self, epoch: Epoch) -> bool {
        if epoch.number <= self.epoch.number {
            return false;
        }
        self.start(epoch);
        true
    }

    /// Raises `object`'s share of the current epoch's cuts to `totals` (of `region`, its
    /// region of record, if the object had no share), as the object told it: its region's
    /// cut grows by what its share grew. A share the state holds already changes nothing.
    /// Returns whether it grew.
    pub fn tell_cut(&mut self, object: ReplicaId, region: &Region, totals: GlobalTotals) -> bool {
        let held = self
            .object_cuts
            .entry(object.object())
            .or_insert_with(|| ObjectCut {
                region: Arc::clone(region),
                totals: GlobalTotals::default(),
            });
        let raised = held.totals.join(totals);
        if raised == held.totals {
            return false;
        }
        let grew = GlobalTotals {
            p: raised.p - held.totals.p,
            n: raised.n - held.totals.n,
        };
        held.totals = raised;
        let cut = self.cuts.entry(Arc::clone(&held.region)).or_default();
        cut.p = cut.p.saturating_add(grew.p);
        cut.n = cut.n.saturating_add(grew.n);
        self.recompute();
        true
    }

    /// Begins `epoch`: the sums of every region now are its cuts, and each object's sums its
    /// share of them.
    fn start(&mut self, epoch: Epoch) {
        self.cuts = self.region_sums();
        self.object_cuts = self.object_sums();
        self.epoch = epoch;
        self.recompute();
    }

    /// Per object, the sums of its carry and its live slots (none zero), with its region of
    /// record (its carry's, else its earliest live slot's): its share of what a reset cuts.
    pub fn object_sums(&self) -> BTreeMap<ReplicaId, ObjectCut> {
        let mut sums: BTreeMap<ReplicaId, ObjectCut> = self
            .carries
            .iter()
            .map(|(object, carry)| {
                let cut = ObjectCut {
                    region: Arc::clone(&carry.region),
                    totals: carry.sums(),
                };
                (*object, cut)
            })
            .collect();
        let mut slots: Vec<(ReplicaId, &Region, SlotTotals)> = self
            .slots
            .0
            .iter()
            .flat_map(|g| g.slots.iter().map(move |(r, t)| (*r, &g.region, *t)))
            .collect();
        slots.sort_unstable_by_key(|(replica, _, _)| *replica);
        for (replica, region, totals) in slots {
            let share = sums.entry(replica.object()).or_insert_with(|| ObjectCut {
                region: Arc::clone(region),
                totals: GlobalTotals::default(),
            });
            share.totals.p = share.totals.p.saturating_add(u128::from(totals.p));
            share.totals.n = share.totals.n.saturating_add(u128::from(totals.n));
        }
        sums.retain(|_, cut| cut.totals != GlobalTotals::default());
        sums
    }

    /// Merges `totals` into `replica`'s slot of a view ([`GCounter`](crate::GCounter),
    /// [`PNCounter`](crate::PNCounter)): a state whose slots are all in one region, the one
    /// it holds, or a nameless one for its first slot.
    pub(crate) fn merge_view_slot(&mut self, replica: ReplicaId, totals: SlotTotals) -> bool {
        let region = match self.slots.0.first() {
            Some(group) => Arc::clone(&group.region),
            None if totals == SlotTotals::default() => return false,
            None => Region::from(""),
        };
        self.merge_slot(replica, &region, totals)
    }

    /// A view of these slots (in replica order, each replica once, none zero).
    pub(crate) fn from_view_slots(slots: Vec<(ReplicaId, SlotTotals)>) -> CounterState {
        debug_assert!(slots.windows(2).all(|w| w[0].0 < w[1].0));
        debug_assert!(slots.iter().all(|(_, t)| *t != SlotTotals::default()));
        let mut state = CounterState::new();
        if !slots.is_empty() {
            let region = Region::from("");
            state.slots.0.push(Group { region, slots });
            state.recompute();
        }
        state
    }

    /// The slots of a view that are ahead of `older`'s (either half grew): joining the result
    /// into `older` gives the same view as joining all of `self`.
    pub(crate) fn view_delta(&self, older: &CounterState) -> CounterState {
        let mut old = older.slots.only_region().iter().peekable();
        let mut ahead = Vec::new();
        for &(replica, totals) in self.slots.only_region() {
            while old.next_if(|(r, _)| *r < replica).is_some() {}
            let before = old
                .next_if(|(r, _)| *r == replica)
                .map_or_else(SlotTotals::default, |&(_, t)| t);
            if !before.dominates(totals) {
                ahead.push((replica, totals));
            }
        }
        CounterState::from_view_slots(ahead)
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
        for group in &mut self.slots.0 {
            group
                .slots
                .retain(|(replica, _)| !folded(retired, carries, *replica));
        }
        self.slots.0.retain(|group| !group.slots.is_empty());
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
        if !shares.is_sorted_by(|a, b| a.0 <= b.0) {
            shares.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        self.shares = shares;
    }
}

/// The index of `region`'s entry in `shares`, added (zero) if missing.
fn index_of(shares: &mut Shares, region: &Region) -> usize {
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
fn share_of<'a>(shares: &'a mut Shares, region: &Region) -> &'a mut GlobalTotals {
    let i = match shares.binary_search_by(|(r, _)| r.cmp(region)) {
        Ok(i) => i,
        Err(i) => {
            shares.insert(i, (Arc::clone(region), GlobalTotals::default()));
            i
        }
    };
    &mut shares[i].1
}

/// Joins `cut` into `object`'s share in `cuts`: the max of each half (the region held first
/// stays).
fn join_object_cut(cuts: &mut BTreeMap<ReplicaId, ObjectCut>, object: ReplicaId, cut: &ObjectCut) {
    match cuts.get_mut(&object) {
        Some(held) => held.totals = held.totals.join(cut.totals),
        None => {
            cuts.insert(object, cut.clone());
        }
    }
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

    #[test]
    fn a_replica_is_held_once_in_its_region_of_record_whatever_region_a_view_names() {
        let mut here = CounterState::new();
        here.merge_slot(r(1), &eu(), t(5, 0));
        here.merge_slot(r(3), &us(), t(1, 0));
        // Another view holds replica 1 in another region, and a replica this one lacks.
        let mut there = CounterState::new();
        there.merge_slot(r(1), &us(), t(7, 1));
        there.merge_slot(r(2), &us(), t(2, 0));
        assert!(
            here.merge_slot(r(1), &us(), t(6, 0)),
            "found in eu, raised there"
        );
        here.join(&there);
        assert_eq!(here.slots().len(), 3);
        assert_eq!(here.slots().get(&r(1)).map(|s| s.region), Some(&eu()));
        assert_eq!(here.slot(r(1)), t(7, 1));
        assert_eq!(here.value(), g(10, 1));
        assert_eq!(here.shares(), [(eu(), g(7, 1)), (us(), g(3, 0))]);
        let order: Vec<_> = here.slots().keys().copied().collect();
        assert_eq!(order, [r(1), r(2), r(3)], "by region, then by replica");
        // Joined the other way, the other view keeps its own region of record: one slot too.
        there.join(&here);
        assert_eq!((there.slots().len(), there.value()), (3, g(10, 1)));
        assert_eq!(there.slots().get(&r(1)).map(|s| s.region), Some(&us()));
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
            ..Carry::default()
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
    fn a_rebased_carry_keeps_the_count_and_an_earlier_frame_changes_nothing() {
        // Object 1 counted 7 in generation 0 and 5 in generation 1, both retired into its
        // carry; then the counter was deleted, and nothing counted since.
        let mut store = CounterState::new();
        store.merge_slot(inc(1, 0), &eu(), t(7, 0));
        store.retire(inc(1, 0));
        store.merge_slot(inc(1, 1), &eu(), t(5, 0));
        store.retire(inc(1, 1));
        let before = store.clone();
        store.reset(Timestamp::from_unix_ms(1), true);
        assert_eq!(store.value(), g(0, 0));
        // At generation 2 the object rebases: its carry of 12 is reclaimed in frame 1.
        let rebased = Carry::sent(
            inc(1, 2),
            eu(),
            t(0, 0),
            Some(crate::Frame {
                epoch: 1,
                reclaimed: t(12, 0),
            }),
        );
        assert!(store.merge_carry(inc(1, 2), &rebased));
        assert_eq!(store.value(), g(0, 0), "a rebase changes no count");
        assert_eq!(store.carries()[&inc(1, 0).object()].sums(), g(12, 0));
        // A late copy of the carry of frame 0 changes nothing; a hit counts from the cut.
        let old = Carry::sent(inc(1, 2), eu(), t(12, 0), None);
        assert!(!store.merge_carry(inc(1, 2), &old));
        store.merge_slot(inc(1, 2), &eu(), t(3, 0));
        store.retire(inc(1, 2));
        assert_eq!(store.value(), g(3, 0));
        let carry = &store.carries()[&inc(1, 0).object()];
        assert_eq!(
            (carry.frame, carry.totals, carry.reclaimed),
            (1, g(3, 0), g(12, 0))
        );
        // A store restored from before the rebase takes it whole when the object re-sends it.
        let mut restored = before;
        restored.reset(Timestamp::from_unix_ms(1), true);
        restored.merge_carry(
            inc(1, 3),
            &Carry {
                through: 3,
                ..carry.clone()
            },
        );
        assert_eq!(restored.value(), g(3, 0));
    }

    #[test]
    fn a_store_restored_from_before_a_reset_adopts_it_from_the_objects_cuts() {
        // Object 1 (eu) counted 7 and object 2 (us) 4 when the backup was taken; object 1
        // counted 3 more before the counter was reset, then 3 more, and object 3 (eu) 5.
        let mut store = CounterState::new();
        store.merge_slot(inc(1, 0), &eu(), t(7, 0));
        store.merge_slot(inc(2, 0), &us(), t(4, 0));
        let backup = store.clone();
        store.merge_slot(inc(1, 0), &eu(), t(10, 0));
        let at = Timestamp::from_unix_ms(10);
        store.reset(at, false);
        assert_eq!(store.object_cut(inc(1, 0)), g(10, 0));
        assert_eq!(store.object_cut(inc(2, 0)), g(4, 0));
        assert_eq!(store.object_cut(inc(3, 0)), g(0, 0));
        store.merge_slot(inc(1, 0), &eu(), t(13, 0));
        store.merge_slot(inc(3, 0), &eu(), t(5, 0));
        assert_eq!(store.value(), g(8, 0));
        // The restored store hears object 1's slot with its cut: it starts epoch 1, cutting
        // all it holds, raises object 1's share to what it was told, then merges the slot.
        let mut restored = backup;
        let epoch = store.epoch();
        assert!(restored.adopt(epoch));
        assert!(!restored.adopt(epoch), "an epoch is started once");
        assert_eq!(restored.value(), g(0, 0));
        assert!(restored.tell_cut(inc(1, 0), &eu(), g(10, 0)));
        assert!(
            !restored.tell_cut(inc(1, 0), &eu(), g(9, 0)),
            "a lower share changes nothing"
        );
        restored.merge_slot(inc(1, 0), &eu(), t(13, 0));
        assert_eq!(restored.value(), g(3, 0));
        // Object 3 was told it had counted nothing; object 2 re-sends what the backup holds.
        assert!(!restored.tell_cut(inc(3, 0), &eu(), g(0, 0)));
        restored.merge_slot(inc(3, 0), &eu(), t(5, 0));
        assert!(!restored.tell_cut(inc(2, 0), &us(), g(4, 0)));
        restored.merge_slot(inc(2, 0), &us(), t(4, 0));
        assert_eq!(restored.value(), store.value());
        assert_eq!(restored.epoch(), store.epoch());
        // A view of the store before the raise joins it as the max: the count stays.
        let mut view = store.clone();
        view.join(&restored);
        assert_eq!(view.value(), store.value());
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
