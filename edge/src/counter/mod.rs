//! One counter at one replica, as pure functions: its stored row, what it heard from the
//! merger, and the read formula.
//!
//! A [`Row`] is what the object stores per counter: its own slot totals (`own`), the totals
//! of its slot the merger has acknowledged (`acked`), and whether it still has to sync. A
//! counter is dirty while `own` is ahead of `acked`; a sync sends `own` (totals, never
//! increments), and an answer raises `acked` only to what *that* sync sent, so hits that
//! arrived meanwhile stay dirty. Nothing is dropped on failure: the totals simply go again.
//!
//! An [`Entry`] is a row plus what the object last [`Heard`] from the merger about the
//! counter; it lives in the read cache only (reads never write). Reads answer
//! `global - recorded_own + current_own` per half ([`Entry::view`]).
//!
//! A row belongs to the incarnation that wrote it, named by its generation
//! ([`incarnation`]). A row of an earlier generation reads as zero
//! ([`Row::in_generation`]): its totals are the final slot of a retired incarnation, counted in
//! the merger's global, and the current incarnation starts that counter from nothing. That
//! final slot goes into the row's *carry* ([`Row::carried`]): the sums of the counter's final
//! slots in the object's earlier generations, which every sync of the row re-sends, so that a
//! merger restored from an old backup gets them back. Nothing is written at a rotation: a
//! row is carried over when it is next read.
//!
//! A counter nobody counts any more — reset or deleted, its global totals zero, nothing
//! counted here in this generation — has its carry *rebased* ([`Row::rebase`]): what it
//! carried moves into a [`Frame`] of the counter's epoch (reclaimed: still counted by the
//! merger, which takes the frame whole), the carry starts again from zero, and once the
//! merger has it the row holds nothing to send but the frame. Such a row is deleted from
//! storage `RECLAIM_AFTER_MS` later ([`Row::reclaim`]), or, if the counter was counted here
//! again meanwhile, stops re-sending what it reclaimed: a merger restored from a backup older
//! than that is outside what a restore heals.
//!
//! A row keeps its object's share of the counter's last reset as a merger told it
//! ([`Row::cut`]) and sends it with every sync for `RECLAIM_AFTER_MS` after the reset, so that a
//! merger restored from a backup older than the reset takes it up instead of counting the old
//! epoch again ([`Row::take_cut`], [`Row::as_sent`]).
//!
//! A row also keeps the visitor keys of its hits on the exact path near a milestone
//! ([`Row::visit`]), stored with the hit they name, until the merger has committed it: a
//! restart between a hit's answer and its sync does not lose the key.
//!
//! The object's decisions about a counter are methods here, tested natively: a hit is planned
//! ([`Entry::plan_hit`]: the row to store, the view, its slot unit, whether to refresh and
//! whether it takes the exact path) before anything is stored, a read is told what it needs
//! ([`Entry::read_need`]) and what it answers ([`Entry::read_view`]), and a sync's outcome
//! is applied by [`Entry::settle`]; the object only stores, awaits and arms.
//!
//! The counter's wing, as presence and unique visitors have theirs: this module (pure), its
//! storage ([`store`]), its Durable Object ([`object`], the `Replica` class), the object's
//! incarnations ([`incarnation`]) and the exact path's gate near a milestone ([`exact`]).

pub mod exact;
pub mod incarnation;
#[allow(
    missing_docs,
    reason = "#[durable_object] generates undocumented wasm-bindgen exports"
)]
pub mod object;
pub mod store;

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::milestone::Watch;
use tally_crdt::{
    CounterKey, CounterKind, Cut, Error, Frame, GlobalTotals, MAX_VISITS_PER_COUNTER,
    MergedCounter, ReplicaId, SlotTotals, SlotUpdate, SyncAnswer, Timestamp, Visit,
};

/// The object's lineage: its 96 bits, and the first generation named by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lineage {
    /// The object's bits ([`ReplicaId::object`]).
    pub object: ReplicaId,
    /// Generations from this one on are incarnations of the lineage, and their final slots
    /// go into the carries (0 for storage drawn with its lineage; for storage from before,
    /// the generation after the one it had then).
    pub from: u64,
}

impl Lineage {
    /// Whether `generation` is an incarnation of the lineage (its slots are carried).
    pub fn holds(&self, generation: u64) -> bool {
        generation >= self.from
    }

    /// Whether `replica` is an incarnation of the lineage: its retirement must be a
    /// version-4 one, which folds it into the object's carry.
    pub fn names(&self, replica: ReplicaId) -> bool {
        replica.object() == self.object && self.holds(u64::from(replica.generation()))
    }
}

/// Where a row stands with the merger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncState {
    /// The merger has acknowledged the own totals.
    #[default]
    Clean,
    /// Own totals ahead of what the merger acknowledged: the next sync sends them.
    Dirty,
    /// The merger refused this counter; it stays out of the regular syncs (so it blocks
    /// nothing) and the anti-entropy sweep offers it again.
    Rejected,
}

impl SyncState {
    /// The stored form.
    pub fn code(self) -> i64 {
        match self {
            SyncState::Clean => 0,
            SyncState::Dirty => 1,
            SyncState::Rejected => 2,
        }
    }

    /// Reads the stored form.
    pub fn from_code(code: i64) -> Option<SyncState> {
        match code {
            0 => Some(SyncState::Clean),
            1 => Some(SyncState::Dirty),
            2 => Some(SyncState::Rejected),
            _ => None,
        }
    }
}

/// What an object stores for one counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    /// This replica's own slot.
    pub own: SlotTotals,
    /// The totals of its slot the merger has acknowledged (committed).
    pub acked: SlotTotals,
    /// The last hit here.
    pub changed_at: Timestamp,
    /// Whether it must sync.
    pub state: SyncState,
    /// The generation of the incarnation whose slot `own` and `acked` are.
    pub generation: u64,
    /// The sums of this counter's final slots in the object's generations before
    /// `generation` (those of its lineage: [`Lineage::holds`]).
    pub carried: SlotTotals,
    /// The visitor keys of this generation's hits on the exact path that the merger has not
    /// committed yet (at most [`MAX_VISITS_PER_COUNTER`], oldest first).
    pub visits: Vec<Visit>,
    /// The frame `carried` counts in, once the carry was rebased ([`Row::rebase`]) or the
    /// merger told of a later one; `None`: frame 0.
    pub frame: Option<Frame>,
    /// When the row last rebased (or took up a frame); zero while it never did.
    pub rebased_at: Timestamp,
    /// The object's share of the counter's last reset, as a merger told it ([`Cut`]); sent
    /// with every sync of the row until `RECLAIM_AFTER_MS` after that reset, so a merger
    /// restored from a backup older than the reset takes it up ([`Row::take_cut`]).
    pub cut: Option<Cut>,
}

impl Row {
    /// The row as incarnation `generation` sees it: itself if written by it, else a zero
    /// slot (an earlier incarnation's slot is final and already in the merger's global; a hit
    /// on it starts the new slot from zero and rewrites the row with `generation`) with the
    /// earlier slot added to the carry, if `lineage` holds its generation.
    ///
    /// What is carried is `acked`: the object rotates only when every row is acknowledged,
    /// so that is the final slot the merger committed (a row the merger refused carries only
    /// what it took). Sums saturate: a carry is a lower bound, never more than was counted.
    #[must_use]
    pub fn in_generation(self, generation: u64, lineage: &Lineage) -> Row {
        if self.generation == generation {
            return self;
        }
        let carried = if lineage.holds(self.generation) {
            SlotTotals {
                p: self.carried.p.saturating_add(self.acked.p),
                n: self.carried.n.saturating_add(self.acked.n),
            }
        } else {
            self.carried
        };
        Row {
            generation,
            carried,
            frame: self.frame,
            rebased_at: self.rebased_at,
            cut: self.cut,
            ..Row::default()
        }
    }

