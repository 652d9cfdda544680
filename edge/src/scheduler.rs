//! The one owner of a Durable Object's one alarm.
//!
//! A Durable Object has a single alarm; everything an object does in the background goes
//! through this scheduler, which keeps, per kind of work ([`Job`]), when it is next due, and
//! tells the object when the alarm must move. Each time the alarm fires the object takes the
//! due jobs ([`Scheduler::take_due`]) and runs **one pass** of each: a sync pass sends a
//! snapshot of the dirty set and then waits a full sync interval before the next, however
//! busy the object is; a failure re-arms that job with capped exponential backoff.
//!
//! Pure bookkeeping, no runtime calls, so it is tested natively; each object (`object.rs`) does the
//! alarm calls it asks for.

use tally_crdt::Timestamp;

/// Work an object does on its alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Send the dirty counters' totals to the merger.
    Sync,
    /// Fetch the global totals of stale cached counters (reads asked for them).
    Refresh,
    /// Anti-entropy: re-send every counter's totals, a batch at a time, over a long period,
    /// so a merger restored from a backup heals without new hits.
    Sweep,
    /// Tell the merger which earlier incarnations are retired (`POST /v1/retire`), while any
    /// wait for it.
    Retire,
    /// Wake up when the incarnation is due to rotate (an idle object too); the rotation
    /// itself runs between the passes of an alarm, once the object is clean.
    Rotate,
    /// Presence objects: end the leases and sockets that missed their lease, then report the
    /// live-session counts to the merger.
    Report,
    /// Presence objects: push the changed counts to the open sockets (at most every
    /// `PRESENCE_PUSH_MS`).
    Push,
}

const JOBS: [Job; 7] = [
    Job::Sync,
    Job::Refresh,
    Job::Sweep,
    Job::Retire,
    Job::Rotate,
    Job::Report,
    Job::Push,
];

/// How late an alarm may be before it counts as lost.
pub const OVERDUE_MS: u64 = 5000;

impl Job {
    fn index(self) -> usize {
        match self {
            Job::Sync => 0,
            Job::Refresh => 1,
            Job::Sweep => 2,
            Job::Retire => 3,
            Job::Rotate => 4,
            Job::Report => 5,
            Job::Push => 6,
        }
    }
}

/// When each job is due, and where the alarm is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scheduler {
    due: [Option<Timestamp>; JOBS.len()],
    /// The alarm as set in storage (`None`: no alarm pending).
    armed: Option<Timestamp>,
    /// Failed merger calls in a row, for the backoff.
    failures: u32,
    /// After a failed merger call: no merger job runs before this time, whoever asks.
    retry_at: Option<Timestamp>,
    /// Failed retirements in a row, for the retirement's own backoff.
    retire_failures: u32,
}

impl Scheduler {
    /// A scheduler for an object whose stored alarm is `armed`.
    pub fn new(armed: Option<Timestamp>) -> Scheduler {
        Scheduler {
            armed,
            ..Scheduler::default()
        }
    }

    /// Asks for `job` at `at` (or earlier, if it is already due sooner), at time `now`.
    /// Returns the time the alarm must be set to, when it must move; `None` when the alarm
    /// already fires in time.
    #[must_use]
    pub fn want(&mut self, job: Job, at: Timestamp, now: Timestamp) -> Option<Timestamp> {
        // A backoff holds every merger job, however often reads and hits ask for one (a push
        // to sockets is not one).
        let at = match self.retry_at {
            Some(retry) if retry > now && job != Job::Push => at.max(retry),
            _ => at,
        };
        let slot = &mut self.due[job.index()];
        *slot = Some(slot.map_or(at, |d| d.min(at)));
        self.rearm(now)
    }

    /// Whether `job` is waiting to run.
    pub fn is_wanted(&self, job: Job) -> bool {
        self.due[job.index()].is_some()
    }

    /// The alarm fired at `now`: the jobs due by then (each taken off the schedule; the pass
    /// re-asks for what it still needs).
    pub fn take_due(&mut self, now: Timestamp) -> Vec<Job> {
        self.armed = None;
        JOBS.into_iter()
            .filter(|job| {
                let slot = &mut self.due[job.index()];
                let due = slot.is_some_and(|d| d <= now);
                if due {
                    *slot = None;
                }
                due
            })
            .collect()
    }

