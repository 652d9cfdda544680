//! [`Metrics`]: what `GET /metrics` exposes, in the Prometheus text format.
//!
//! One registry per merger (no global recorder), so tests can run many mergers in one
//! process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use tally_crdt::ReplicaId;

use crate::state::CacheStats;

/// Label of a sync's or request's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok`, or the error code.
    pub outcome: &'static str,
}

/// Label of an error response.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Code {
    /// The error code.
    pub code: &'static str,
}

/// Label of a committed transaction: what it wrote.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Purpose {
    /// `sync` (a group commit of syncs), `snapshot` (history points), `presence` (a group
    /// commit of presence reports) or `unique` (a group commit of sketch syncs).
    pub purpose: &'static str,
}

impl Purpose {
    /// A group commit of syncs.
    pub const SYNC: Purpose = Purpose { purpose: "sync" };
    /// A snapshot of the history.
    pub const SNAPSHOT: Purpose = Purpose {
        purpose: "snapshot",
    };
    /// A batch of presence reports stored.
    pub const PRESENCE: Purpose = Purpose {
        purpose: "presence",
    };
    /// A batch of sketch syncs merged.
    pub const UNIQUE: Purpose = Purpose { purpose: "unique" };
}

/// The endpoints the edge calls, each with its own outcome counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/sync`: `tally_syncs_total`.
    Sync,
    /// `POST /v1/read`: `tally_reads_total`.
    Read,
    /// `POST /v1/retire`: `tally_retires_total`.
    Retire,
    /// `POST /v1/presence`: `tally_presence_reports_total`.
    Presence,
    /// `POST /v1/read/presence`: `tally_presence_reads_total`.
    PresenceRead,
    /// `POST /v1/unique`: `tally_sketch_syncs_total`.
    Unique,
    /// `POST /v1/read/unique`: `tally_sketch_reads_total`.
    UniqueRead,
}

/// Label of an edge region.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Region {
    /// The region a sync named.
    pub region: String,
}

/// How long an edge object's report of its oldest unsynced hit counts for its region: an
/// object that stopped syncing (quiet, retired, or gone) drops out after it.
pub const UNSYNCED_REPORT_TTL: Duration = Duration::from_secs(300);

/// Reports kept per region before the expired ones are dropped (at most one per edge object
/// incarnation that synced within [`UNSYNCED_REPORT_TTL`]).
const UNSYNCED_REPORTS_PER_REGION: usize = 100_000;

/// How old each edge object's oldest hit the merger does not have was at its last sync, by
/// region: the age its sync said (`Tally-Unsynced-Age`) if that sync was not committed, else
/// 0. The largest recent one per region is the gauge `tally_edge_unsynced_age_seconds`: a
/// region whose syncs arrive but are refused or fail (a stuck edge) shows a growing age, a
/// healthy one 0, a quiet one (no syncs) none.
#[derive(Debug, Default)]
pub struct UnsyncedAges {
    reports: Mutex<HashMap<String, RegionReports>>,
}

/// A region's reports: per replica, the age (ms) its last sync said, and when it came.
type RegionReports = HashMap<ReplicaId, (u64, Instant)>;

impl UnsyncedAges {
    /// Records that `replica` of `region` had, at `at`, unsynced hits as old as `age_ms`.
    pub fn report(&self, region: &str, replica: ReplicaId, age_ms: u64, at: Instant) {
        let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        let by_replica = reports.entry(region.to_owned()).or_default();
        by_replica.insert(replica, (age_ms, at));
        if by_replica.len() > UNSYNCED_REPORTS_PER_REGION {
            by_replica.retain(|_, (_, t)| at.saturating_duration_since(*t) < UNSYNCED_REPORT_TTL);
        }
    }

    /// Per region, the largest age (ms) reported within [`UNSYNCED_REPORT_TTL`] before `now`;
    /// older reports, and regions left without any, are forgotten.
    pub fn by_region(&self, now: Instant) -> Vec<(String, u64)> {
        let mut reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        reports.retain(|_, by_replica| {
            by_replica.retain(|_, (_, t)| now.saturating_duration_since(*t) < UNSYNCED_REPORT_TTL);
            !by_replica.is_empty()
        });
        let mut ages: Vec<(String, u64)> = reports
            .iter()
            .map(|(region, by_replica)| {
                let oldest = by_replica.values().map(|(age, _)| *age).max().unwrap_or(0);
                (region.clone(), oldest)
            })
            .collect();
        ages.sort();
        ages
    }
}

/// Label of a counter kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// `g` or `pn`.
    pub kind: &'static str,
}

