//! The presence protocol ("viewers now"): edge objects report how many live sessions they hold
//! per presence id; the merger sums the fresh reports.
//!
//! A viewer's session lives in one edge object (routed by a hash of the presence id and the
//! session) and counts while its lease is renewed. Each object **reports** its live-session
//! count per id ([`PresenceReport`], `POST /v1/presence`) every sync interval while it holds
//! sessions, and once more with 0 when the last one ends. A report is a *value*, not a
//! delta, stamped with the reporter's sequence number and time: the merger keeps per (id,
//! reporter) the report with the highest `seq`, so a late, duplicated or reordered report never
//! overrides a newer one. A report counts until `at + ttl_ms`; a reporter that stops reporting
//! (evicted, crashed) drops out after its lease by itself, so nothing leaks.
//!
//! The merger answers, per id, the sum of the fresh reports and its recorded copy of this
//! reporter's count ([`PresenceTotal`]), so the object can answer `count - recorded + own`,
//! which includes its own latest joins and leaves. `POST /v1/read/presence`
//! ([`PresenceRead`]) asks for the same totals and writes nothing.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::{Error, PROTOCOL_VERSION, ReplicaId, Timestamp};

/// Longest lease a report may claim: one hour.
pub const MAX_PRESENCE_TTL_MS: u64 = 3_600_000;

/// One object's live-session counts, `POST /v1/presence`.
///
/// # Examples
///
/// ```
/// use tally_crdt::{PresenceCount, PresenceReport, ReplicaId, Timestamp, PROTOCOL_VERSION};
///
/// let report = PresenceReport {
///     version: PROTOCOL_VERSION,
///     reporter: ReplicaId::from_u128(7),
///     region: "eu".into(),
///     seq: 12,
///     at: Timestamp::from_unix_ms(1_917_864_702_500),
///     ttl_ms: 30_000,
///     counts: vec![PresenceCount { id: "home".into(), count: 3 }],
/// };
/// report.validate()?;
/// assert_eq!(report.expires_at(), Timestamp::from_unix_ms(1_917_864_732_500));
/// # Ok::<(), tally_crdt::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceReport {
    /// Protocol version, 2.
    pub version: u32,
    /// The reporting object: one id per storage lifetime (not its counting incarnation, which
    /// rotates: a rotation must not count its sessions twice).
    pub reporter: ReplicaId,
    /// The region the object serves.
    pub region: String,
    /// Grows with every report of this reporter: the merger keeps the highest per id.
    pub seq: u64,
    /// When the counts were taken, on the reporter's clock.
    pub at: Timestamp,
    /// The counts hold until `at + ttl_ms`, 1 ..= [`MAX_PRESENCE_TTL_MS`].
    pub ttl_ms: u64,
    /// Per id, the live sessions the object holds now (0: none any more). At most
    /// [`MAX_COUNTERS_PER_SYNC`](crate::MAX_COUNTERS_PER_SYNC) ids, each once.
    pub counts: Vec<PresenceCount>,
}

/// One id's live sessions in a [`PresenceReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceCount {
    /// The presence id (a counter id's rules).
    pub id: String,
    /// Live sessions.
    pub count: u64,
}

/// The merger's answer to a [`PresenceReport`] or a [`PresenceRead`], sent after the report
/// is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceResponse {
    /// The version of the request answered.
    pub version: u32,
    /// One total per id of the request (match them by id).
    pub presence: Vec<PresenceTotal>,
}

/// One id's viewers now, as the merger knows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceTotal {
    /// The presence id.
    pub id: String,
    /// The sum of the fresh reports of every reporter.
    pub count: u64,
    /// The count of the asking reporter among them (0 if it has no fresh report).
    pub recorded: u64,
    /// The time of the newest fresh report; `None` when none is fresh.
    pub updated_at: Option<Timestamp>,
}

impl PresenceTotal {
    /// The count with the asker's own current sessions in place of its recorded ones.
    pub fn with_own(&self, own: u64) -> u64 {
        self.count.saturating_sub(self.recorded).saturating_add(own)
    }
}

/// The totals of some presence ids, `POST /v1/read/presence`; writes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceRead {
    /// Protocol version, 2.
    pub version: u32,
    /// The asking reporter, for its recorded counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporter: Option<ReplicaId>,
    /// The ids, each once, at most [`MAX_COUNTERS_PER_SYNC`](crate::MAX_COUNTERS_PER_SYNC).
    pub ids: Vec<String>,
}

impl PresenceReport {
    /// When the report stops counting.
    pub fn expires_at(&self) -> Timestamp {
        self.at.plus_ms(self.ttl_ms)
    }