    /// The object's share of the reset that began `epoch`, if the row holds it and it is not
    /// zero (a merger before version 6 recorded none and tells zero).
    fn share_of(&self, epoch: u64) -> Option<SlotTotals> {
        let cut = self
            .cut
            .filter(|c| c.epoch == epoch && c.totals != GlobalTotals::default())?;
        Some(SlotTotals {
            p: u64::try_from(cut.totals.p).ok()?,
            n: u64::try_from(cut.totals.n).ok()?,
        })
    }

    /// Takes the object's share of the counter's last reset that a merger told ([`Cut`]),
    /// if of a later epoch than the one held and still within `keep_ms` of that reset
    /// (`RECLAIM_AFTER_MS`; 0: kept for ever). Returns whether it changed.
    pub fn take_cut(&mut self, cut: Cut, now: Timestamp, keep_ms: u64) -> bool {
        if !kept(&cut, now, keep_ms) || cut.epoch <= self.cut.map_or(0, |c| c.epoch) {
            return false;
        }
        self.cut = Some(cut);
        true
    }

    /// Drops a cut told longer than `keep_ms` after its reset: by then the merger may net
    /// what a rebased carry reclaimed out of the object's share, which a cut sent again
    /// would raise back. Returns whether it changed.
    pub fn expire_cut(&mut self, now: Timestamp, keep_ms: u64) -> bool {
        let expired = self.cut.is_some_and(|cut| !kept(&cut, now, keep_ms));
        if expired {
            self.cut = None;
        }
        expired
    }

    /// Applies what is due at `now` (`keep_ms`, `RECLAIM_AFTER_MS`): what the row reclaimed
    /// is forgotten once due ([`Row::reclaim`]; the sweep deletes a row that holds nothing
    /// first), and a cut older than `keep_ms` dropped ([`Row::expire_cut`]). Returns whether
    /// it changed (the sweep then stores it).
    pub fn expire(&mut self, now: Timestamp, keep_ms: u64) -> bool {
        let forget = self.reclaim(now, keep_ms) != Reclaim::Keep;
        if forget {
            self.forget_reclaimed();
        }
        self.expire_cut(now, keep_ms) | forget
    }

    /// The row as a sync sends it at `now`, whether or not the sweep has stored its expiries
    /// yet (it may be off): [`Row::expire`]d.
    #[must_use]
    pub fn as_sent(mut self, now: Timestamp, keep_ms: u64) -> Row {
        self.expire(now, keep_ms);
        self
    }

    /// The slot of counter `key` a sync sends of this row: its own totals, visits, carry,
    /// frame and cut.
    pub fn update(self, key: CounterKey) -> SlotUpdate {
        SlotUpdate {
            key,
            totals: self.own,
            visits: self.visits,
            carried: self.carried,
            frame: self.frame,
            cut: self.cut,
        }
    }

    /// Rebases the carry into frame `epoch` if the counter is one nobody counts any more:
    /// `heard` says its global totals in `epoch` (at least 1, later than the row's frame)
    /// are zero, and the row counted nothing in this generation and is clean. What the object
    /// carried is reclaimed into the frame, the carry starts again from zero, and the row is
    /// dirty until the merger has the frame (so the object does not rotate meanwhile). The
    /// merger counts the same sums before and after; returns whether it rebased.
    ///
    /// What the object carried is its share of that epoch's reset when the row holds it
    /// ([`Row::cut`]): with nothing counted since, the object's sums at the merger are still
    /// that share, whatever frame the row took up. Without it (a reset of a merger before
    /// version 6), the row must know all it ever carried: what it reclaimed itself and what it
    /// carries since.
    pub fn rebase(&mut self, epoch: u64, global: GlobalTotals, now: Timestamp) -> bool {
        let later = epoch > self.frame.map_or(0, |f| f.epoch);
        if !(self.counts_nothing_here() && later && global == GlobalTotals::default()) {
            return false;
        }
        let reclaimed = match self.share_of(epoch) {
            Some(share) => share,
            None if self.knows_its_carry() && self.carried != SlotTotals::default() => {
                let before = self.frame.map_or_else(SlotTotals::default, |f| f.reclaimed);
                SlotTotals {
                    p: before.p.saturating_add(self.carried.p),
                    n: before.n.saturating_add(self.carried.n),
                }
            }
            None => return false,
        };
        self.frame = Some(Frame { epoch, reclaimed });
        self.carried = SlotTotals::default();
        self.rebased_at = now;
        self.state = SyncState::Dirty;
        true
    }

    /// Takes up the frame `epoch` the merger holds for this object's carry, if it is later
    /// than the row's (a row that was reclaimed here and counted again): what the row carries
    /// since counts in it. What that frame reclaimed stays at the merger: the row does not
    /// know it, so it rebases again only from its share of a later reset ([`Row::rebase`]
    /// needs all its object ever carried). Returns whether it changed.
    pub fn take_frame(&mut self, epoch: u64) -> bool {
        if epoch <= self.frame.map_or(0, |f| f.epoch) {
            return false;
        }
        self.take_up(epoch);
        true
    }

    /// The row's frame becomes `epoch`, as one taken up from the merger: nothing reclaimed
    /// here, and not rebased here.
    fn take_up(&mut self, epoch: u64) {
        self.frame = Some(Frame {
            epoch,
            reclaimed: SlotTotals::default(),
        });
        self.rebased_at = Timestamp::default();
    }

    /// Whether the row's frame is one it rebased into itself ([`Row::rebase`]), not one it
    /// took up from the merger.
    fn rebased_here(&self) -> bool {
        self.frame.is_some() && self.rebased_at != Timestamp::default()
    }

    /// Whether the row knows everything its object ever carried of the counter: in frame 0,
    /// or in a frame it rebased into itself.
    fn knows_its_carry(&self) -> bool {
        self.frame.is_none() || self.rebased_here()
    }

    /// Whether the row counted nothing in its generation and has nothing to sync.
    fn counts_nothing_here(&self) -> bool {
        self.own == SlotTotals::default()
            && self.acked == SlotTotals::default()
            && self.state == SyncState::Clean
            && self.visits.is_empty()
    }

    /// What becomes of the row once it rebased here at least `after_ms` ago (0: never):
    /// holding nothing since (no slot, no carry, nothing to sync), it is deleted from
    /// storage ([`Reclaim::Delete`]); counted again, it stops re-sending what it reclaimed
    /// ([`Reclaim::Forget`]). Either way the merger holds what was reclaimed, and once no
    /// edge sends it any more it may net it against the counter's cuts.
    pub fn reclaim(&self, now: Timestamp, after_ms: u64) -> Reclaim {
        let due =
            after_ms > 0 && self.rebased_here() && now.millis_since(self.rebased_at) >= after_ms;
        let empty = self.counts_nothing_here() && self.carried == SlotTotals::default();
        match (due, empty) {
            (false, _) => Reclaim::Keep,
            (true, true) => Reclaim::Delete,
            (true, false) => Reclaim::Forget,
        }
    }

    /// Stops re-sending what the row reclaimed ([`Reclaim::Forget`]): its frame stays, with
    /// nothing reclaimed, as one taken up from the merger (so it rebases again only from its
    /// share of a later reset).
    pub fn forget_reclaimed(&mut self) {
        if let Some(frame) = self.frame {
            self.take_up(frame.epoch);
        }
    }

