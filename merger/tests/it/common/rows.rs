//! The rows the store tests write and read: counter keys, replicas, times, registrations and
//! slots, and a slot's totals as loaded (`store_contract.rs`, `postgres_store.rs`).

use tally_crdt::{CounterKey, CounterKind, ReplicaId, SlotTotals, Timestamp};
use tally_merger::store::{ReplicaRow, SlotRow, Store};

pub fn key(kind: CounterKind, id: &str) -> CounterKey {
    CounterKey::new(kind, id).expect("valid counter id")
}

pub fn g(id: &str) -> CounterKey {
    key(CounterKind::G, id)
}

pub fn replica(n: u128) -> ReplicaId {
    ReplicaId::from_u128(n)
}

pub fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(ms)
}

pub fn registered(replica: ReplicaId, region: &str, ms: i64) -> ReplicaRow {
    ReplicaRow {
        replica,
        region: region.to_owned(),
        at: at(ms),
    }
}

pub fn slot(key: &CounterKey, replica: ReplicaId, p: u64, n: u64, ms: i64) -> SlotRow {
    SlotRow {
        key: key.clone(),
        replica,
        totals: SlotTotals { p, n },
        at: at(ms),
        visits: Vec::new(),
        carry: None,
    }
}

/// The totals of one slot as loaded.
pub async fn loaded_totals(store: &dyn Store, key: &CounterKey, r: ReplicaId) -> SlotTotals {
    let counters = store.load(std::slice::from_ref(key)).await.expect("load");
    let counter = counters.first().expect("the counter is stored");
    counter
        .slots
        .iter()
        .find(|s| s.replica == r)
        .expect("the slot is stored")
        .totals
}
