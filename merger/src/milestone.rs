//! Milestones: "the N-th hit of this counter", decided exactly once (docs/milestones.md).
//!
//! Every unit of every slot of a counter gets one global ordinal, in the merger's commit
//! order: a commit that takes the count from `T` to `T + k` gives ordinals `T + 1 ..= T + k`
//! to the `k` units it adds, slot by slot in replica id order, and within a slot in unit
//! order. A slot only grows, and each unit of it belongs to exactly one hit (the edge's
//! [`Receipt`](tally_crdt::Receipt)), so every ordinal from 1 to the final count names
//! exactly one counted hit, and a replayed, duplicated or reordered sync (which adds no
//! unit) names none. The milestone `N` is won by the hit holding the unit that gets ordinal
//! `N`; the store decides it in the transaction of the commit that crosses `N`
//! ([`decide`]), under a per-counter lock, so no restart, replay or second merger can decide
//! it again.
//!
//! This module holds the pure parts: the records and the decision.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use foldhash::HashMap;

use tally_crdt::{
    CounterKind, CounterState, MilestoneNews, MilestoneWon, ReplicaId, SlotTotals, Timestamp,
};

use crate::rows::{CarryRow, SlotRow, StoredCounter};

/// Most pending milestones one counter holds (won ones do not count: each was registered
/// by an admin and decided once).
pub const MAX_MILESTONES_PER_COUNTER: usize = 100;
/// Longest label, in characters.
pub const MAX_LABEL_LEN: usize = 200;

/// One slot's growth in a commit: its units `from + 1 ..= to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    /// The slot's replica.
    pub replica: ReplicaId,
    /// Its total before the commit.
    pub from: u64,
    /// Its total after.
    pub to: u64,
}

/// A milestone won in a commit: its hit holds `unit` of `replica`'s slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The milestone.
    pub n: u64,
    /// The replica of the winning hit.
    pub replica: ReplicaId,
    /// The unit of its slot that got ordinal `n`.
    pub unit: u64,
    /// The winning hit's visitor key, if the commit carried one for it (filled by the
    /// store from the batch's visits; [`decide`] leaves it `None`).
    pub visitor: Option<String>,
}

/// The milestones among `pending` that a commit taking the count from `before` by
/// `advances` crosses, and the hit that wins each. `advances` may come in any order and
/// name a slot more than once (the larger growth counts, as the merge keeps the max);
/// slots that did not grow add no ordinal.
pub fn decide(before: u128, advances: &[Advance], pending: &[u64]) -> Vec<Decision> {
    let mut grown: Vec<Advance> = Vec::with_capacity(advances.len());
    let mut sorted = advances.to_vec();
    sorted.sort_by_key(|a| (a.replica, a.from));
    for a in sorted {
        match grown.last_mut() {
            Some(last) if last.replica == a.replica => {
                last.from = last.from.min(a.from);
                last.to = last.to.max(a.to);
            }
            _ => grown.push(a),
        }
    }
    let mut targets: Vec<u64> = pending
        .iter()
        .copied()
        .filter(|&n| u128::from(n) > before)
        .collect();
    targets.sort_unstable();
    targets.dedup();
    let mut decisions = Vec::new();
    let mut next = targets.into_iter().peekable();
    let mut count = before;
    for a in grown.iter().filter(|a| a.to > a.from) {
        let added = u128::from(a.to - a.from);
        while let Some(&n) = next.peek() {
            let n_wide = u128::from(n);
            if n_wide > count + added {
                break;
            }
            let offset = u64::try_from(n_wide - count).expect("at most the slot's growth");
            decisions.push(Decision {
                n,
                replica: a.replica,
                unit: a.from + offset,
                visitor: None,
            });
            next.next();
        }
        count += added;
    }
    decisions
}

/// A milestone as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Milestone {
    /// The ordinal that wins.
    pub n: u64,
    /// What it is for.
    pub label: Option<String>,
    /// When it was registered.
    pub created_at: Timestamp,
    /// Its winner, once decided.
    pub winner: Option<Winner>,
    /// When the webhook acknowledged its announcement.
    pub announced_at: Option<Timestamp>,
}

/// A won milestone to announce: its counter, the milestone, and how many tries so far
/// (this one included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The counter's id.
    pub id: String,
    /// The milestone, won.
    pub milestone: Milestone,
    /// Deliveries tried, this one included.
    pub attempts: u32,
}

/// The hit that was the N-th.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Winner {
    /// The replica that counted it.
    pub replica: ReplicaId,
    /// The unit of that replica's slot that got ordinal N.
    pub unit: u64,
    /// When the commit that decided it was made.
    pub at: Timestamp,
    /// The visitor key the hit carried, if its counter was near the milestone then.
    pub visitor: Option<String>,
}