    /// Counts a hit in the own slot and marks the row dirty.
    ///
    /// # Errors
    ///
    /// [`Error::SlotOverflow`] if either half would pass `u64::MAX`; the row is unchanged.
    pub fn hit(
        &mut self,
        add: SlotTotals,
        replica: ReplicaId,
        now: Timestamp,
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
        self.state = SyncState::Dirty;
        Ok(())
    }

    /// Keeps the visitor key of a hit on the exact path (counted already) until the merger
    /// has committed it; returns false, keeping nothing, when [`MAX_VISITS_PER_COUNTER`] wait
    /// already (a sync carries at most that many): that hit goes off the exact path, so that
    /// every hit told a verdict has its key on record.
    #[must_use]
    pub fn visit(&mut self, visit: Visit) -> bool {
        if self.visits.len() >= MAX_VISITS_PER_COUNTER {
            return false;
        }
        self.visits.push(visit);
        true
    }

    /// Applies the merger's acknowledgement of a sync that sent `sent`: `acked` rises to it
    /// (not to `own`, which may have moved since), the visits it held are on record, and the
    /// row is clean once nothing is left.
    pub fn acknowledge(&mut self, sent: SlotTotals) {
        self.acked = self.acked.join(sent);
        let acked = self.acked.p;
        self.visits.retain(|v| v.end > acked);
        self.state = if self.acked.dominates(self.own) {
            SyncState::Clean
        } else {
            SyncState::Dirty
        };
    }
}

/// Whether a row keeps `cut` at `now`: for `keep_ms` after its reset (0: for ever).
fn kept(cut: &Cut, now: Timestamp, keep_ms: u64) -> bool {
    keep_ms == 0 || now.millis_since(cut.at) < keep_ms
}

/// What becomes of a rebased row ([`Row::reclaim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// Not yet (or never rebased here).
    Keep,
    /// Deleted from storage: it holds nothing the merger lacks.
    Delete,
    /// Counted again since: it stops re-sending what it reclaimed.
    Forget,
}

/// The merger's last word on a counter, as this object heard it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    /// Global totals then.
    pub global: GlobalTotals,
    /// The merger's copy of this replica's slot then.
    pub recorded: SlotTotals,
    /// When the counter last changed at the merger (`None`: nobody had hit it).
    pub updated_at: Option<Timestamp>,
    /// When it was heard.
    pub fetched_at: Timestamp,
    /// The counter's epoch then (its resets): `global` counts only what came after the last.
    pub epoch: u64,
}

/// A counter in the read cache: its row (as stored) and what was heard of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// The row; all zero for a counter this object never counted.
    pub row: Row,
    /// Whether the row exists in storage (a read of an unknown counter creates none).
    pub stored: bool,
    /// The merger's last word, if any.
    pub heard: Option<Heard>,
    /// Its milestones, once a sync answer told of any ([`crate::milestone`]).
    pub watch: Option<Box<Watch>>,
}

/// What a hit is decided against, from the object's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HitRules {
    /// `READ_TTL_MS`: what was heard longer ago is refreshed.
    pub read_ttl_ms: u64,
    /// `SYNC_INTERVAL_MS`: the margin of a milestone is reckoned in it.
    pub sync_interval_ms: u64,
    /// Whether the exact path is on (`EXACT_WAIT_MS` > 0).
    pub exact: bool,
}

/// What a hit does to its counter at this object, decided before anything is stored
/// ([`Entry::plan_hit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HitPlan {
    /// The row to store: the hit counted, and its visitor key kept if it takes the exact path.
    pub row: Row,
    /// The counter's view with the hit.
    pub view: View,
    /// The incarnation and its slot's total after the hit: the last unit the hit holds.
    pub slot: (ReplicaId, u64),
    /// Whether what was heard is older than the read TTL: refresh it (off the exact path).
    pub stale: bool,
    /// Whether the hit takes the exact path: near a milestone, with its visitor key kept (or
    /// none given).
    pub exact: bool,
}

/// What a read of a counter needs before it is answered ([`Entry::read_need`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadNeed {
    /// Answered as it is.
    Fresh,
    /// Answered as it is, and refreshed on the alarm (older than the read TTL).
    Refresh,
    /// Fetched from the merger first (never heard, or older than the staleness bound).
    Fetch,
}

/// What an object answers about a counter: the halves of its count and how fresh they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// `global - recorded_own + current_own`, per half.
    pub totals: GlobalTotals,
    /// The newest change known (a hit here or at the merger); `None` if nobody hit it.
    pub updated_at: Option<Timestamp>,
    /// Milliseconds since the global part was heard; `None` if nothing was heard.
    pub age_ms: Option<u64>,
    /// The epoch `totals` count in (0 until the counter's first reset).
    #[serde(default)]
    pub epoch: u64,
}

impl View {
    /// The lower bound this view is.
    pub fn bound(&self) -> Bound {
        Bound {
            totals: self.totals,
            epoch: self.epoch,
        }
    }

    /// Raises the view to `other` where that is tighter ([`Bound::join`]).
    pub fn raise(&mut self, other: Bound) {
        let joined = self.bound().join(other);
        self.totals = joined.totals;
        self.epoch = joined.epoch;
    }

    /// Raises the answer to a hit of `add` to `before` (a bound known before the hit) plus
    /// the hit, in `before`'s epoch: an object behind on a reset that `before` has seen
    /// answers that epoch's bound with the hit (counted in it: above the reset's cut).
    pub fn raise_after_hit(&mut self, before: Bound, add: SlotTotals) {
        if let (Some(p), Some(n)) = (
            before.totals.p.checked_add(u128::from(add.p)),
            before.totals.n.checked_add(u128::from(add.n)),
        ) {
            self.raise(Bound {
                totals: GlobalTotals { p, n },
                epoch: before.epoch,
            });
        }
    }
}

/// A lower bound of a counter's totals within one epoch: the summary value of the counter
/// lattice ([`tally_crdt::Bound`]), what a view, the isolate cache and a session token hold.
pub use tally_crdt::Bound;

impl Entry {
    /// Takes the merger's answer unless it is older than what was heard (several mergers
    /// may lag each other; within an epoch the merger's totals only grow, so the answer of
    /// the later epoch, or of the same epoch that dominates, is the newer). Returns whether
    /// it was taken. An older answer still refreshes the age of what was heard: what is
    /// held covers what the merger holds now, so it is as fresh as the answer.
    pub fn hear(&mut self, merged: &MergedCounter, now: Timestamp) -> bool {
        let answer = Bound {
            totals: merged.global,
            epoch: merged.epoch,
        };
        let newer = self.heard.is_none_or(|h| {
            answer.covers(Bound {
                totals: h.global,
                epoch: h.epoch,
            })
        });
        if newer {
            self.heard = Some(Heard {
                global: merged.global,
                recorded: merged.recorded,
                updated_at: merged.updated_at,
                fetched_at: now,
                epoch: merged.epoch,
            });
        } else if let Some(heard) = &mut self.heard {
            heard.fetched_at = heard.fetched_at.max(now);
        }
        newer
    }