    /// The time the alarm must be set to, if any job is waiting and the alarm is not already
    /// set early enough. An alarm that should have fired more than [`OVERDUE_MS`] before `now`
    /// counts as lost and is set again: the runtime may drop an alarm set while the alarm
    /// handler runs, and a scheduler that trusted it would never wake up again.
    #[must_use]
    pub fn rearm(&mut self, now: Timestamp) -> Option<Timestamp> {
        let next = self.due.iter().flatten().min().copied()?;
        let pending = self
            .armed
            .is_some_and(|a| a <= next && now.millis_since(a) <= OVERDUE_MS);
        if pending {
            return None;
        }
        self.armed = Some(next);
        Some(next)
    }

    /// Forgets where the alarm is set (setting it failed, or a pass ended and sets it anew),
    /// so the next [`rearm`](Self::rearm) sets it.
    pub fn alarm_lost(&mut self) {
        self.armed = None;
    }

    /// A merger call succeeded.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    /// A merger call failed at `now`: the wait before the next attempt (see [`backoff_ms`]);
    /// until then no job is due, whoever asks for one.
    pub fn failed(&mut self, now: Timestamp, cap_ms: u64, random: u64) -> u64 {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff_ms(self.failures, cap_ms, random);
        self.retry_at = Some(now.plus_ms(wait));
        wait
    }

    /// Failed merger calls in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A retirement failed at `now`: the wait before the next attempt. It backs off on its
    /// own count, so a merger that refuses retirements while it takes syncs is not asked
    /// every second; when the merger is away (`merger_down`), every merger job backs off as
    /// after any failed call ([`Scheduler::failed`]).
    pub fn retire_failed(
        &mut self,
        now: Timestamp,
        cap_ms: u64,
        random: u64,
        merger_down: bool,
    ) -> u64 {
        self.retire_failures = self.retire_failures.saturating_add(1);
        let own = backoff_ms(self.retire_failures, cap_ms, random);
        if merger_down {
            own.max(self.failed(now, cap_ms, random))
        } else {
            own
        }
    }

    /// A retirement succeeded (so did a merger call).
    pub fn retire_succeeded(&mut self) {
        self.retire_failures = 0;
        self.succeeded();
    }
}