/// A milestone as a commit or the news look at it: pending, or won (recently).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// The milestone.
    pub n: u64,
    /// Its label.
    pub label: Option<String>,
    /// Its winning unit, once won.
    pub won: Option<(ReplicaId, u64)>,
}

/// A counter's news from its watched milestones (`won_now` answers the winner of one the
/// commit at hand decided): the lowest still pending, and those won, by N.
pub fn news(rows: &[Watched], won_now: impl Fn(u64) -> Option<(ReplicaId, u64)>) -> MilestoneNews {
    let mut news = MilestoneNews::default();
    for w in rows {
        match w.won.or_else(|| won_now(w.n)) {
            Some((replica, unit)) => news.won.push(MilestoneWon {
                n: w.n,
                label: w.label.clone(),
                replica,
                unit,
            }),
            None => news.next = Some(news.next.map_or(w.n, |m: u64| m.min(w.n))),
        }
    }
    news.won.sort_by_key(|w| w.n);
    news
}

/// How long a won milestone stays in its counter's news, so that the edge object holding
/// the winning hit hears it even when the answer of the deciding commit was lost.
pub const NEWS_WINDOW_MS: u64 = 60_000;

/// The latest milestone news of the counters that have any, as this merger last learned it
/// (from a commit of the counter, or a registration or cancel here), for a minute after.
///
/// Sync answers carry the news their commit computed; reads (which touch no store) carry
/// this board's, so that an edge object hears of a milestone from its first read of the
/// counter. A counter on the board also has its repeated syncs committed (not skipped as
/// already held), so every sync answer of it carries the news. With several mergers a board
/// may lag another merger's registration or decision until its own next commit of the
/// counter: the edge then takes the exact path too early or too late, never wrongly.
///
/// It lives in the state cache, under its one lock ([`crate::state::Db::post_news`],
/// [`crate::state::Held::news`]).
#[derive(Debug, Default)]
pub struct NewsBoard {
    posted: HashMap<String, (Timestamp, MilestoneNews)>,
}

/// The board as it stands at one time.
pub struct NewsView<'a> {
    posted: &'a HashMap<String, (Timestamp, MilestoneNews)>,
    now: Timestamp,
}

impl NewsView<'_> {
    /// The news of counter `id`, if posted in the last [`NEWS_WINDOW_MS`].
    pub fn get(&self, id: &str) -> Option<MilestoneNews> {
        self.live(id).cloned()
    }

    /// Whether counter `id` has news.
    pub fn has(&self, id: &str) -> bool {
        self.live(id).is_some()
    }

    fn live(&self, id: &str) -> Option<&MilestoneNews> {
        self.posted
            .get(id)
            .filter(|(until, _)| *until > self.now)
            .map(|(_, news)| news)
    }
}

impl NewsBoard {
    /// The board at `now`.
    pub fn view(&self, now: Timestamp) -> NewsView<'_> {
        NewsView {
            posted: &self.posted,
            now,
        }
    }

    /// Posts what a commit at `at` computed (expired entries go).
    pub fn post(&mut self, at: Timestamp, news: &BTreeMap<String, MilestoneNews>) {
        let until = at.plus_ms(NEWS_WINDOW_MS);
        let posted = &mut self.posted;
        posted.retain(|_, (t, _)| *t > at);
        for (id, n) in news {
            if n.next.is_some() || !n.won.is_empty() {
                posted.insert(id.clone(), (until, n.clone()));
            } else {
                posted.remove(id);
            }
        }
    }

    /// Posts the news of counter `id` from its whole list of milestones, at `at`.
    pub fn post_list(&mut self, id: &str, milestones: &[Milestone], at: Timestamp) {
        let since = at.minus_ms(NEWS_WINDOW_MS);
        let rows: Vec<Watched> = milestones
            .iter()
            .filter(|m| m.winner.as_ref().is_none_or(|w| w.at >= since))
            .map(|m| Watched {
                n: m.n,
                label: m.label.clone(),
                won: m.winner.as_ref().map(|w| (w.replica, w.unit)),
            })
            .collect();
        let news = news(&rows, |_| None);
        self.post(at, &BTreeMap::from([(id.to_owned(), news)]));
    }
}

/// The milestones a commit looks at, by counter id.
pub type Watch = BTreeMap<String, Vec<Watched>>;

/// The Ns of the pending milestones, by counter id ([`pending_of`]).
pub type Pending = BTreeMap<String, Vec<u64>>;