    /// A hit of `add` (with its visitor key, if any) by incarnation `replica` at `now`: the
    /// row to store and what to answer. Pure: nothing changes until the caller stores the
    /// row and keeps it.
    ///
    /// # Errors
    ///
    /// [`Error::SlotOverflow`] if the hit would pass `u64::MAX` in its slot,
    /// [`Error::ValueOutOfRange`] if the view would pass `u128::MAX`.
    pub fn plan_hit(
        &self,
        kind: CounterKind,
        add: SlotTotals,
        visitor: Option<String>,
        replica: ReplicaId,
        now: Timestamp,
        rules: HitRules,
    ) -> Result<HitPlan, Error> {
        let mut row = self.row.clone();
        row.hit(add, replica, now)?;
        let view = self.view_with(&row, now)?;
        let slot = (replica, row.own.p);
        let near = rules.exact
            && kind == CounterKind::G
            && self.watch.as_ref().is_some_and(|w| {
                w.near(
                    view.totals.p,
                    view.age_ms.unwrap_or(0),
                    rules.sync_interval_ms,
                )
            });
        // A hit told anything keeps its visitor key, stored with it, until the merger has it;
        // with no room left for it (32 waiting), the hit goes off the exact path: no verdict,
        // its receipt tells.
        let exact = near
            && match (visitor, u32::try_from(add.p)) {
                (Some(visitor), Ok(delta)) => row.visit(Visit {
                    end: slot.1,
                    delta,
                    visitor,
                }),
                _ => true,
            };
        Ok(HitPlan {
            row,
            view,
            slot,
            stale: !self.is_fresh(now, rules.read_ttl_ms),
            exact,
        })
    }

    /// What a read needs: heard within `read_ttl_ms`, answered; within `stale_after_ms`,
    /// answered and refreshed; otherwise (or never heard) fetched first.
    pub fn read_need(&self, now: Timestamp, read_ttl_ms: u64, stale_after_ms: u64) -> ReadNeed {
        if !self.is_fresh(now, stale_after_ms) {
            ReadNeed::Fetch
        } else if !self.is_fresh(now, read_ttl_ms) {
            ReadNeed::Refresh
        } else {
            ReadNeed::Fresh
        }
    }

    /// A read's answer: the view, or `None` for a counter neither counted here nor heard of
    /// (the Worker answers it unavailable, not zero).
    ///
    /// # Errors
    ///
    /// As [`Entry::view`].
    pub fn read_view(&self, now: Timestamp) -> Result<Option<View>, Error> {
        if self.heard.is_some() || self.stored {
            self.view(now).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Whether what was heard is younger than `ttl_ms`.
    pub fn is_fresh(&self, now: Timestamp, ttl_ms: u64) -> bool {
        self.heard
            .is_some_and(|h| now.millis_since(h.fetched_at) < ttl_ms)
    }

    /// The answer: the read formula on what was heard, or the own slot alone when nothing
    /// was heard yet (`age_ms` is then `None`).
    ///
    /// # Errors
    ///
    /// [`Error::ValueOutOfRange`] if a half passes `u128::MAX` (not reachable with fewer
    /// than 2^64 slots).
    pub fn view(&self, now: Timestamp) -> Result<View, Error> {
        self.view_with(&self.row, now)
    }

    /// The answer [`Entry::view`] would give with `row` in place of the cached row (a hit
    /// about to be stored).
    ///
    /// # Errors
    ///
    /// As [`Entry::view`].
    pub fn view_with(&self, row: &Row, now: Timestamp) -> Result<View, Error> {
        let own_change = (row.own != SlotTotals::default()).then_some(row.changed_at);
        Ok(match self.heard {
            Some(h) => View {
                totals: h.global.with_own(h.recorded, row.own)?,
                updated_at: own_change.max(h.updated_at),
                age_ms: Some(now.millis_since(h.fetched_at)),
                epoch: h.epoch,
            },
            None => View {
                totals: GlobalTotals {
                    p: u128::from(row.own.p),
                    n: u128::from(row.own.n),
                },
                updated_at: own_change,
                age_ms: None,
                epoch: 0,
            },
        })
    }
}

impl Entry {
    /// Moves a cached entry to the next incarnation (`generation`) when the object
    /// rotates, so that the cache never mixes two incarnations' slots. Returns `false` when
    /// the entry has nothing heard to carry over and must be dropped (it reloads from storage,
    /// as zero, and is fetched from the merger).
    ///
    /// Rotation happens only when every row is acknowledged, so the old slot at the merger
    /// is final and at least `max(recorded, acked)`: what was heard, with the old slot
    /// counted at that, is a lower bound of the global totals, and the new incarnation has
    /// recorded nothing at the merger yet. A clean row answers exactly as before the
    /// rotation; a row the merger rejected answers without its refused part. The row is
    /// carried over as storage's would be when next read ([`Row::in_generation`]).
    pub fn rotate(&mut self, generation: u64, lineage: &Lineage) -> bool {
        let Some(h) = self.heard else { return false };
        let Ok(global) = h.global.with_own(h.recorded, self.row.acked) else {
            return false;
        };
        let own_change = (self.row.own != SlotTotals::default()).then_some(self.row.changed_at);
        self.heard = Some(Heard {
            global,
            recorded: SlotTotals::default(),
            updated_at: h.updated_at.max(own_change),
            fetched_at: h.fetched_at,
            epoch: h.epoch,
        });
        self.row = self.row.clone().in_generation(generation, lineage);
        true
    }
}

/// What a sync answer means for one counter that was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Committed: raise `acked` to what was sent, take the merger's word.
    Merged(&'a MergedCounter),
    /// Refused alone (code, message): set the row aside, nothing else is held back.
    Rejected(&'a str, &'a str),
    /// Not in the answer: the row stays dirty and goes again.
    Missing,
}

/// Matches a sync's answers to what was sent, **by counter**, never by position: each
/// counter sent gets its own outcome, whatever order (or subset) the merger answered in.
pub fn outcomes<'a>(
    sent: &'a [SlotUpdate],
    answers: &'a [SyncAnswer],
) -> Vec<(&'a SlotUpdate, Outcome<'a>)> {
    let by_key: HashMap<&CounterKey, &SyncAnswer> = answers.iter().map(|a| (a.key(), a)).collect();
    sent.iter()
        .map(|update| {
            let outcome = match by_key.get(&update.key) {
                Some(SyncAnswer::Merged(m)) => Outcome::Merged(m),
                Some(SyncAnswer::Rejected(r)) => Outcome::Rejected(&r.error.code, &r.error.message),
                None => Outcome::Missing,
            };
            (update, outcome)
        })
        .collect()
}

/// What a sync or a sweep page sends of `rows`: each row as the current incarnation
/// (`generation`) sees it ([`Row::in_generation`]): its own totals, its carry and its frame.
/// A row of an earlier incarnation is never dirty (the object rotates only when clean, and a
/// hit or a rebase rewrites the row in the current generation), and its totals never go out
/// under the new id: they are the old incarnation's final slot, and go in the carry. A row
/// with neither a slot in this generation nor a carry nor a frame has nothing to send; a
/// rebased row sends its frame until it is reclaimed, so a restored merger gets it back.
///
/// Each row goes as sent at `now` ([`Row::as_sent`], `keep_ms` being `RECLAIM_AFTER_MS`).
pub fn current_totals(
    rows: Vec<(CounterKey, Row)>,
    generation: u64,
    lineage: &Lineage,
    now: Timestamp,
    keep_ms: u64,
) -> Vec<SlotUpdate> {
    rows.into_iter()
        .filter_map(|(key, row)| {
            let current = row.generation == generation;
            let row = row.in_generation(generation, lineage).as_sent(now, keep_ms);
            (current || row.carried != SlotTotals::default() || row.frame.is_some())
                .then(|| row.update(key))
        })
        .collect()
}

impl Entry {
    /// Takes the milestone news of an answer ([`crate::milestone::Watch::hear`]); `newer`
    /// is what [`Entry::hear`] said of the same answer. A sync answer's word is whole (no
    /// news: none pending); a read's may lag a registration, so a read without news changes
    /// nothing.
    pub fn hear_milestones(
        &mut self,
        merged: &MergedCounter,
        from_sync: bool,
        newer: bool,
        now: Timestamp,
    ) {
        if merged.milestones.is_none() && (self.watch.is_none() || !from_sync) {
            return;
        }
        let watch = self.watch.get_or_insert_default();
        watch.hear(merged.milestones.as_ref(), merged.global.p, now, newer);
    }