/// The wait before the next attempt after `failures` failed calls in a row: exponential from
/// 1 s, capped at `cap_ms`, with "equal jitter" (half fixed, half drawn from `random`) so
/// replicas that failed together do not retry together.
pub fn backoff_ms(failures: u32, cap_ms: u64, random: u64) -> u64 {
    const BASE_MS: u64 = 1000;
    let exp = BASE_MS
        .saturating_mul(1u64 << failures.saturating_sub(1).min(30))
        .min(cap_ms);
    let half = exp / 2;
    half + random % half.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms)
    }

    #[test]
    fn the_alarm_moves_only_when_work_is_due_sooner() {
        let mut s = Scheduler::new(None);
        assert_eq!(s.want(Job::Sync, at(2000), at(0)), Some(at(2000)));
        assert_eq!(
            s.want(Job::Sync, at(3000), at(0)),
            None,
            "already due sooner"
        );
        assert_eq!(
            s.want(Job::Sweep, at(9000), at(0)),
            None,
            "the alarm fires first anyway"
        );
        assert_eq!(s.want(Job::Refresh, at(100), at(0)), Some(at(100)));
    }

    #[test]
    fn one_pass_per_alarm_takes_only_what_is_due() {
        let mut s = Scheduler::new(None);
        let _ = s.want(Job::Sync, at(2000), at(0));
        let _ = s.want(Job::Refresh, at(100), at(0));
        let _ = s.want(Job::Sweep, at(60_000), at(0));
        assert_eq!(s.take_due(at(150)), [Job::Refresh]);
        assert_eq!(s.rearm(at(150)), Some(at(2000)));
        // Steady traffic: hits during the pass ask for a sync at +interval, not at once.
        assert_eq!(s.take_due(at(2000)), [Job::Sync]);
        assert_eq!(s.want(Job::Sync, at(4000), at(2000)), Some(at(4000)));
        assert!(s.take_due(at(2500)).is_empty());
        assert!(s.is_wanted(Job::Sweep));
    }

    #[test]
    fn a_stored_alarm_is_kept_after_a_restart() {
        let mut s = Scheduler::new(Some(at(500)));
        assert_eq!(s.want(Job::Sync, at(800), at(0)), None);
        assert_eq!(s.want(Job::Sync, at(300), at(0)), Some(at(300)));
    }

    #[test]
    fn a_lost_alarm_is_set_again() {
        let mut s = Scheduler::new(None);
        assert_eq!(s.want(Job::Sync, at(10), at(0)), Some(at(10)));
        s.alarm_lost();
        assert_eq!(s.rearm(at(0)), Some(at(10)));
    }

    /// Found end to end: an alarm set by a hit while the alarm handler ran (a sync waiting
    /// on a dead merger) was dropped by the runtime; the scheduler kept trusting it, and the
    /// object never synced again.
    #[test]
    fn an_alarm_long_overdue_counts_as_lost() {
        let mut s = Scheduler::new(None);
        assert_eq!(s.want(Job::Sync, at(1000), at(0)), Some(at(1000)));
        assert_eq!(
            s.want(Job::Sync, at(1300), at(1000)),
            None,
            "due any moment"
        );
        let late = at(1000 + i64::try_from(OVERDUE_MS).unwrap() + 1);
        assert_eq!(
            s.want(Job::Sync, at(9000), late),
            Some(at(1000)),
            "never fired: set again"
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_to_the_cap_with_jitter() {
        assert_eq!(backoff_ms(1, 60_000, 0), 500);
        assert_eq!(backoff_ms(1, 60_000, 499), 999);
        assert_eq!(backoff_ms(2, 60_000, 0), 1000);
        assert_eq!(backoff_ms(3, 60_000, 1000), 3000);
        for f in 7..100 {
            for random in [0, 12_345, u64::MAX] {
                let b = backoff_ms(f, 60_000, random);
                assert!((30_000..60_000).contains(&b), "{f}: {b}");
            }
        }
        let mut s = Scheduler::new(None);
        assert_eq!(s.failed(at(0), 60_000, 0), 500);
        assert_eq!(s.failed(at(0), 60_000, 0), 1000);
        s.succeeded();
        assert_eq!(s.failures(), 0);
    }

    /// Found by the edge benchmark: every stale read pulled the refresh back to +10 ms, so a
    /// hung merger was called back to back and the backoff never applied.
    #[test]
    fn after_a_failure_no_one_pulls_a_job_before_the_backoff() {
        let mut s = Scheduler::new(None);
        let wait = s.failed(at(0), 60_000, 0);
        assert_eq!(wait, 500);
        let _ = s.want(Job::Refresh, at(10), at(0));
        assert!(
            s.take_due(at(100)).is_empty(),
            "a read asked before the backoff ended"
        );
        assert_eq!(s.take_due(at(500)), [Job::Refresh]);
        s.succeeded();
        let _ = s.want(Job::Refresh, at(510), at(500));
        assert_eq!(s.take_due(at(510)), [Job::Refresh]);
    }

    #[test]
    fn a_refused_retirement_backs_off_alone_and_holds_no_sync() {
        let mut s = Scheduler::new(None);
        assert_eq!(s.retire_failed(at(0), 60_000, 0, false), 500);
        assert_eq!(s.retire_failed(at(0), 60_000, 0, false), 1000);
        assert_eq!(s.failures(), 0, "the merger answered");
        let _ = s.want(Job::Sync, at(10), at(0));
        assert_eq!(s.take_due(at(10)), [Job::Sync]);
        s.succeeded();
        assert_eq!(
            s.retire_failed(at(0), 60_000, 0, false),
            2000,
            "a sync's success does not reset the retirement's backoff"
        );
        s.retire_succeeded();
        assert_eq!(s.retire_failed(at(0), 60_000, 0, false), 500);
    }

    #[test]
    fn a_retirement_that_finds_the_merger_away_holds_every_job() {
        let mut s = Scheduler::new(None);
        let wait = s.retire_failed(at(0), 60_000, 0, true);
        assert_eq!((wait, s.failures()), (500, 1));
        let _ = s.want(Job::Sync, at(10), at(0));
        assert!(s.take_due(at(10)).is_empty());
        assert_eq!(s.take_due(at(500)), [Job::Sync]);
    }
}