/// The pending milestones of `watch`, by counter id (counters with none left out).
pub fn pending_of(watch: &Watch) -> Pending {
    watch
        .iter()
        .filter_map(|(id, rows)| {
            let ns: Vec<u64> = rows
                .iter()
                .filter(|w| w.won.is_none())
                .map(|w| w.n)
                .collect();
            (!ns.is_empty()).then(|| (id.clone(), ns))
        })
        .collect()
}

/// What the sync answers of a commit tell about each watched counter
/// ([`news`]), with the milestones this very commit decided.
pub fn news_of(watch: &Watch, decided: &[(String, Decision)]) -> BTreeMap<String, MilestoneNews> {
    watch
        .iter()
        .map(|(id, rows)| {
            let now_won = |n: u64| {
                decided
                    .iter()
                    .find(|(i, d)| i == id && d.n == n)
                    .map(|(_, d)| (d.replica, d.unit))
            };
            (id.clone(), news(rows, now_won))
        })
        .collect()
}

/// What registering a milestone did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddMilestone {
    /// Registered.
    Added(Milestone),
    /// The counter has a milestone at this N already: nothing changed.
    Exists(Milestone),
    /// The count is at N or beyond: that hit has happened.
    Passed {
        /// The count now.
        count: u128,
    },
    /// The counter has [`MAX_MILESTONES_PER_COUNTER`]
    /// pending milestones already (won ones do not count).
    TooMany,
}

/// Why milestone `n` cannot be registered on a counter with `existing` milestones and
/// count `count`, if it cannot: the rules of
/// [`MilestoneStore::add_milestone`](crate::store::MilestoneStore::add_milestone), for both
/// backends.
pub fn refuse_milestone(existing: &[Milestone], n: u64, count: u128) -> Option<AddMilestone> {
    if let Some(m) = existing.iter().find(|m| m.n == n) {
        return Some(AddMilestone::Exists(m.clone()));
    }
    let pending = existing.iter().filter(|m| m.winner.is_none()).count();
    if pending >= MAX_MILESTONES_PER_COUNTER {
        return Some(AddMilestone::TooMany);
    }
    (count >= u128::from(n)).then_some(AddMilestone::Passed { count })
}

/// What a cancel did, from the rows it deleted and the milestone `n` as it stands after.
pub fn cancel_outcome(n: u64, deleted: u64, after: Option<Milestone>) -> CancelMilestone {
    match (deleted, after) {
        (0, Some(m)) => CancelMilestone::Decided(m),
        (0, None) => CancelMilestone::Unknown,
        (_, _) => CancelMilestone::Cancelled(Milestone {
            n,
            label: None,
            created_at: Timestamp::EPOCH,
            winner: None,
            announced_at: None,
        }),
    }
}

/// What cancelling a milestone did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelMilestone {
    /// Cancelled: it will not be decided.
    Cancelled(Milestone),
    /// It was decided already: a winner stays a winner.
    Decided(Milestone),
    /// No milestone at this N.
    Unknown,
}

/// The milestones of `pending` that a commit of `incoming` slots into `before` (the counter
/// as it stood before the commit) decides. Only the increments count (milestones are for
/// counters, kind `g`); a slot in a carry or a base is final and adds none.
pub fn decide_commit(
    before: &CounterState,
    incoming: impl IntoIterator<Item = (ReplicaId, SlotTotals)>,
    pending: &[u64],
) -> Vec<Decision> {
    let advances: Vec<Advance> = incoming
        .into_iter()
        .filter(|(replica, _)| !before.is_retired(*replica))
        .map(|(replica, totals)| {
            let from = before.slot(replica).p;
            Advance {
                replica,
                from,
                to: totals.p.max(from),
            }
        })
        .collect();
    decide(before.value().p, &advances, pending)
}

