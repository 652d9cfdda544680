//! Viewers now, as both stores keep them: which rows a batch of presence reports writes (per
//! id and reporter, the highest `seq`), when a report stops counting (its lease, from its
//! time or its receipt, whichever is earlier), how long an expired row is kept, and the sums
//! of the fresh rows that reads answer. The stores run these rules; the SQL only stores and
//! selects.

use std::collections::BTreeMap;

use tally_crdt::{PresenceReport, PresenceTotal, ReplicaId, Timestamp};

/// One presence id's viewers now: the sum of the reports not expired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresenceSum {
    /// The presence id.
    pub id: String,
    /// Live sessions over every fresh report.
    pub count: u64,
    /// The asking reporter's count among them (0 without a fresh report of its own).
    pub recorded: u64,
    /// Reporters with a fresh report (a report of 0 included).
    pub reporters: u64,
    /// The time of the newest fresh report; `None` when none is fresh.
    pub updated_at: Option<Timestamp>,
}

impl PresenceSum {
    /// As the edge protocol answers it.
    pub fn to_total(&self) -> PresenceTotal {
        PresenceTotal {
            id: self.id.clone(),
            count: self.count,
            recorded: self.recorded,
            updated_at: self.updated_at,
        }
    }
}

/// How long an expired presence report is kept before the pruning task ([`crate::prune`])
/// deletes it: a late report older than the stored one must still find it (and lose to its
/// `seq`), and a report expires at most [`tally_crdt::MAX_PRESENCE_TTL_MS`] after it was
/// taken.
pub const PRESENCE_GRACE_MS: u64 = tally_crdt::MAX_PRESENCE_TTL_MS;

/// When a report stops counting: its lease from its time, or from its receipt if its time is
/// later (a reporter whose clock runs ahead cannot stretch its lease).
pub fn presence_expiry(report: &PresenceReport, received: Timestamp) -> (Timestamp, Timestamp) {
    let at = if report.at > received {
        received
    } else {
        report.at
    };
    (at, at.plus_ms(report.ttl_ms))
}

/// One row of the `presence` table, as a report writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRow<'a> {
    /// The presence id.
    pub name: &'a str,
    /// The reporting edge object.
    pub reporter: ReplicaId,
    /// Its region.
    pub region: &'a str,
    /// The report's sequence number: a row is replaced only by a higher one.
    pub seq: u64,
    /// Live sessions of the id at the reporter.
    pub count: u64,
    /// The report's time, at most its receipt ([`presence_expiry`]).
    pub at: Timestamp,
    /// When the row stops counting.
    pub expires_at: Timestamp,
}

/// The rows `reports`, received at `received`, write: one per id and reporter, in (id,
/// reporter) order. Of several for one id and reporter the one with the highest `seq` stands,
/// the earliest of equal ones, which is what storing the reports one after another would
/// leave (a report replaces a stored one only with a higher `seq`). One statement writes them
/// all: Postgres refuses to update a row twice in one statement, and the order is the one in
/// which every merger locks them.
pub fn presence_rows(reports: &[PresenceReport], received: Timestamp) -> Vec<PresenceRow<'_>> {
    let mut rows: BTreeMap<(&str, ReplicaId), PresenceRow<'_>> = BTreeMap::new();
    for report in reports {
        let (at, expires_at) = presence_expiry(report, received);
        for count in &report.counts {
            let row = PresenceRow {
                name: &count.id,
                reporter: report.reporter,
                region: &report.region,
                seq: report.seq,
                count: count.count,
                at,
                expires_at,
            };
            match rows.entry((&count.id, report.reporter)) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(row);
                }
                std::collections::btree_map::Entry::Occupied(mut held) => {
                    if row.seq > held.get().seq {
                        held.insert(row);
                    }
                }
            }
        }
    }
    rows.into_values().collect()
}

/// Sums fresh presence rows `(id, reporter, count, at)` into one [`PresenceSum`] per id of
/// `ids`, in their order (zero for an id without a fresh report).
pub fn sum_presence(
    ids: &[String],
    reporter: Option<ReplicaId>,
    rows: impl IntoIterator<Item = (String, ReplicaId, u64, Timestamp)>,
) -> Vec<PresenceSum> {
    let mut sums: BTreeMap<&str, PresenceSum> = BTreeMap::new();
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, from, count, at) in &rows {
        let sum = sums.entry(id.as_str()).or_default();
        sum.count = sum.count.saturating_add(*count);
        if reporter == Some(*from) {
            sum.recorded = *count;
        }
        sum.reporters += 1;
        sum.updated_at = Some(sum.updated_at.map_or(*at, |t| t.max(*at)));
    }
    ids.iter()
        .map(|id| PresenceSum {
            id: id.clone(),
            ..sums.get(id.as_str()).cloned().unwrap_or_default()
        })
        .collect()
}
