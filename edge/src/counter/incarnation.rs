//! An object's replica incarnation, and its rotation, as pure bookkeeping.
//!
//! An object is one CRDT replica *incarnation* at a time: the id its slots carry at the
//! merger. Storage persists, so an incarnation that has gone quiet could always come back with
//! a higher total; the merger can fold a slot into the counter's base only once its replica
//! declared it final. So an object **rotates**: once its incarnation is older than
//! `ROTATE_MS`, at its first *clean* moment (no dirty row, no sync in flight: every slot of
//! the incarnation is acknowledged, so its totals at the merger are final), it draws a fresh
//! id, bumps its generation and lists the old id for retirement (`POST /v1/retire`, the
//! scheduler's `Retire` job) until the merger has answered.
//!
//! Rotation costs O(1) storage writes whatever the number of counters: every row carries the
//! generation that wrote it, and a row of an earlier generation reads as zero
//! ([`crate::counter::Row::in_generation`]). Never with a dirty row: a sync whose answer was
//! lost may have been committed, and carrying its totals over would count them twice.
//!
//! An incarnation that has counted nothing has no slot at the merger and nothing to retire;
//! its age counts from its first hit, so an idle object does not churn ids.
//!
//! An object's incarnations form a *lineage* ([`ReplicaId::lineage`]): 96 bits drawn once per
//! storage lifetime, and the generation in the low 32 bits. So the merger can tell which
//! incarnations of an object came before a given one, and an object can keep, per counter,
//! the *carry* of its own retired generations (the sums of their final slots,
//! [`crate::counter::Row::carried`]) and re-send it with every sync of that counter: a merger
//! restored from a backup older than some rotations gets back what the rotated-away
//! incarnations counted. Storage from before lineages draws its lineage at load and starts it
//! at its next rotation ([`Lineage::from`]); the generations before were retired into the
//! merger's region bases, and are in no carry.

use tally_crdt::{ReplicaId, Timestamp};

use super::store::meta;
use crate::client::MergerError;
use crate::counter::Lineage;
use crate::scheduler::Job;

/// Retirements that may wait for the merger at once. With this many pending, the object
/// keeps its incarnation until the merger answers: the stored list stays bounded whatever
/// the merger does.
pub const MAX_RETIRING: usize = 16;

/// The current incarnation and the earlier ones still to retire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incarnation {
    /// The id the current incarnation's slots carry at the merger.
    pub replica: ReplicaId,
    /// Its generation: 0 for the object's first incarnation, one more per rotation. Every
    /// row it writes carries it.
    pub generation: u64,
    /// When it counted its first hit; `None` while it has counted nothing (it then has no
    /// slot at the merger, and never rotates).
    pub started_at: Option<Timestamp>,
    /// Earlier incarnations, oldest first, whose retirement the merger has not acknowledged.
    pub retiring: Vec<ReplicaId>,
    /// The object's lineage.
    pub lineage: Lineage,
}

/// Why an incarnation due for rotation keeps going for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocker {
    /// A row is dirty: the merger may hold totals of it that the object does not know are
    /// committed; they must be acknowledged first.
    Dirty,
    /// A sync is in flight: its totals may be committed after the rotation.
    SyncInFlight,
    /// [`MAX_RETIRING`] retirements are waiting for the merger.
    TooManyRetiring,
    /// The lineage has used its 2^32 generations (a rotation a second would take 136 years).
    LineageExhausted,
}

/// A stored meta entry that does not read back as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored {name} {value:?} is damaged")]
pub struct DamagedMeta {
    /// The meta entry.
    pub name: &'static str,
    /// Its value.
    pub value: String,
}

impl Incarnation {
    /// The first incarnation of an object whose storage is new: generation 0 of the lineage
    /// of `object` (96 random bits; the low 32 are ignored).
    pub fn new(object: ReplicaId) -> Incarnation {
        let lineage = Lineage {
            object: object.object(),
            from: 0,
        };
        Incarnation {
            replica: ReplicaId::lineage(lineage.object, 0),
            generation: 0,
            started_at: None,
            retiring: Vec::new(),
            lineage,
        }
    }