    /// Checks a report: version, a non-nil reporter, its region, a lease in range, and at most
    /// [`MAX_COUNTERS_PER_SYNC`](crate::MAX_COUNTERS_PER_SYNC) valid ids, each once.
    ///
    /// # Errors
    ///
    /// The first rule broken, as its [`Error`] variant.
    pub fn validate(&self) -> Result<(), Error> {
        check_version(self.version)?;
        if self.reporter.is_nil() {
            return Err(Error::NilReplica);
        }
        crate::check_region(&self.region)?;
        if self.ttl_ms == 0 || self.ttl_ms > MAX_PRESENCE_TTL_MS {
            return Err(Error::PresenceTtlOutOfRange {
                got: self.ttl_ms,
                max: MAX_PRESENCE_TTL_MS,
            });
        }
        check_ids(self.counts.iter().map(|c| c.id.as_str()))
    }

    /// Decodes a report body and checks it.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] for a body that is not a report, else the rule broken.
    #[cfg(feature = "json")]
    pub fn from_json(body: &[u8]) -> Result<PresenceReport, Error> {
        let report: PresenceReport = decode(body)?;
        report.validate()?;
        Ok(report)
    }
}

impl PresenceRead {
    /// Checks a read: version, a non-nil reporter if named, at most
    /// [`MAX_COUNTERS_PER_SYNC`](crate::MAX_COUNTERS_PER_SYNC) valid ids, each once.
    ///
    /// # Errors
    ///
    /// The first rule broken, as its [`Error`] variant.
    pub fn validate(&self) -> Result<(), Error> {
        check_version(self.version)?;
        if self.reporter.is_some_and(ReplicaId::is_nil) {
            return Err(Error::NilReplica);
        }
        check_ids(self.ids.iter().map(String::as_str))
    }

    /// Decodes a read body and checks it.
    ///
    /// # Errors
    ///
    /// As for [`PresenceReport::from_json`].
    #[cfg(feature = "json")]
    pub fn from_json(body: &[u8]) -> Result<PresenceRead, Error> {
        let read: PresenceRead = decode(body)?;
        read.validate()?;
        Ok(read)
    }
}

/// Refuses versions other than 2 and 3 (presence and sketches came with version 2, and
/// version 3 left their shape as it was).
pub(crate) fn check_version(version: u32) -> Result<(), Error> {
    if (2..=PROTOCOL_VERSION).contains(&version) {
        Ok(())
    } else {
        Err(Error::UnsupportedVersion {
            got: u64::from(version),
            supported: PROTOCOL_VERSION,
        })
    }
}

/// At most [`MAX_COUNTERS_PER_SYNC`](crate::MAX_COUNTERS_PER_SYNC) ids, each valid and once.
pub(crate) fn check_ids<'a>(ids: impl ExactSizeIterator<Item = &'a str>) -> Result<(), Error> {
    crate::validate::check_sync_size(ids.len())?;
    let mut seen: Vec<&str> = Vec::with_capacity(ids.len());
    for id in ids {
        crate::check_counter_id(id)?;
        seen.push(id);
    }
    seen.sort_unstable();
    match seen.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(Error::DuplicateId {
            id: w[0].to_string(),
        }),
        None => Ok(()),
    }
}

/// Decodes a JSON object body, naming an unsupported version rather than a shape.
#[cfg(feature = "json")]
pub(crate) fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice::<crate::sync::MapOnly<T>>(body)
        .map(|m| m.0)
        .map_err(|e| crate::validate::version_or_malformed(body, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn report() -> PresenceReport {
        PresenceReport {
            version: PROTOCOL_VERSION,
            reporter: ReplicaId::from_u128(1),
            region: "eu".into(),
            seq: 1,
            at: Timestamp::from_unix_ms(1000),
            ttl_ms: 30_000,
            counts: vec![PresenceCount {
                id: "a".into(),
                count: 2,
            }],
        }
    }

    #[test]
    fn a_report_breaking_a_rule_names_it() {
        assert_eq!(report().validate(), Ok(()));
        let mut r = report();
        r.ttl_ms = 0;
        assert!(matches!(
            r.validate(),
            Err(Error::PresenceTtlOutOfRange { got: 0, .. })
        ));
        let mut r = report();
        r.reporter = ReplicaId::NIL;
        assert_eq!(r.validate(), Err(Error::NilReplica));
        let mut r = report();
        r.counts.push(r.counts[0].clone());
        assert_eq!(r.validate(), Err(Error::DuplicateId { id: "a".into() }));
        let mut r = report();
        r.counts[0].id = "a b".into();
        assert_eq!(r.validate(), Err(Error::IdBadChar { at: 1 }));
    }

    #[test]
    fn own_sessions_replace_the_recorded_ones() {
        let total = PresenceTotal {
            id: "a".into(),
            count: 10,
            recorded: 4,
            updated_at: None,
        };
        assert_eq!(total.with_own(6), 12);
        assert_eq!(total.with_own(0), 6);
    }
}