    /// Applies the outcome of a sync that sent `sent` for this counter (`keep_ms`: how long
    /// after a reset the row keeps its cut, `RECLAIM_AFTER_MS`).
    pub fn settle(
        &mut self,
        sent: SlotTotals,
        outcome: &Outcome<'_>,
        now: Timestamp,
        keep_ms: u64,
    ) {
        match outcome {
            Outcome::Merged(merged) => {
                self.row.acknowledge(sent);
                let newer = self.hear(merged, now);
                self.hear_milestones(merged, true, newer, now);
                if let Some(frame) = merged.frame {
                    self.row.take_frame(frame.epoch);
                }
                if let Some(cut) = merged.cut {
                    self.row.take_cut(cut, now, keep_ms);
                }
                if merged.epoch > 0 {
                    self.row.rebase(merged.epoch, merged.global, now);
                }
            }
            Outcome::Rejected(..) if self.row.state == SyncState::Dirty => {
                self.row.state = SyncState::Rejected;
            }
            Outcome::Rejected(..) | Outcome::Missing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_crdt::{CounterKey, CounterKind};

    const ME: ReplicaId = ReplicaId::from_u128(7);
    /// `RECLAIM_AFTER_MS`'s default.
    const WEEK: u64 = 604_800_000;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms)
    }

    fn merged(global: (u128, u128), recorded: (u64, u64)) -> MergedCounter {
        MergedCounter {
            key: CounterKey::new(CounterKind::Pn, "x").unwrap(),
            global: GlobalTotals {
                p: global.0,
                n: global.1,
            },
            recorded: SlotTotals {
                p: recorded.0,
                n: recorded.1,
            },
            updated_at: Some(at(5)),
            epoch: 0,
            milestones: None,
            frame: None,
            cut: None,
        }
    }

    const RULES: HitRules = HitRules {
        read_ttl_ms: 1000,
        sync_interval_ms: 1000,
        exact: true,
    };

    fn one() -> SlotTotals {
        SlotTotals { p: 1, n: 0 }
    }

    #[test]
    fn a_read_is_answered_refreshed_or_fetched_by_the_age_of_what_was_heard() {
        let mut entry = Entry::default();
        assert_eq!(
            entry.read_need(at(0), 1000, 6000),
            ReadNeed::Fetch,
            "never heard"
        );
        assert_eq!(entry.read_view(at(0)).unwrap(), None, "unknown: no answer");
        entry.hear(&merged((7, 0), (0, 0)), at(0));
        assert_eq!(entry.read_need(at(999), 1000, 6000), ReadNeed::Fresh);
        assert_eq!(entry.read_need(at(1000), 1000, 6000), ReadNeed::Refresh);
        assert_eq!(entry.read_need(at(5999), 1000, 6000), ReadNeed::Refresh);
        assert_eq!(entry.read_need(at(6000), 1000, 6000), ReadNeed::Fetch);
        assert_eq!(
            entry.read_view(at(10)).unwrap().map(|v| v.totals.p),
            Some(7)
        );
        let counted = Entry {
            stored: true,
            ..Entry::default()
        };
        assert_eq!(
            counted.read_view(at(0)).unwrap().map(|v| v.totals.p),
            Some(0),
            "a stored counter answers its own slot before anything is heard"
        );
    }

    #[test]
    fn a_planned_hit_changes_nothing_until_it_is_stored() {
        let entry = Entry::default();
        let plan = entry
            .plan_hit(CounterKind::G, one(), None, ME, at(10), RULES)
            .unwrap();
        assert_eq!(entry, Entry::default(), "the entry is untouched");
        assert_eq!(plan.row.own, one());
        assert_eq!(plan.row.state, SyncState::Dirty);
        assert_eq!(plan.slot, (ME, 1), "the hit holds unit 1 of the slot");
        assert_eq!(plan.view.totals.p, 1);
        assert_eq!(plan.view.age_ms, None, "nothing heard yet");
        assert!(plan.stale, "nothing heard: refresh");
        assert!(!plan.exact, "no milestone known");
    }

    #[test]
    fn a_planned_hit_reads_with_what_was_heard_and_knows_when_that_is_stale() {
        let mut entry = Entry::default();
        entry.hear(&merged((100, 0), (0, 0)), at(0));
        let plan = entry
            .plan_hit(CounterKind::Pn, one(), None, ME, at(500), RULES)
            .unwrap();
        assert_eq!(plan.view.totals.p, 101, "global plus the hit");
        assert!(!plan.stale, "heard 500 ms ago, TTL 1 s");
        let later = entry
            .plan_hit(CounterKind::Pn, one(), None, ME, at(1500), RULES)
            .unwrap();
        assert!(later.stale);
    }

    #[test]
    fn a_hit_near_a_milestone_takes_the_exact_path_with_its_visitor_key() {
        let mut entry = Entry::default();
        let mut news = merged((95, 0), (0, 0));
        news.key = CounterKey::new(CounterKind::G, "x").unwrap();
        news.milestones = Some(tally_crdt::MilestoneNews {
            next: Some(100),
            won: vec![],
        });
        let newer = entry.hear(&news, at(0));
        entry.hear_milestones(&news, true, newer, at(0));
        let plan = entry
            .plan_hit(CounterKind::G, one(), Some("v1".into()), ME, at(10), RULES)
            .unwrap();
        assert!(plan.exact);
        assert_eq!(plan.row.visits.len(), 1, "the key is stored with the hit");
        assert_eq!(plan.row.visits[0].end, 1);
        let no_exact = HitRules {
            exact: false,
            ..RULES
        };
        let plan = entry
            .plan_hit(
                CounterKind::G,
                one(),
                Some("v1".into()),
                ME,
                at(10),
                no_exact,
            )
            .unwrap();
        assert!(!plan.exact, "the exact path is off");
        assert!(plan.row.visits.is_empty(), "no key kept off the exact path");
        let gauge = entry
            .plan_hit(CounterKind::Pn, one(), None, ME, at(10), RULES)
            .unwrap();
        assert!(!gauge.exact, "a gauge has no N-th hit");
    }

    #[test]
    fn a_hit_past_the_slot_is_refused_and_plans_nothing() {
        let mut entry = Entry::default();
        entry.row.own.p = u64::MAX;
        let err = entry
            .plan_hit(CounterKind::G, one(), None, ME, at(1), RULES)
            .unwrap_err();
        assert!(matches!(err, Error::SlotOverflow { .. }), "{err:?}");
        assert_eq!(entry.row.own.p, u64::MAX);
    }

    #[test]
    fn hits_arriving_during_a_sync_stay_dirty() {
        let mut r = Row::default();
        r.hit(SlotTotals { p: 3, n: 0 }, ME, at(1)).unwrap();
        let sent = r.own;
        r.hit(SlotTotals { p: 2, n: 1 }, ME, at(2)).unwrap(); // during the sync
        r.acknowledge(sent);
        assert_eq!(r.acked, SlotTotals { p: 3, n: 0 });
        assert_eq!(r.state, SyncState::Dirty);
        r.acknowledge(r.own);
        assert_eq!(r.state, SyncState::Clean);
    }

    #[test]
    fn an_old_acknowledgement_never_lowers_acked() {
        let mut r = Row::default();
        r.hit(SlotTotals { p: 5, n: 0 }, ME, at(1)).unwrap();
        r.acknowledge(SlotTotals { p: 5, n: 0 });
        r.acknowledge(SlotTotals { p: 2, n: 0 });
        assert_eq!((r.acked.p, r.state), (5, SyncState::Clean));
    }

