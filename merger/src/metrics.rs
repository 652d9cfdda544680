//! [`Metrics`]: what `GET /metrics` exposes, in the Prometheus text format.
//!
//! One registry per merger (no global recorder), so tests can run many mergers in one
//! process.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    /// Seconds per commit (transaction begin to durable).
    pub commit_seconds: Histogram,
    /// Failed commits.
    pub commit_failures: Counter,
    /// Snapshot rows written.
    pub snapshots_written: Counter,
    /// Counters held, by kind.
    pub counters: Family<Kind, Gauge>,
    /// Replica incarnations known.
    pub replicas: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tally");
        let m = Metrics {
            syncs: Family::default(),
            errors: Family::default(),
            slots_received: Counter::default(),
            slots_merged: Counter::default(),
            batch_syncs: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            batch_slots: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            commit_seconds: Histogram::new(exponential_buckets(0.0002, 2.0, 14)),
            commit_failures: Counter::default(),
            snapshots_written: Counter::default(),
            counters: Family::default(),
            replicas: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("syncs", "Sync requests by outcome", m.syncs.clone());
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
        registry.register("counters", "Counters held, by kind", m.counters.clone());
        registry.register("replicas", "Replica incarnations known", m.replicas.clone());
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

    /// Counts one error response.
    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&Code { code }).inc();
    }
}