/// What a commit of `slots` and `carries` decides, for each counter with `pending`
/// milestones as it stood before the commit (`before`, from the store's
/// [`watched_keys`](crate::store::watched_keys)): both backends' commits. The carries join
/// first: they are hits of incarnations before the senders', and a milestone they carry the
/// count past was counted before (by an incarnation this store no longer knows the slot of)
/// and is not decided here.
pub fn decide_batch<S: Borrow<SlotRow>>(
    pending: &Pending,
    before: &[StoredCounter],
    slots: &[S],
    carries: &[CarryRow],
) -> Vec<(String, Decision)> {
    let mut decided = Vec::new();
    for (id, ns) in pending {
        let mine: Vec<&SlotRow> = slots
            .iter()
            .map(Borrow::borrow)
            .filter(|s: &&SlotRow| s.key.kind() == CounterKind::G && s.key.id() == id)
            .collect();
        let mut stood = before
            .iter()
            .find(|c| c.key.id() == id)
            .map(StoredCounter::state)
            .unwrap_or_default();
        for c in carries
            .iter()
            .filter(|c| c.key.kind() == CounterKind::G && c.key.id() == id)
        {
            stood.merge_carry(c.object, &c.carry);
        }
        let incoming = mine.iter().map(|s| (s.replica, s.totals));
        decided.extend(
            decide_commit(&stood, incoming, ns)
                .into_iter()
                .map(|mut d| {
                    d.visitor = mine
                        .iter()
                        .filter(|s| s.replica == d.replica)
                        .flat_map(|s| &s.visits)
                        .find(|v| v.holds(d.unit))
                        .map(|v| v.visitor.clone());
                    (id.clone(), d)
                }),
        );
    }
    decided
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(n: u128) -> ReplicaId {
        ReplicaId::from_u128(n)
    }

    fn adv(replica: u128, from: u64, to: u64) -> Advance {
        Advance {
            replica: r(replica),
            from,
            to,
        }
    }

    #[test]
    fn the_crossing_unit_wins_in_replica_order() {
        // Count 10; replica 2 grows by 3 (ordinals 11-13), then replica 5 by 4 (14-17).
        let got = decide(10, &[adv(5, 0, 4), adv(2, 7, 10)], &[12, 14, 17, 18, 3]);
        assert_eq!(
            got,
            [
                Decision {
                    n: 12,
                    replica: r(2),
                    unit: 9,
                    visitor: None
                },
                Decision {
                    n: 14,
                    replica: r(5),
                    unit: 1,
                    visitor: None
                },
                Decision {
                    n: 17,
                    replica: r(5),
                    unit: 4,
                    visitor: None
                },
            ]
        );
    }

    #[test]
    fn a_replay_adds_no_ordinal_and_decides_nothing() {
        assert!(decide(10, &[adv(2, 7, 7)], &[11]).is_empty());
        assert!(decide(u128::from(u64::MAX), &[], &[u64::MAX]).is_empty());
    }

    #[test]
    fn a_slot_named_twice_grows_once() {
        let got = decide(0, &[adv(1, 0, 5), adv(1, 0, 3)], &[5, 6]);
        assert_eq!(
            got,
            [Decision {
                n: 5,
                replica: r(1),
                unit: 5,
                visitor: None
            }]
        );
    }

    proptest! {
        /// Cutting the same growth into commits any way gives every ordinal to exactly one
        /// unit: the winners are the same whichever way the hits were batched, as long as
        /// each batch is applied in order.
        #[test]
        fn every_ordinal_names_one_unit(
            grows in proptest::collection::vec((0u128..4, 1u64..20), 1..40),
            cuts in proptest::collection::vec(any::<bool>(), 40),
        ) {
            // The hits, in commit order, each adding to one replica's slot.
            let mut slots = [0u64; 4];
            let mut count = 0u128;
            let mut owner = Vec::new(); // ordinal - 1 -> (replica, unit)
            let mut batch: Vec<Advance> = Vec::new();
            let mut before = 0u128;
            let mut decided = Vec::new();
            let total: u64 = grows.iter().map(|g| g.1).sum();
            let pending: Vec<u64> = (1..=total).collect();
            for (i, (replica, d)) in grows.iter().enumerate() {
                let idx = usize::try_from(*replica).unwrap();
                let from = slots[idx];
                slots[idx] += d;
                batch.push(adv(*replica, from, slots[idx]));
                count += u128::from(*d);
                if cuts[i] || i + 1 == grows.len() {
                    // Ordinals of this commit, in replica order.
                    let mut grown: Vec<Advance> = Vec::new();
                    let mut sorted = batch.clone();
                    sorted.sort_by_key(|a| a.replica);
                    for a in sorted {
                        match grown.last_mut() {
                            Some(l) if l.replica == a.replica => l.to = a.to,
                            _ => grown.push(a),
                        }
                    }
                    for a in &grown {
                        for unit in a.from + 1..=a.to {
                            owner.push((a.replica, unit));
                        }
                    }
                    decided.extend(decide(before, &batch, &pending));
                    before = count;
                    batch.clear();
                }
            }
            prop_assert_eq!(decided.len(), owner.len());
            for d in decided {
                let i = usize::try_from(d.n - 1).unwrap();
                prop_assert_eq!((d.replica, d.unit), owner[i]);
            }
        }
    }
}
