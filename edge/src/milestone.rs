//! The exact path near a milestone (docs/milestones.md), as pure functions.
//!
//! The merger decides every milestone: the hit whose unit gets ordinal N in its commit order
//! wins. Far from a milestone an object counts and syncs on its alarm as always, and a
//! winner finds out with its receipt. Its sync answers tell the object about the counter's
//! milestones ([`MilestoneNews`]): the next one pending and those won lately. From them and
//! the counter's observed rate the object knows when the count is within a margin of the
//! next milestone ([`Watch::near`]); a hit then takes the **exact path**: it syncs its
//! counter at once and answers only when the merger has committed it, telling its client
//! whether it won ([`Watch::verdict`]). Visitor keys are kept only on that path, stored with
//! the hit's row ([`crate::counter::Row::visit`]), and travel with the syncs until the merger
//! has committed their hits.

use serde::{Deserialize, Serialize};
use tally_crdt::{MilestoneNews, MilestoneWon, ReplicaId, Timestamp};

/// The smallest margin, in hits: a slow counter takes the exact path for its last hits
/// before a milestone, whatever its rate says.
pub const MIN_MARGIN: u128 = 32;
/// The largest margin, in hits: however fast a counter counts, at most this many of its hits
/// before a milestone take the exact path (each one waits for a merger commit), so the exact
/// path's cost is bounded by the distance to the milestone, not by the rate. A counter faster
/// than this over the margin's window may cross the milestone before its objects are near;
/// the winner is then decided exactly all the same and told by its receipt.
pub const MAX_MARGIN: u128 = 1024;
/// The margin while the object has not measured the counter's rate yet (its first half
/// second of answers): wide, so that a busy counter is not caught unprepared.
pub const UNMEASURED_MARGIN: u128 = 256;
/// How long a hit may wait at another object when that object's sync is lost: the first
/// retry's backoff is at most this ([`crate::scheduler::backoff_ms`]).
const RETRY_MS: u64 = 1000;
/// A rate is measured over at least this long.
const RATE_WINDOW_MS: u64 = 500;
/// Winners kept per counter (the news of the last minute holds at most a few).
const MAX_WON: usize = 16;

/// What an object knows of one counter's milestones; in memory only, with its cache entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watch {
    /// The lowest milestone pending, as the last sync answer said.
    pub next: Option<u64>,
    /// Milestones heard won, by N.
    pub won: Vec<MilestoneWon>,
    /// The counter's global increments per second, times 1000, smoothed; `None` until a
    /// first window is measured.
    pub rate_milli: Option<u64>,
    /// Where the rate is measured from: a time and the global increments then.
    anchor: Option<(Timestamp, u128)>,
}

/// How a hit on the exact path ended, as its `PUT` answer says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Verdict {
    /// The hit holds the unit that got ordinal `n`: it won.
    Won {
        /// The milestone.
        n: u64,
        /// Its label.
        label: Option<String>,
    },
    /// The merger committed the hit, and it won no milestone.
    Lost,
    /// The merger did not answer in time: the hit is counted, and its receipt tells later.
    Pending,
}

impl Verdict {
    /// The `Tally-Milestone` header's value.
    pub fn header(&self) -> &'static str {
        match self {
            Verdict::Won { .. } => "won",
            Verdict::Lost => "lost",
            Verdict::Pending => "pending",
        }
    }
}