    /// Reads the stored meta entries ([`Incarnation::meta`]); an absent generation, start or
    /// list (storage from before rotation) reads as 0, not started, empty. Storage from
    /// before lineages gets the lineage of an id `fresh` draws (96 random bits; called only
    /// then), starting at its next generation; the answer then says that the meta entries
    /// must be stored.
    ///
    /// # Errors
    ///
    /// [`DamagedMeta`] for an entry this module did not write.
    pub fn decode(
        replica: &str,
        generation: Option<&str>,
        started_at: Option<&str>,
        retiring: Option<&str>,
        lineage: Option<&str>,
        fresh: impl FnOnce() -> ReplicaId,
    ) -> Result<(Incarnation, bool), DamagedMeta> {
        let damaged = |name, value: &str| DamagedMeta {
            name,
            value: value.to_owned(),
        };
        let replica = replica
            .parse()
            .map_err(|_| damaged(meta::REPLICA, replica))?;
        let generation: u64 = match generation {
            None => 0,
            Some(text) => text.parse().map_err(|_| damaged(meta::GENERATION, text))?,
        };
        let started_at = match started_at {
            None | Some("") => None,
            Some(text) => Some(text.parse().map_err(|_| damaged(meta::STARTED, text))?),
        };
        let retiring = match retiring {
            None | Some("") => Vec::new(),
            Some(text) => text
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| damaged(meta::RETIRING, text))?,
        };
        let (lineage, drawn) = match lineage {
            Some(text) => {
                let bad = || damaged(meta::LINEAGE, text);
                let (object, from) = text.split_once(':').ok_or_else(bad)?;
                let object: ReplicaId = object.parse().map_err(|_| bad())?;
                let from = from.parse().map_err(|_| bad())?;
                (
                    Lineage {
                        object: object.object(),
                        from,
                    },
                    false,
                )
            }
            None => {
                let from = generation
                    .checked_add(1)
                    .expect("a generation per rotation does not reach 2^64");
                let lineage = Lineage {
                    object: fresh().object(),
                    from,
                };
                (lineage, true)
            }
        };
        let incarnation = Incarnation {
            replica,
            generation,
            started_at,
            retiring,
            lineage,
        };
        Ok((incarnation, drawn))
    }

    /// The meta entries that store it, written together (one statement, so a rotation is
    /// stored whole or not at all). Not started and an empty list are stored as `""`.
    pub fn meta(&self) -> [(&'static str, String); 5] {
        [
            (meta::REPLICA, self.replica.to_string()),
            (meta::GENERATION, self.generation.to_string()),
            (
                meta::STARTED,
                self.started_at.map(|t| t.to_string()).unwrap_or_default(),
            ),
            (meta::RETIRING, self.retiring_text()),
            (meta::LINEAGE, lineage_text(&self.lineage)),
        ]
    }

    /// The stored form of [`Incarnation::retiring`]: the ids, comma-separated.
    pub fn retiring_text(&self) -> String {
        let ids: Vec<String> = self.retiring.iter().map(ToString::to_string).collect();
        ids.join(",")
    }

    /// Records the incarnation's first hit at `now`; returns whether that changed anything
    /// (then [`meta::STARTED`] must be stored, and the rotation scheduled).
    pub fn first_use(&mut self, now: Timestamp) -> bool {
        if self.started_at.is_some() {
            return false;
        }
        self.started_at = Some(now);
        true
    }

    /// When the incarnation is due to rotate: `rotate_ms` after its first hit; `None` if it
    /// never rotates (`rotate_ms` is 0, or it has counted nothing).
    pub fn due_at(&self, rotate_ms: u64) -> Option<Timestamp> {
        if rotate_ms == 0 {
            return None;
        }
        self.started_at.map(|t| t.plus_ms(rotate_ms))
    }

    /// Whether a due rotation must wait, given whether any row is `dirty` and how many syncs
    /// are in flight; `None`: the object is clean and may rotate now.
    pub fn blocker(&self, dirty: bool, syncs_in_flight: u32) -> Option<Blocker> {
        if dirty {
            Some(Blocker::Dirty)
        } else if syncs_in_flight > 0 {
            Some(Blocker::SyncInFlight)
        } else if self.retiring.len() >= MAX_RETIRING {
            Some(Blocker::TooManyRetiring)
        } else if self.next_generation().is_none() {
            Some(Blocker::LineageExhausted)
        } else {
            None
        }
    }

    /// The next generation and its id in the lineage, if the lineage has one.
    fn next_generation(&self) -> Option<(u64, ReplicaId)> {
        let next = self.generation.checked_add(1)?;
        let low = u32::try_from(next).ok()?;
        Some((next, ReplicaId::lineage(self.lineage.object, low)))
    }

    /// Rotates to the lineage's next incarnation: the next generation, not started yet, and
    /// the old id appended to the retirements. Returns the old id.
    ///
    /// Only once [`Incarnation::blocker`] said so (which makes sure there is a next
    /// generation), in the same synchronous stretch of storage calls as that check.
    pub fn rotate(&mut self) -> ReplicaId {
        let (generation, fresh) = self
            .next_generation()
            .expect("the blocker checked that the lineage has a next generation");
        let old = self.replica;
        self.retiring.push(old);
        self.replica = fresh;
        self.generation = generation;
        self.started_at = None;
        old
    }

    /// The version of `POST /v1/retire` that retires `replica`: 4 for an incarnation of the
    /// lineage (folded into the object's carry; a merger from before version 4 refuses it
    /// until it is upgraded, rather than fold it where the carry would count it again), else
    /// 3 (a merger from before carries folds it into its region's base). The oldest versions
    /// that mean that: the body kept its shape since.
    pub fn retire_version(&self, replica: ReplicaId) -> u32 {
        if self.lineage.names(replica) { 4 } else { 3 }
    }

    /// The merger acknowledged the retirement of `replica`: off the list. Returns whether it
    /// was on it.
    pub fn retired(&mut self, replica: ReplicaId) -> bool {
        let before = self.retiring.len();
        self.retiring.retain(|r| *r != replica);
        self.retiring.len() != before
    }

    /// The jobs this incarnation needs from the scheduler at `now`: `Retire` at once while
    /// retirements are pending, `Rotate` when the rotation is due.
    pub fn wanted(&self, now: Timestamp, rotate_ms: u64) -> Vec<(Job, Timestamp)> {
        let mut jobs = Vec::new();
        if !self.retiring.is_empty() {
            jobs.push((Job::Retire, now));
        }
        if let Some(due) = self.due_at(rotate_ms) {
            jobs.push((Job::Rotate, due));
        }
        jobs
    }
}