/// Every metric of the merger.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Syncs by outcome.
    pub syncs: Family<Outcome, Counter>,
    /// Batch reads (`POST /v1/read`) by outcome.
    pub reads: Family<Outcome, Counter>,
    /// Retirements (`POST /v1/retire`) by outcome.
    pub retires: Family<Outcome, Counter>,
    /// Presence reports (`POST /v1/presence`) by outcome.
    pub presence_reports: Family<Outcome, Counter>,
    /// Presence reads (`POST /v1/read/presence`) by outcome.
    pub presence_reads: Family<Outcome, Counter>,
    /// Sketch syncs (`POST /v1/unique`) by outcome.
    pub sketch_syncs: Family<Outcome, Counter>,
    /// Sketch reads (`POST /v1/read/unique`) by outcome.
    pub sketch_reads: Family<Outcome, Counter>,
    /// Expired presence reports deleted.
    pub presence_pruned: Counter,
    /// Daily sketches deleted past `--sketch-days`.
    pub sketches_pruned: Counter,
    /// Rows of retired replicas deleted past `--retired-replica-days`.
    pub replicas_pruned: Counter,
    /// Rebased carries netted against their counters' cuts past `--reclaim-days`.
    pub carries_reclaimed: Counter,
    /// Milestone announcements to the webhook by outcome (`ok`, `failed`).
    pub announcements: Family<Outcome, Counter>,
    /// Counters answered by batch reads.
    pub counters_read: Counter,
    /// Counters of version-2 syncs rejected alone, by error code.
    pub counters_rejected: Family<Code, Counter>,
    /// Transactions committed, by purpose: a read never adds one.
    pub commits: Family<Purpose, Counter>,
    /// Error responses by code (every endpoint).
    pub errors: Family<Code, Counter>,
    /// Slot totals received in acknowledged syncs.
    pub slots_received: Counter,
    /// Slots that grew (merged), of those received.
    pub slots_merged: Counter,
    /// Syncs per commit.
    pub batch_syncs: Histogram,
    /// Slot rows written per commit.
    pub batch_slots: Histogram,
    /// Presence reports per commit.
    pub batch_reports: Histogram,
    /// Sketch syncs per commit.
    pub batch_sketch_syncs: Histogram,
    /// Seconds per group commit of syncs (transaction begin to durable).
    pub commit_seconds: Histogram,
    /// Failed commits.
    pub commit_failures: Counter,
    /// Snapshot rows written.
    pub snapshots_written: Counter,
    /// Counters stored, by kind (counted at scrape time).
    pub counters: Family<Kind, Gauge>,
    /// Replica incarnations known.
    pub replicas: Gauge,
    /// Syncs, retirements, presence reports and sketch syncs waiting in the commit queue.
    pub queue_depth: Gauge,
    /// Counters held in the cache.
    pub cached_counters: Gauge,
    /// What the cache did.
    pub cache: CacheStats,
    /// Public presence and unique reads answered from memory (`views.rs`).
    pub view_hits: Counter,
    /// Public presence and unique reads that asked the store.
    pub view_misses: Counter,
    /// Counters reloaded because another merger changed them.
    pub peer_refreshes: Counter,
    /// Times every held counter was reloaded because changes of other mergers were lost.
    pub peer_full_reloads: Counter,
    /// Per region, the largest age of an edge object's oldest hit the merger does not have,
    /// as of its last sync, in seconds (set at scrape time from [`Metrics::unsynced`]).
    pub edge_unsynced_age: Family<Region, Gauge<f64, AtomicU64>>,
    /// What edge objects reported of their oldest unsynced hits.
    pub unsynced: UnsyncedAges,
    /// Seconds since this merger last took in every change other mergers committed (a
    /// catch-up round of the shared store's change log); 0 without other mergers (SQLite).
    pub peer_catchup_age: Gauge<f64, AtomicU64>,
    /// Won milestones whose announcement the webhook has not acknowledged yet (counted by the
    /// announcement task every 5 s; 0 without `--webhook-url`).
    pub announcements_pending: Gauge,
    /// History points deleted by retention and downsampling.
    pub history_pruned: Counter,
    /// Replica incarnations retired.
    pub retirements: Counter,
    /// Slots folded into carries by retirements.
    pub slots_folded: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tally");
        let m = Metrics {
            syncs: Family::default(),
            reads: Family::default(),
            retires: Family::default(),
            presence_reports: Family::default(),
            presence_reads: Family::default(),
            sketch_syncs: Family::default(),
            sketch_reads: Family::default(),
            presence_pruned: Counter::default(),
            sketches_pruned: Counter::default(),
            replicas_pruned: Counter::default(),
            carries_reclaimed: Counter::default(),
            announcements: Family::default(),
            counters_read: Counter::default(),
            counters_rejected: Family::default(),
            commits: Family::default(),
            errors: Family::default(),
            slots_received: Counter::default(),
            slots_merged: Counter::default(),
            batch_syncs: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            batch_slots: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            batch_reports: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            batch_sketch_syncs: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            commit_seconds: Histogram::new(exponential_buckets(0.0002, 2.0, 14)),
            commit_failures: Counter::default(),
            snapshots_written: Counter::default(),
            counters: Family::default(),
            replicas: Gauge::default(),
            queue_depth: Gauge::default(),
            cached_counters: Gauge::default(),
            cache: CacheStats::default(),
            view_hits: Counter::default(),
            view_misses: Counter::default(),
            peer_refreshes: Counter::default(),
            peer_full_reloads: Counter::default(),
            edge_unsynced_age: Family::default(),
            unsynced: UnsyncedAges::default(),
            peer_catchup_age: Gauge::default(),
            announcements_pending: Gauge::default(),
            history_pruned: Counter::default(),
            retirements: Counter::default(),
            slots_folded: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("syncs", "Sync requests by outcome", m.syncs.clone());
        registry.register(
            "reads",
            "Batch read requests (POST /v1/read) by outcome",
            m.reads.clone(),
        );
        registry.register(
            "retires",
            "Retirement requests (POST /v1/retire) by outcome",
            m.retires.clone(),
        );
        registry.register(
            "presence_reports",
            "Presence reports (POST /v1/presence) by outcome",
            m.presence_reports.clone(),
        );
        registry.register(
            "presence_reads",
            "Presence reads (POST /v1/read/presence) by outcome",
            m.presence_reads.clone(),
        );
        registry.register(
            "sketch_syncs",
            "Unique-visitor sketch syncs (POST /v1/unique) by outcome",
            m.sketch_syncs.clone(),
        );
        registry.register(
            "sketch_reads",
            "Unique-visitor sketch reads (POST /v1/read/unique) by outcome",
            m.sketch_reads.clone(),
        );
        registry.register(
            "presence_pruned",
            "Expired presence reports deleted",
            m.presence_pruned.clone(),
        );
        registry.register(
            "sketches_pruned",
            "Daily unique-visitor sketches deleted past --sketch-days",
            m.sketches_pruned.clone(),
        );
        registry.register(
            "replicas_pruned",
            "Rows of retired replica incarnations deleted past --retired-replica-days",
            m.replicas_pruned.clone(),
        );
        registry.register(
            "carries_reclaimed",
            "Rebased carries netted against their counters' cuts past --reclaim-days (deleted when they held nothing else)",
            m.carries_reclaimed.clone(),
        );
        registry.register(
            "announcements",
            "Milestone winners POSTed to the webhook, by outcome (ok: acknowledged; failed: retried later)",
            m.announcements.clone(),
        );
        registry.register(
            "counters_read",
            "Counters answered by batch reads",
            m.counters_read.clone(),
        );
        registry.register(
            "counters_rejected",
            "Counters of version-2 syncs rejected alone (not committed), by error code",
            m.counters_rejected.clone(),
        );
        registry.register(
            "commits",
            "Transactions committed, by purpose (sync, snapshot, presence or unique)",
            m.commits.clone(),
        );
        // Present from the start, at 0, so "no commit happened" reads as a number, not as
        // a missing line; likewise the series the alert rules compare
        // (ops/prometheus/tally-rules.yml): a family with no series is not exported at all,
        // and "every announcement failed, none was ok" needs the `ok` series before the
        // first success.
        for purpose in [
            Purpose::SYNC,
            Purpose::SNAPSHOT,
            Purpose::PRESENCE,
            Purpose::UNIQUE,
        ] {
            let _ = m.commits.get_or_create(&purpose);
        }
        for endpoint in [
            &m.syncs,
            &m.reads,
            &m.retires,
            &m.presence_reports,
            &m.sketch_syncs,
        ] {
            let _ = endpoint.get_or_create(&Outcome { outcome: "ok" });
        }
        for outcome in ["ok", "failed"] {
            let _ = m.announcements.get_or_create(&Outcome { outcome });
        }
        for code in ["overloaded", "database_unavailable"] {
            let _ = m.errors.get_or_create(&Code { code });
        }
        registry.register("errors", "Error responses by code", m.errors.clone());
        registry.register(
            "slots_received",
            "Slot totals received in acknowledged syncs",
            m.slots_received.clone(),
        );
        registry.register(
            "slots_merged",
            "Received slot totals that raised a slot",
            m.slots_merged.clone(),
        );
        registry.register(
            "commit_batch_syncs",
            "Syncs per commit",
            m.batch_syncs.clone(),
        );
        registry.register(
            "commit_batch_slots",
            "Slot rows written per commit",
            m.batch_slots.clone(),
        );
        registry.register(
            "commit_batch_reports",
            "Presence reports per commit",
            m.batch_reports.clone(),
        );
        registry.register(
            "commit_batch_sketch_syncs",
            "Sketch syncs per commit",
            m.batch_sketch_syncs.clone(),
        );
        registry.register("commit_seconds", "Commit latency", m.commit_seconds.clone());
        registry.register(
            "commit_failures",
            "Commits that failed",
            m.commit_failures.clone(),
        );
        registry.register(
            "snapshots_written",
            "Snapshot rows written",
            m.snapshots_written.clone(),
        );
        registry.register("counters", "Counters stored, by kind", m.counters.clone());
        registry.register(
            "replicas",
            "Replica incarnations alive (not retired)",
            m.replicas.clone(),
        );
        registry.register(
            "edge_unsynced_age_seconds",
            "Per region, the age of the oldest hit an edge object held that the merger did not \
             commit, as of its last sync (the largest over the region's objects that synced in \
             the last 5 minutes; 0 when their syncs were committed)",
            m.edge_unsynced_age.clone(),
        );
        registry.register(
            "peer_catchup_age_seconds",
            "Seconds since this merger last took in every change other mergers committed to the \
             shared store (0 without other mergers)",
            m.peer_catchup_age.clone(),
        );
        registry.register(
            "announcements_pending",
            "Won milestones whose announcement the webhook has not acknowledged yet",
            m.announcements_pending.clone(),
        );
        registry.register(
            "commit_queue_depth",
            "Syncs, retirements, presence reports and sketch syncs waiting in the commit queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "cache_counters",
            "Counters held in the merger's cache",
            m.cached_counters.clone(),
        );
        registry.register(
            "cache_hits",
            "Reads that found every counter they asked for in the cache",
            m.cache.hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Counters loaded from the store into the cache",
            m.cache.misses.clone(),
        );
        registry.register(
            "view_cache_hits",
            "Public presence, unique and milestone list reads answered from memory",
            m.view_hits.clone(),
        );
        registry.register(
            "view_cache_misses",
            "Public presence, unique and milestone list reads that asked the store",
            m.view_misses.clone(),
        );
        registry.register(
            "history_points_dropped",
            "History points not written: too many evicted counters were due at once",
            m.cache.points_dropped.clone(),
        );
        registry.register(
            "cache_evictions",
            "Counters evicted from the cache",
            m.cache.evictions.clone(),
        );
        registry.register(
            "retirements",
            "Replica incarnations retired (POST /v1/retire that folded)",
            m.retirements.clone(),
        );
        registry.register(
            "slots_folded",
            "Slots folded into their objects' carries by retirements",
            m.slots_folded.clone(),
        );
        registry.register(
            "carries_merged",
            "Carries of retired incarnations, sent with a sync, that raised a counter's count",
            m.cache.carries_merged.clone(),
        );
        registry.register(
            "history_pruned",
            "History points deleted by retention and downsampling",
            m.history_pruned.clone(),
        );
        registry.register(
            "peer_refreshes",
            "Counters reloaded because another merger changed them",
            m.peer_refreshes.clone(),
        );
        registry.register(
            "peer_full_reloads",
            "Times every held counter was reloaded because changes of other mergers were lost",
            m.peer_full_reloads.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// Sets `tally_edge_unsynced_age_seconds` from the reports recent at `now`.
    pub fn publish_unsynced(&self, now: Instant) {
        self.edge_unsynced_age.clear();
        for (region, age_ms) in self.unsynced.by_region(now) {
            #[allow(clippy::cast_precision_loss, reason = "an age in ms, far below 2^53")]
            let seconds = age_ms as f64 / 1000.0;
            self.edge_unsynced_age
                .get_or_create(&Region { region })
                .set(seconds);
        }
    }

    /// Sets `tally_peer_catchup_age_seconds` for `now` from when the store's watcher last
    /// finished a catch-up round (it stays 0 until a first, and without other mergers).
    pub fn publish_catchup(&self, now: Instant, caught_up_at: Option<Instant>) {
        if let Some(at) = caught_up_at {
            self.peer_catchup_age
                .set(now.saturating_duration_since(at).as_secs_f64());
        }
    }

    /// Counts one committed transaction.
    pub fn committed(&self, purpose: Purpose) {
        self.commits.get_or_create(&purpose).inc();
    }

    /// Counts one request to an edge-facing endpoint by outcome (`ok` or the error code).
    pub fn request(&self, endpoint: Endpoint, outcome: &'static str) {
        let family = match endpoint {
            Endpoint::Sync => &self.syncs,
            Endpoint::Read => &self.reads,
            Endpoint::Retire => &self.retires,
            Endpoint::Presence => &self.presence_reports,
            Endpoint::PresenceRead => &self.presence_reads,
            Endpoint::Unique => &self.sketch_syncs,
            Endpoint::UniqueRead => &self.sketch_reads,
        };
        family.get_or_create(&Outcome { outcome }).inc();
    }

    /// Counts one error response.
    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&Code { code }).inc();
    }
}