    #[test]
    fn the_read_formula_counts_own_hits_the_merger_has_not_seen() {
        let mut e = Entry::default();
        e.row.hit(SlotTotals { p: 10, n: 0 }, ME, at(1)).unwrap();
        let alone = e.view(at(2)).unwrap();
        assert_eq!(
            (alone.totals.p, alone.age_ms),
            (10, None),
            "nothing heard: own slot only"
        );
        e.hear(&merged((700, 0), (10, 0)), at(1000));
        e.row.hit(SlotTotals { p: 5, n: 2 }, ME, at(1500)).unwrap();
        let v = e.view(at(1600)).unwrap();
        assert_eq!(v.totals, GlobalTotals { p: 705, n: 2 });
        assert_eq!(v.age_ms, Some(600));
        assert_eq!(v.updated_at, Some(at(1500)));
    }

    #[test]
    fn an_older_answer_never_replaces_a_newer_one_but_refreshes_its_age() {
        let mut e = Entry::default();
        assert!(e.hear(&merged((500, 10), (0, 0)), at(10)));
        let before = e.view(at(20)).unwrap().totals;
        assert!(!e.hear(&merged((400, 10), (0, 0)), at(20)));
        assert_eq!(e.view(at(20)).unwrap().totals, before);
        assert_eq!(e.view(at(25)).unwrap().age_ms, Some(5));
        assert!(
            e.hear(&merged((500, 10), (0, 0)), at(30)),
            "the same totals refresh the age"
        );
        assert_eq!(e.view(at(30)).unwrap().age_ms, Some(0));
    }

    #[test]
    fn reads_never_go_backwards_as_answers_arrive() {
        let mut e = Entry::default();
        e.row.own = SlotTotals { p: 50, n: 0 };
        let mut last = 0;
        for (g, rec) in [(100, 0), (120, 20), (150, 50), (160, 50)] {
            e.hear(&merged((g, 0), (rec, 0)), at(1));
            let now = e.view(at(1)).unwrap().totals.p;
            assert!(now >= last, "{now} after {last}");
            last = now;
        }
    }

    #[test]
    fn an_unknown_counter_has_no_update_time() {
        let mut e = Entry::default();
        let mut absent = merged((0, 0), (0, 0));
        absent.updated_at = None;
        e.hear(&absent, at(3));
        let v = e.view(at(3)).unwrap();
        assert_eq!((v.totals, v.updated_at), (GlobalTotals::default(), None));
    }

    fn update(id: &str, p: u64) -> SlotUpdate {
        SlotUpdate {
            key: CounterKey::new(CounterKind::G, id).unwrap(),
            totals: SlotTotals { p, n: 0 },
            visits: Vec::new(),
            carried: SlotTotals::default(),
            frame: None,
            cut: None,
        }
    }

    fn answer(id: &str, global: u128, recorded: u64) -> SyncAnswer {
        SyncAnswer::Merged(MergedCounter {
            key: CounterKey::new(CounterKind::G, id).unwrap(),
            global: GlobalTotals { p: global, n: 0 },
            recorded: SlotTotals { p: recorded, n: 0 },
            updated_at: None,
            epoch: 0,
            milestones: None,
            frame: None,
            cut: None,
        })
    }

    #[test]
    fn answers_are_matched_by_counter_not_by_position() {
        let sent = [update("a", 1), update("b", 1), update("c", 1)];
        let answers = [answer("c", 30, 1), answer("a", 10, 1)];
        let got: Vec<(&str, Option<u128>)> = outcomes(&sent, &answers)
            .iter()
            .map(|(u, o)| {
                let global = match o {
                    Outcome::Merged(m) => Some(m.global.p),
                    _ => None,
                };
                (u.key.id(), global)
            })
            .collect();
        assert_eq!(got, [("a", Some(10)), ("b", None), ("c", Some(30))]);
    }

    #[test]
    fn a_rejected_counter_is_set_aside_and_the_others_are_acknowledged() {
        let sent = [update("bad", 5), update("good", 7)];
        let answers = [
            SyncAnswer::Rejected(tally_crdt::Rejection {
                key: CounterKey::new(CounterKind::G, "bad").unwrap(),
                error: tally_crdt::ErrorBody {
                    code: "decrement_on_counter".into(),
                    message: "no".into(),
                },
            }),
            answer("good", 70, 7),
        ];
        let mut entries: Vec<Entry> = sent
            .iter()
            .map(|u| {
                let mut e = Entry::default();
                e.row.hit(u.totals, ME, at(1)).unwrap();
                e
            })
            .collect();
        for ((update, outcome), entry) in outcomes(&sent, &answers).iter().zip(&mut entries) {
            entry.settle(update.totals, outcome, at(2), WEEK);
        }
        assert_eq!(
            entries[0].row.state,
            SyncState::Rejected,
            "out of the regular syncs"
        );
        assert_eq!(
            entries[0].row.acked,
            SlotTotals::default(),
            "nothing acknowledged"
        );
        assert_eq!(entries[1].row.state, SyncState::Clean);
        assert_eq!(entries[1].view(at(2)).unwrap().totals.p, 70);
    }

    #[test]
    fn a_counter_missing_from_the_answer_stays_dirty() {
        let sent = [update("a", 1)];
        let mut e = Entry::default();
        e.row.hit(SlotTotals { p: 1, n: 0 }, ME, at(1)).unwrap();
        for (u, o) in outcomes(&sent, &[]) {
            e.settle(u.totals, &o, at(2), WEEK);
        }
        assert_eq!(e.row.state, SyncState::Dirty);
    }

    /// A lineage from generation `from`.
    fn lineage(from: u64) -> Lineage {
        Lineage {
            object: ReplicaId::from_u128(5 << 32),
            from,
        }
    }

    /// A row of generation 1 that carries `carried` from generation 0, and counted nothing
    /// since.
    fn carrying(carried: u64) -> Entry {
        Entry {
            row: Row {
                generation: 1,
                carried: SlotTotals { p: carried, n: 0 },
                ..Row::default()
            },
            stored: true,
            ..Entry::default()
        }
    }

    fn in_epoch(epoch: u64, global: u128) -> MergedCounter {
        MergedCounter {
            epoch,
            ..merged((global, 0), (0, 0))
        }
    }

    #[test]
    fn a_row_keeps_its_share_of_a_reset_and_sends_it_until_the_window_closes() {
        let x = CounterKey::new(CounterKind::Pn, "x").unwrap();
        let cut = Cut {
            epoch: 2,
            deleted: true,
            at: at(10),
            totals: GlobalTotals { p: 5, n: 0 },
        };
        // Told with its sync's answer (the count since the reset is 3 here).
        let mut e = carrying(5);
        e.row.own = SlotTotals { p: 3, n: 0 };
        let answer = MergedCounter {
            cut: Some(cut),
            ..in_epoch(2, 3)
        };
        e.settle(e.row.own, &Outcome::Merged(&answer), at(20), WEEK);
        assert_eq!(e.row.cut, Some(cut));
        // An earlier epoch's, or the same again, changes nothing.
        for told in [Cut { epoch: 1, ..cut }, cut] {
            assert!(!e.row.take_cut(told, at(30), WEEK));
        }
        // Every sync sends it, across a rotation too, until a week after the reset.
        let sent = |row: &Row, ms: i64| {
            current_totals(vec![(x.clone(), row.clone())], 2, &lineage(0), at(ms), WEEK)[0].cut
        };
        assert_eq!(sent(&e.row, 20), Some(cut));
        let week = i64::try_from(WEEK).unwrap();
        assert_eq!(sent(&e.row, 10 + week - 1), Some(cut));
        assert_eq!(sent(&e.row, 10 + week), None, "the window closed");
        assert!(!e.row.clone().expire_cut(at(10 + week - 1), WEEK));
        let mut stored = e.row.clone();
        assert!(stored.expire_cut(at(10 + week), WEEK), "the sweep drops it");
        assert_eq!(stored.cut, None);
        // A cut told after its window is not taken; with no window it is kept for ever.
        let mut late = carrying(5);
        assert!(!late.row.take_cut(cut, at(10 + week), WEEK));
        assert!(late.row.take_cut(cut, at(10 + week), 0));
        let kept = current_totals(
            vec![(x.clone(), late.row.clone())],
            2,
            &lineage(0),
            at(0),
            0,
        );
        assert_eq!(kept[0].cut, Some(cut));
        let mut forever = late.row.clone();
        assert!(!forever.expire_cut(at(i64::MAX / 2), 0));
    }