/// What a failed `POST /v1/retire` means. Whatever it is, the id stays on the list: only a
/// 2xx takes it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetireFailure {
    /// Unreachable, timed out or 5xx: the merger is away; every merger job backs off.
    MergerDown,
    /// 409 or 422: the merger refused this retirement for now; retry it later.
    Refused,
    /// Any other 4xx, or an answer that is not the protocol's: a bug on one side; logged as
    /// an error, retried later.
    Bug,
}

impl RetireFailure {
    /// Classifies a failed retirement call.
    pub fn of(error: &MergerError) -> RetireFailure {
        match error {
            MergerError::Unreachable(_) | MergerError::Timeout(_) => RetireFailure::MergerDown,
            MergerError::Status { status, .. } if *status >= 500 => RetireFailure::MergerDown,
            MergerError::Status {
                status: 409 | 422, ..
            } => RetireFailure::Refused,
            MergerError::Status { .. } | MergerError::BadAnswer(_) => RetireFailure::Bug,
        }
    }
}

/// A lineage's stored form: the object's id and the first generation, `:`-separated.
fn lineage_text(lineage: &Lineage) -> String {
    format!("{}:{}", lineage.object, lineage.from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Scheduler;

    const OBJECT: ReplicaId = ReplicaId::from_u128(0xabc << 32);
    const OLD: ReplicaId = ReplicaId::lineage(OBJECT, 0);
    const NEW: ReplicaId = ReplicaId::lineage(OBJECT, 1);
    const DAY: u64 = 86_400_000;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms)
    }

    fn started(ms: i64) -> Incarnation {
        let mut inc = Incarnation::new(OBJECT);
        assert!(inc.first_use(at(ms)));
        inc
    }

    #[test]
    fn an_incarnation_that_counted_nothing_never_rotates() {
        let mut inc = Incarnation::new(OBJECT);
        assert_eq!(inc.due_at(DAY), None);
        assert!(inc.wanted(at(0), DAY).is_empty());
        assert!(inc.first_use(at(1000)));
        assert!(!inc.first_use(at(5000)), "the first hit starts it, once");
        assert_eq!(inc.due_at(DAY), Some(at(1000).plus_ms(DAY)));
    }

    #[test]
    fn rotate_ms_zero_turns_rotation_off() {
        assert_eq!(started(0).due_at(0), None);
    }

    #[test]
    fn a_due_incarnation_rotates_only_when_clean() {
        let inc = started(0);
        assert_eq!(inc.blocker(true, 0), Some(Blocker::Dirty));
        assert_eq!(inc.blocker(false, 1), Some(Blocker::SyncInFlight));
        assert_eq!(inc.blocker(true, 1), Some(Blocker::Dirty));
        assert_eq!(inc.blocker(false, 0), None);
    }

    #[test]
    fn rotation_draws_the_next_generation_and_lists_the_old_id_for_retirement() {
        let mut inc = started(0);
        assert_eq!(inc.rotate(), OLD);
        assert_eq!(
            inc,
            Incarnation {
                replica: NEW,
                generation: 1,
                started_at: None,
                retiring: vec![OLD],
                lineage: Lineage {
                    object: OBJECT,
                    from: 0
                },
            }
        );
        assert_eq!(inc.retire_version(OLD), 4, "folded into the object's carry");
        assert_eq!(inc.due_at(DAY), None, "the new one starts at its first hit");
    }

    #[test]
    fn pending_retirements_are_bounded() {
        let mut inc = started(0);
        for n in 0..MAX_RETIRING {
            assert_eq!(inc.blocker(false, 0), None);
            let _ = n;
            inc.rotate();
            inc.first_use(at(0));
        }
        assert_eq!(inc.blocker(false, 0), Some(Blocker::TooManyRetiring));
        assert!(inc.retired(OLD));
        assert_eq!(inc.blocker(false, 0), None);
    }

    #[test]
    fn the_scheduler_runs_retire_while_the_list_is_not_empty() {
        let mut inc = started(0);
        inc.rotate();
        let mut s = Scheduler::new(None);
        for (job, when) in inc.wanted(at(100), DAY) {
            let _ = s.want(job, when, at(100));
        }
        assert_eq!(s.take_due(at(100)), [Job::Retire]);
        // The merger is away: the id stays, and Retire comes back after the backoff.
        let wait = s.retire_failed(at(100), 60_000, 0, true);
        assert!(!inc.retiring.is_empty());
        for (job, when) in inc.wanted(at(100), DAY) {
            let _ = s.want(job, when, at(100));
        }
        assert!(s.take_due(at(100)).is_empty(), "held by the backoff");
        assert_eq!(s.take_due(at(100).plus_ms(wait)), [Job::Retire]);
        s.retire_succeeded();
        assert!(inc.retired(OLD));
        assert!(!inc.retired(OLD), "retiring twice changes nothing");
        assert!(inc.wanted(at(2000), DAY).is_empty());
    }

    #[test]
    fn the_stored_form_reads_back() {
        let mut inc = started(1234);
        inc.rotate();
        inc.first_use(at(5678));
        inc.rotate();
        let stored = inc.meta();
        let get = |name: &str| stored.iter().find(|(n, _)| *n == name).unwrap().1.clone();
        let (back, drawn) = Incarnation::decode(
            &get(meta::REPLICA),
            Some(&get(meta::GENERATION)),
            Some(&get(meta::STARTED)),
            Some(&get(meta::RETIRING)),
            Some(&get(meta::LINEAGE)),
            || ReplicaId::from_u128(99 << 32),
        )
        .unwrap();
        assert_eq!((back.clone(), drawn), (inc, false));
        assert_eq!(back.retiring, [OLD, NEW]);
        assert_eq!(back.replica, ReplicaId::lineage(OBJECT, 2));
    }

    #[test]
    fn storage_from_before_lineages_starts_one_at_its_next_rotation() {
        let legacy = ReplicaId::from_u128(0x1234_5678_9abc_def0_1122_3344_5566_7788);
        let fresh = ReplicaId::from_u128(7 << 32);
        let (mut inc, drawn) =
            Incarnation::decode(&legacy.to_string(), Some("3"), None, None, None, || fresh)
                .unwrap();
        assert!(drawn, "the drawn lineage must be stored");
        assert_eq!((inc.replica, inc.generation), (legacy, 3));
        assert!(
            !inc.lineage.holds(3),
            "generation 3 was not a lineage's: nothing carries it"
        );
        inc.first_use(at(0));
        assert_eq!(inc.rotate(), legacy);
        assert_eq!(inc.replica, ReplicaId::lineage(fresh, 4));
        assert!(inc.lineage.holds(4));
        assert_eq!(inc.retire_version(legacy), 3);
        inc.first_use(at(0));
        let four = inc.rotate();
        assert_eq!(inc.retire_version(four), 4);
    }

    #[test]
    fn storage_from_before_rotation_reads_as_generation_zero() {
        let (inc, _) =
            Incarnation::decode(&OLD.to_string(), None, None, None, None, || OBJECT).unwrap();
        assert_eq!(
            (inc.generation, inc.started_at, inc.retiring.len()),
            (0, None, 0)
        );
    }

    #[test]
    fn damaged_meta_is_named() {
        let decode = |generation, retiring, lineage| {
            Incarnation::decode(
                &OLD.to_string(),
                generation,
                None,
                retiring,
                lineage,
                || OBJECT,
            )
            .unwrap_err()
            .name
        };
        assert_eq!(decode(Some("x"), None, None), meta::GENERATION);
        assert_eq!(decode(None, Some("00,zz"), None), meta::RETIRING);
        assert_eq!(decode(None, None, Some("zz:1")), meta::LINEAGE);
        assert_eq!(
            decode(None, None, Some(&format!("{OBJECT}"))),
            meta::LINEAGE
        );
    }

    #[test]
    fn only_a_2xx_retires_and_only_an_away_merger_holds_every_job() {
        let status = |status| MergerError::Status {
            status,
            body: String::new(),
        };
        assert_eq!(
            RetireFailure::of(&MergerError::Timeout(5000)),
            RetireFailure::MergerDown
        );
        assert_eq!(
            RetireFailure::of(&MergerError::Unreachable("reset".into())),
            RetireFailure::MergerDown
        );
        assert_eq!(RetireFailure::of(&status(503)), RetireFailure::MergerDown);
        assert_eq!(RetireFailure::of(&status(409)), RetireFailure::Refused);
        assert_eq!(RetireFailure::of(&status(422)), RetireFailure::Refused);
        assert_eq!(RetireFailure::of(&status(404)), RetireFailure::Bug);
        assert_eq!(RetireFailure::of(&status(401)), RetireFailure::Bug);
        assert_eq!(
            RetireFailure::of(&MergerError::BadAnswer("eof".into())),
            RetireFailure::Bug
        );
    }
}