impl Watch {
    /// Takes the news of a sync answer that saw the counter's global increments at
    /// `global_p`, at `now`. Winners accumulate (a winner stays one), from every answer.
    /// `next` and the rate come only from an answer at least as `newer` as any heard before
    /// ([`crate::counter::Entry::hear`] decides): a late answer (delayed, or duplicated on
    /// the way) names an earlier `next`, maybe one this object has since heard won, and
    /// taking it would leave the counter with no milestone pending until the next answer,
    /// its hits off the exact path. `next` is then the answer's, unless this object already
    /// heard that one won.
    pub fn hear(
        &mut self,
        news: Option<&MilestoneNews>,
        global_p: u128,
        now: Timestamp,
        newer: bool,
    ) {
        let news = news.cloned().unwrap_or_default();
        for w in news.won {
            if !self.won.iter().any(|have| have.n == w.n) {
                self.won.push(w);
            }
        }
        self.won.sort_by_key(|w| w.n);
        if self.won.len() > MAX_WON {
            self.won.drain(..self.won.len() - MAX_WON);
        }
        if !newer {
            return;
        }
        self.next = news.next.filter(|n| !self.won.iter().any(|w| w.n == *n));
        match self.anchor {
            Some((t, p)) if now.millis_since(t) >= RATE_WINDOW_MS && global_p >= p => {
                let ms = u128::from(now.millis_since(t));
                let sample = u64::try_from((global_p - p) * 1_000_000 / ms).unwrap_or(u64::MAX);
                // Half the old rate, half the new: a burst shows within two windows.
                self.rate_milli = Some(self.rate_milli.map_or(sample, |r| r / 2 + sample / 2));
                self.anchor = Some((now, global_p));
            }
            Some((_, p)) if global_p < p => self.anchor = Some((now, global_p)), // a reset
            Some(_) => {}
            None => self.anchor = Some((now, global_p)),
        }
    }

    /// Whether a count estimated at `estimate`, from a global value heard `age_ms` ago, is
    /// within the margin of the next milestone: what the counter may have gained since it
    /// was heard, and what the other replicas may hold unsynced, at the observed rate, over
    /// the age plus two sync intervals plus one retry after a lost sync (at least
    /// [`MIN_MARGIN`], at most [`MAX_MARGIN`]; [`UNMEASURED_MARGIN`] before the rate is
    /// known).
    pub fn near(&self, estimate: u128, age_ms: u64, sync_interval_ms: u64) -> bool {
        let Some(next) = self.next else { return false };
        let window = u128::from(age_ms) + u128::from(sync_interval_ms) * 2 + u128::from(RETRY_MS);
        let margin = match self.rate_milli {
            Some(rate) => (u128::from(rate) * window / 1_000_000).clamp(MIN_MARGIN, MAX_MARGIN),
            None => UNMEASURED_MARGIN,
        };
        estimate.saturating_add(margin) >= u128::from(next)
    }