    #[test]
    fn a_counter_nobody_counts_any_more_is_rebased_once_then_reclaimable() {
        let week: u64 = 604_800_000;
        let after = |ms: u64| at(10 + i64::try_from(ms).unwrap());
        let mut e = carrying(5);
        e.settle(
            SlotTotals::default(),
            &Outcome::Merged(&in_epoch(2, 0)),
            at(10),
            WEEK,
        );
        let frame = Frame {
            epoch: 2,
            reclaimed: SlotTotals { p: 5, n: 0 },
        };
        assert_eq!(e.row.frame, Some(frame));
        assert_eq!(e.row.carried, SlotTotals::default());
        assert_eq!(
            e.row.state,
            SyncState::Dirty,
            "the merger must learn the frame"
        );
        assert_eq!(
            e.row.reclaim(after(week), week),
            Reclaim::Forget,
            "not synced yet"
        );
        // The frame's sync is answered: clean, and not rebased again.
        e.settle(
            SlotTotals::default(),
            &Outcome::Merged(&in_epoch(2, 0)),
            at(20),
            WEEK,
        );
        assert_eq!((e.row.frame, e.row.state), (Some(frame), SyncState::Clean));
        let x = CounterKey::new(CounterKind::Pn, "x").unwrap();
        let sent = current_totals(vec![(x, e.row.clone())], 3, &lineage(0), at(20), WEEK);
        assert_eq!(sent[0].frame, Some(frame), "the sweep re-sends the frame");
        assert_eq!(e.row.reclaim(after(week - 1), week), Reclaim::Keep);
        assert_eq!(e.row.reclaim(after(week), week), Reclaim::Delete);
        assert_eq!(e.row.reclaim(after(week), 0), Reclaim::Keep, "0: never");
        // Counted again before that: it keeps its frame and stops re-sending what it
        // reclaimed, and rebases again only from a share of a later reset.
        let mut again = e.clone();
        again
            .row
            .hit(SlotTotals { p: 2, n: 0 }, ME, at(40))
            .unwrap();
        assert_eq!(again.row.reclaim(after(week), week), Reclaim::Forget);
        again.row.forget_reclaimed();
        let kept = Frame {
            epoch: 2,
            reclaimed: SlotTotals::default(),
        };
        assert_eq!(again.row.frame, Some(kept));
        assert_eq!(again.row.reclaim(after(2 * week), week), Reclaim::Keep);
        // Deleted again later: what it carried since is reclaimed on top.
        e.row.carried = SlotTotals { p: 3, n: 0 };
        e.settle(
            SlotTotals::default(),
            &Outcome::Merged(&in_epoch(4, 0)),
            at(30),
            WEEK,
        );
        assert_eq!(e.row.frame.map(|f| (f.epoch, f.reclaimed.p)), Some((4, 8)));
    }

    #[test]
    fn a_counter_counted_anywhere_since_or_here_now_is_not_rebased() {
        let was = carrying(5).row;
        // Counted since its reset (at this merger's word), never reset, or an older frame.
        for answer in [in_epoch(2, 1), in_epoch(0, 0)] {
            let mut e = carrying(5);
            e.settle(
                SlotTotals::default(),
                &Outcome::Merged(&answer),
                at(10),
                WEEK,
            );
            assert_eq!(e.row, was);
        }
        // A hit here in this generation, or nothing carried.
        let mut e = carrying(5);
        e.row.hit(SlotTotals { p: 1, n: 0 }, ME, at(5)).unwrap();
        e.settle(
            SlotTotals { p: 1, n: 0 },
            &Outcome::Merged(&in_epoch(2, 0)),
            at(10),
            WEEK,
        );
        assert_eq!(e.row.frame, None);
        let mut e = carrying(0);
        e.settle(
            SlotTotals::default(),
            &Outcome::Merged(&in_epoch(2, 0)),
            at(10),
            WEEK,
        );
        assert_eq!(e.row.frame, None);
    }

    #[test]
    fn a_later_frame_the_merger_holds_is_taken_up_with_what_the_row_carries() {
        let mut e = carrying(2);
        let held = Frame {
            epoch: 3,
            reclaimed: SlotTotals { p: 9, n: 0 },
        };
        let answer = MergedCounter {
            frame: Some(held),
            ..merged((11, 0), (0, 0))
        };
        e.settle(
            SlotTotals::default(),
            &Outcome::Merged(&answer),
            at(10),
            WEEK,
        );
        let taken = Frame {
            epoch: 3,
            reclaimed: SlotTotals::default(),
        };
        assert_eq!(
            e.row.frame,
            Some(taken),
            "what was reclaimed stays at the merger"
        );
        assert_eq!(e.row.carried, SlotTotals { p: 2, n: 0 });
        assert!(!e.row.take_frame(1));
        // Without its share of the next reset it does not rebase: it does not know all its
        // object carried.
        e.settle(
            SlotTotals::default(),
            &Outcome::Merged(&in_epoch(4, 0)),
            at(20),
            WEEK,
        );
        assert_eq!(e.row.frame, Some(taken));
        // Told its share (the 9 the merger reclaimed and the 2 it carries), it rebases all of
        // it, knows its carry again, and is reclaimed in its turn.
        let share = Cut {
            epoch: 5,
            deleted: true,
            at: at(30),
            totals: GlobalTotals { p: 11, n: 0 },
        };
        let answer = MergedCounter {
            cut: Some(share),
            ..in_epoch(5, 0)
        };
        e.settle(
            SlotTotals::default(),
            &Outcome::Merged(&answer),
            at(30),
            WEEK,
        );
        let rebased = Frame {
            epoch: 5,
            reclaimed: SlotTotals { p: 11, n: 0 },
        };
        assert_eq!(
            (e.row.frame, e.row.carried),
            (Some(rebased), SlotTotals::default())
        );
        e.row.acknowledge(SlotTotals::default());
        let week = i64::try_from(WEEK).unwrap();
        assert_eq!(e.row.reclaim(at(30 + week), WEEK), Reclaim::Delete);
    }

    #[test]
    fn a_row_of_an_earlier_generation_reads_as_zero_with_its_slot_carried() {
        let mut r = Row::default();
        r.hit(SlotTotals { p: 40, n: 3 }, ME, at(1)).unwrap();
        r.acknowledge(r.own);
        assert_eq!(
            r.clone().in_generation(0, &lineage(0)),
            r,
            "its own generation reads it whole"
        );
        let carried = r.clone().in_generation(1, &lineage(0));
        assert_eq!(
            carried,
            Row {
                generation: 1,
                carried: SlotTotals { p: 40, n: 3 },
                ..Row::default()
            }
        );
        // Two generations later, with a hit in between: both final slots are carried.
        let mut again = carried;
        again.hit(SlotTotals { p: 2, n: 0 }, ME, at(2)).unwrap();
        again.acknowledge(again.own);
        assert_eq!(
            again.in_generation(3, &lineage(0)).carried,
            SlotTotals { p: 42, n: 3 }
        );
        // A generation from before the lineage was retired into a region base: not carried.
        assert_eq!(
            r.in_generation(1, &lineage(1)),
            Row {
                generation: 1,
                ..Row::default()
            }
        );
    }

