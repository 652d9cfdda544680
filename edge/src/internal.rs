//! The messages between the Worker and its Durable Objects (never seen by clients).
//!
//! The Worker parses and checks the public request, then sends one of these to the object
//! that serves the counter, as `POST https://replica/hit` or `POST https://replica/read`
//! with a JSON body; the object answers [`Answer`]s, or an API error with its status.

use serde::{Deserialize, Serialize};
use tally_crdt::{CounterKey, ReplicaId, SlotTotals};

use crate::counter::View;
use crate::milestone::Verdict;

/// The internal route of a hit.
pub const HIT_PATH: &str = "/hit";
/// The internal route of a read.
pub const READ_PATH: &str = "/read";

/// A hit to count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hit {
    /// The counter.
    pub key: CounterKey,
    /// What to add to the object's own slot.
    pub add: SlotTotals,
    /// The region the object serves.
    pub region: String,
    /// Who sent it (the client address), for the new-id budget.
    pub client: String,
    /// Whether the application's write key came with it (no new-id budget then).
    pub trusted: bool,
    /// The client's visitor key, kept only if the counter is near a milestone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visitor: Option<String>,
}

/// Counters to read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Read {
    /// The counters, each once.
    pub keys: Vec<CounterKey>,
    /// The region the object serves.
    pub region: String,
}

/// What the object answers about one counter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    /// The counter.
    pub key: CounterKey,
    /// Its view; `None` when nothing is known of it and the merger cannot be reached.
    pub view: Option<View>,
    /// After a hit: the replica that counted it and its slot's increment total right after
    /// it, from which the Worker signs the hit's receipt ([`tally_crdt::Receipt`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<(ReplicaId, u64)>,
    /// After a hit on the exact path (its counter near a milestone): whether it won.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}