    /// The verdict on the hit holding units `end - delta + 1 ..= end` of `replica`'s slot,
    /// once the merger has committed the slot up to `acked_p`: `None` while it has not.
    /// Every milestone the hit could have won was decided in the commit that ordered its
    /// units, and that commit's answer (or a later one, for a minute) names it.
    pub fn verdict(
        &self,
        replica: ReplicaId,
        end: u64,
        delta: u64,
        acked_p: u64,
    ) -> Option<Verdict> {
        if acked_p < end {
            return None;
        }
        let first = end.saturating_sub(delta).saturating_add(1);
        Some(
            self.won
                .iter()
                .find(|w| w.replica == replica && (first..=end).contains(&w.unit))
                .map_or(Verdict::Lost, |w| Verdict::Won {
                    n: w.n,
                    label: w.label.clone(),
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: ReplicaId = ReplicaId::from_u128(7);
    const OTHER: ReplicaId = ReplicaId::from_u128(9);

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms)
    }

    fn won(n: u64, replica: ReplicaId, unit: u64) -> MilestoneWon {
        MilestoneWon {
            n,
            label: Some(format!("prize {n}")),
            replica,
            unit,
        }
    }

    fn news(next: Option<u64>, won: Vec<MilestoneWon>) -> MilestoneNews {
        MilestoneNews { next, won }
    }

    #[test]
    fn near_means_within_the_rate_over_two_intervals() {
        let mut w = Watch::default();
        assert!(!w.near(1_000_000, 0, 1000), "no milestone, never near");
        w.hear(Some(&news(Some(10_000), vec![])), 0, at(0), true);
        assert!(w.near(9_744, 0, 2000), "rate unknown: a wide margin");
        assert!(!w.near(9_743, 0, 2000));
        // 200 hits in the first second; then 0 in the next: smoothed to 100 a second, a
        // margin of (2 × 2 s + 1 s) × 100.
        w.hear(Some(&news(Some(10_000), vec![])), 200, at(1_000), true);
        assert_eq!(w.rate_milli, Some(200_000));
        w.hear(Some(&news(Some(10_000), vec![])), 200, at(2_000), true);
        assert_eq!(w.rate_milli, Some(100_000));
        assert!(!w.near(9_499, 0, 2000));
        assert!(w.near(9_500, 0, 2000));
        // Heard a second ago: another second's worth of hits may have happened since.
        assert!(!w.near(9_399, 1000, 2000));
        assert!(w.near(9_400, 1000, 2000));
        // A fast counter (2,000 a second: a margin of 10,000 by the rate) is near for its
        // last MAX_MARGIN hits only.
        let mut fast = Watch::default();
        fast.hear(Some(&news(Some(50_000), vec![])), 0, at(0), true);
        fast.hear(Some(&news(Some(50_000), vec![])), 2_000, at(1_000), true);
        assert!(!fast.near(50_000 - MAX_MARGIN - 1, 0, 2000));
        assert!(fast.near(50_000 - MAX_MARGIN, 0, 2000));
        // A slow counter is near for its last MIN_MARGIN hits.
        let mut slow = Watch::default();
        slow.hear(Some(&news(Some(100), vec![])), 50, at(0), true);
        slow.hear(Some(&news(Some(100), vec![])), 51, at(1000), true);
        assert!(!slow.near(67, 0, 2000));
        assert!(slow.near(68, 0, 2000));
    }

    #[test]
    fn winners_stay_and_a_won_milestone_is_never_next_again() {
        let mut w = Watch::default();
        w.hear(Some(&news(Some(20), vec![won(10, ME, 4)])), 15, at(0), true);
        // An older answer still calls 10 pending: it stays won, and next is not 10.
        w.hear(Some(&news(Some(10), vec![])), 9, at(10), true);
        assert_eq!(w.won.len(), 1);
        assert_eq!(w.next, None);
        w.hear(None, 25, at(20), true);
        assert_eq!((w.next, w.won.len()), (None, 1), "no news: nothing pending");
    }

    #[test]
    fn a_late_answer_leaves_next_and_the_rate_alone() {
        let mut w = Watch::default();
        w.hear(Some(&news(Some(500), vec![])), 400, at(0), true);
        w.hear(
            Some(&news(Some(540), vec![won(500, ME, 4)])),
            510,
            at(1000),
            true,
        );
        let rate = w.rate_milli;
        // An earlier sync's answer, delayed on the way: it still calls 500 next, which this
        // object heard won. Taken, it left the counter with nothing pending.
        w.hear(Some(&news(Some(500), vec![])), 450, at(1100), false);
        assert_eq!(w.next, Some(540), "still watching 540");
        assert_eq!(w.rate_milli, rate);
        assert!(w.near(520, 0, 300));
        // Its winners still count.
        w.hear(
            Some(&news(Some(500), vec![won(480, ME, 2)])),
            450,
            at(1200),
            false,
        );
        assert_eq!(w.won.len(), 2);
    }

    #[test]
    fn the_verdict_waits_for_the_commit_and_names_only_the_holder() {
        let mut w = Watch::default();
        w.hear(Some(&news(None, vec![won(100, ME, 42)])), 100, at(0), true);
        assert_eq!(w.verdict(ME, 43, 2, 42), None, "not committed up to 43 yet");
        assert_eq!(
            w.verdict(ME, 43, 2, 43),
            Some(Verdict::Won {
                n: 100,
                label: Some("prize 100".into())
            })
        );
        assert_eq!(w.verdict(ME, 41, 1, 50), Some(Verdict::Lost));
        assert_eq!(w.verdict(ME, 44, 2, 50), Some(Verdict::Lost), "units 43-44");
        assert_eq!(w.verdict(OTHER, 42, 1, 50), Some(Verdict::Lost));
    }
}