    #[test]
    fn visitor_keys_stay_with_the_row_until_committed_and_stay_bounded() {
        let mut r = Row::default();
        for end in 1..=40 {
            r.hit(SlotTotals { p: 1, n: 0 }, ME, at(1)).unwrap();
            let kept = r.visit(Visit {
                end,
                delta: 1,
                visitor: format!("v{end}"),
            });
            assert_eq!(kept, end <= 32, "the first 32 are kept, the others refused");
        }
        assert_eq!(r.visits.len(), MAX_VISITS_PER_COUNTER);
        // Every sync of the row carries them, the sweep's too.
        let key = CounterKey::new(CounterKind::G, "a").unwrap();
        let sent = current_totals(vec![(key, r.clone())], 0, &lineage(0), at(20), WEEK);
        assert_eq!(sent[0].visits, r.visits);
        r.acknowledge(SlotTotals { p: 30, n: 0 });
        assert_eq!(r.visits.iter().map(|v| v.end).min(), Some(31));
        r.hit(SlotTotals { p: 1, n: 0 }, ME, at(2)).unwrap();
        assert!(r.visit(Visit {
            end: 41,
            delta: 1,
            visitor: "v41".into()
        }));
        r.acknowledge(r.own);
        assert!(r.visits.is_empty(), "all committed");
    }

    #[test]
    fn a_carry_takes_only_what_the_merger_acknowledged() {
        let mut r = Row::default();
        r.hit(SlotTotals { p: 5, n: 0 }, ME, at(1)).unwrap();
        r.acknowledge(SlotTotals { p: 3, n: 0 });
        r.state = SyncState::Rejected;
        assert_eq!(
            r.in_generation(1, &lineage(0)).carried,
            SlotTotals { p: 3, n: 0 }
        );
    }

    #[test]
    fn a_hit_on_a_row_of_an_earlier_generation_starts_the_new_slot_from_zero() {
        let mut old = Row::default();
        old.hit(SlotTotals { p: 40, n: 0 }, ME, at(1)).unwrap();
        old.acknowledge(old.own);
        let mut r = old.in_generation(1, &lineage(0));
        r.hit(SlotTotals { p: 1, n: 0 }, ME, at(2)).unwrap();
        assert_eq!(
            (r.own, r.acked, r.state, r.generation),
            (
                SlotTotals { p: 1, n: 0 },
                SlotTotals::default(),
                SyncState::Dirty,
                1
            ),
            "the new incarnation sends 1, not 41: the 40 are in the old, final slot"
        );
    }

    #[test]
    fn syncs_and_the_sweep_send_the_current_incarnations_slots_and_the_carries() {
        let row = |p, generation| Row {
            own: SlotTotals { p, n: 0 },
            acked: SlotTotals { p, n: 0 },
            generation,
            ..Row::default()
        };
        let key = |id| CounterKey::new(CounterKind::G, id).unwrap();
        let page = vec![
            (key("a"), row(40, 0)),
            (key("b"), row(2, 1)),
            (key("c"), row(9, 0)),
        ];
        let update = |id, p, carried| SlotUpdate {
            key: key(id),
            totals: SlotTotals { p, n: 0 },
            visits: Vec::new(),
            carried: SlotTotals { p: carried, n: 0 },
            frame: None,
            cut: None,
        };
        assert_eq!(
            current_totals(page.clone(), 1, &lineage(0), at(20), WEEK),
            [update("a", 0, 40), update("b", 2, 0), update("c", 0, 9)],
            "generation 0's final slots go as carries, never under the new id"
        );
        assert_eq!(
            current_totals(page.clone(), 1, &lineage(1), at(20), WEEK),
            [update("b", 2, 0)],
            "a generation from before the lineage has nothing to send"
        );
        assert_eq!(
            current_totals(
                vec![page[0].clone(), page[2].clone()],
                0,
                &lineage(0),
                at(20),
                WEEK
            ),
            [update("a", 40, 0), update("c", 9, 0)]
        );
    }

    #[test]
    fn a_rotated_entry_answers_what_it_answered_before() {
        let mut e = Entry::default();
        e.row.hit(SlotTotals { p: 30, n: 4 }, ME, at(1)).unwrap();
        e.hear(&merged((700, 20), (25, 4)), at(10)); // heard before the last sync
        e.row.acknowledge(e.row.own);
        let before = e.view(at(20)).unwrap();
        assert!(e.rotate(1, &lineage(0)));
        assert_eq!(
            e.row,
            Row {
                generation: 1,
                carried: SlotTotals { p: 30, n: 4 },
                ..Row::default()
            }
        );
        let after = e.view(at(20)).unwrap();
        assert_eq!(after.totals, before.totals);
        assert_eq!(after.totals, GlobalTotals { p: 705, n: 20 });
        assert_eq!(after.age_ms, before.age_ms);
        // A hit of the new incarnation adds to it, as the read formula does.
        e.row.hit(SlotTotals { p: 2, n: 0 }, ME, at(30)).unwrap();
        assert_eq!(e.view(at(30)).unwrap().totals.p, 707);
    }

    #[test]
    fn a_rotated_entry_takes_the_mergers_next_answer() {
        let mut e = Entry::default();
        e.row.hit(SlotTotals { p: 30, n: 0 }, ME, at(1)).unwrap();
        e.hear(&merged((700, 0), (25, 0)), at(10));
        e.row.acknowledge(e.row.own);
        assert!(e.rotate(1, &lineage(0)));
        // The merger now: the old slot final at 30, others grew by 8; the new slot is empty.
        assert!(e.hear(&merged((713, 0), (0, 0)), at(40)));
        assert_eq!(e.view(at(40)).unwrap().totals.p, 713);
    }

    #[test]
    fn a_rotated_entry_leaves_out_what_the_merger_refused() {
        let mut e = Entry::default();
        e.row.hit(SlotTotals { p: 10, n: 0 }, ME, at(1)).unwrap();
        e.row.acknowledge(e.row.own);
        e.hear(&merged((100, 0), (10, 0)), at(2));
        e.row.hit(SlotTotals { p: 5, n: 0 }, ME, at(3)).unwrap();
        e.row.state = SyncState::Rejected;
        assert!(e.rotate(1, &lineage(0)));
        assert_eq!(
            e.view(at(4)).unwrap().totals.p,
            100,
            "the old slot is final at what the merger took"
        );
    }

    #[test]
    fn an_entry_with_nothing_heard_is_dropped_at_rotation() {
        let mut e = Entry::default();
        e.row.hit(SlotTotals { p: 3, n: 0 }, ME, at(1)).unwrap();
        assert!(!e.rotate(1, &lineage(0)));
    }

    #[test]
    fn overflow_is_refused_and_changes_nothing() {
        let mut r = Row::default();
        r.hit(SlotTotals { p: u64::MAX, n: 0 }, ME, at(1)).unwrap();
        let before = r.clone();
        assert!(matches!(
            r.hit(SlotTotals { p: 1, n: 0 }, ME, at(2)),
            Err(Error::SlotOverflow { .. })
        ));
        assert_eq!(r, before);
    }
}
