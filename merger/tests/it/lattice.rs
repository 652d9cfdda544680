//! The differential test of the counter lattice: seeded random histories of syncs (with
//! duplicates, reorders and replays of old syncs), retirements, resets, deletes and restarts,
//! run through `tally_crdt::CounterState` (the model) and through the SQLite and the Postgres
//! stores. After every step, each store's load of every counter is the model's state: the
//! same slots, bases (with the replicas folded into them), epoch, cuts and value. So the SQL
//! that merges (the slot upsert's max, the fold into a base, the cuts of a reset) is the
//! lattice's join, fold and reset.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tally_crdt::{CounterKey, CounterKind, CounterState, ReplicaId, SlotTotals, Timestamp};
use tally_e2e::postgres::PostgresCluster;
use tally_merger::config::Durability;
use tally_merger::store::postgres::PostgresStore;
use tally_merger::store::sqlite::SqliteStore;
use tally_merger::store::{ReplicaRow, ResetOutcome, ResetRequest, SlotRow, Store};

/// Histories per store, and steps per history.
const HISTORIES: u64 = 12;
const STEPS: usize = 60;
/// Edge objects; each is one replica incarnation at a time.
const OBJECTS: u32 = 5;

fn counters() -> [CounterKey; 2] {
    [
        CounterKey::new(CounterKind::G, "likes").expect("a valid id"),
        CounterKey::new(CounterKind::Pn, "viewers").expect("a valid id"),
    ]
}

fn region(object: u32) -> &'static str {
    if object.is_multiple_of(2) { "eu" } else { "us" }
}

/// One sync as an object sent it (and the store committed it): what a replay sends again.
#[derive(Debug, Clone)]
struct Sent {
    replica: ReplicaId,
    object: u32,
    counter: usize,
    totals: SlotTotals,
}

/// The model and the edge's side of one history.
struct World {
    rng: StdRng,
    models: Vec<CounterState>,
    /// Per object: its incarnation and its own totals per counter.
    incarnations: Vec<(ReplicaId, Vec<SlotTotals>)>,
    sent: Vec<Sent>,
    next_replica: u128,
    now: i64,
}

impl World {
    fn new(seed: u64) -> World {
        let mut world = World {
            rng: StdRng::seed_from_u64(seed),
            models: counters().iter().map(|_| CounterState::new()).collect(),
            incarnations: Vec::new(),
            sent: Vec::new(),
            next_replica: u128::from(seed) * 1_000_000 + 1,
            now: 1_000,
        };
        for _ in 0..OBJECTS {
            let replica = world.fresh_replica();
            world
                .incarnations
                .push((replica, vec![SlotTotals::default(); 2]));
        }
        world
    }

    fn fresh_replica(&mut self) -> ReplicaId {
        self.next_replica += 1;
        ReplicaId::from_u128(self.next_replica)
    }

    fn at(&mut self) -> Timestamp {
        self.now += 1;
        Timestamp::from_unix_ms(self.now)
    }
}

/// One step, applied to the model and to `store`; a description for the failure message.
async fn step(world: &mut World, store: &dyn Store) -> String {
    let keys = counters();
    let roll = world.rng.random_range(0..100);
    if roll < 60 || world.sent.is_empty() {
        // An object counts and syncs its totals of some counters.
        let object = world.rng.random_range(0..OBJECTS);
        let (replica, _) = world.incarnations[object as usize].clone();
        let mut slots = Vec::new();
        let at = world.at();
        for counter in 0..keys.len() {
            if world.rng.random_bool(0.4) && counter + 1 < keys.len() {
                continue;
            }
            let own = &mut world.incarnations[object as usize].1[counter];
            own.p += world.rng.random_range(1..20);
            if keys[counter].kind() == CounterKind::Pn {
                own.n += world.rng.random_range(0..20);
            }
            let totals = *own;
            slots.push(SlotRow {
                key: keys[counter].clone(),
                replica,
                totals,
                at,
                visits: Vec::new(),
            });
            world.sent.push(Sent {
                replica,
                object,
                counter,
                totals,
            });
        }
        // Some syncs are delivered twice.
        let times = if world.rng.random_bool(0.2) { 2 } else { 1 };
        for _ in 0..times {
            commit(store, replica, region(object), &slots, at).await;
        }
        for s in &slots {
            let counter = keys.iter().position(|k| *k == s.key).expect("one of them");
            world.models[counter].merge_slot(replica, &Arc::from(region(object)), s.totals);
        }
        format!("sync of {replica} ({} counters, x{times})", slots.len())
    } else if roll < 75 {
        // A replay of an old sync, late: a lower total (or of a retired replica) is nothing.
        let old = world
            .sent
            .choose(&mut world.rng)
            .expect("not empty")
            .clone();
        let at = world.at();
        let row = SlotRow {
            key: keys[old.counter].clone(),
            replica: old.replica,
            totals: old.totals,
            at,
            visits: Vec::new(),
        };
        commit(store, old.replica, region(old.object), &[row], at).await;
        world.models[old.counter].merge_slot(
            old.replica,
            &Arc::from(region(old.object)),
            old.totals,
        );
        format!("replay of {} at {:?}", old.replica, old.totals)
    } else if roll < 87 {
        // An object rotates: its incarnation is retired and a new one counts from zero.
        let object = world.rng.random_range(0..OBJECTS);
        let (replica, _) = world.incarnations[object as usize].clone();
        let at = world.at();
        store.retire(replica, at).await.expect("retire");
        for model in &mut world.models {
            model.retire(replica);
        }
        let fresh = world.fresh_replica();
        world.incarnations[object as usize] = (fresh, vec![SlotTotals::default(); 2]);
        format!("retire {replica}")
    } else {
        // A reset or a delete of one counter.
        let counter = world.rng.random_range(0..keys.len());
        let delete = world.rng.random_bool(0.3);
        let at = world.at();
        let request = ResetRequest {
            delete,
            expect_epoch: None,
            at,
        };
        let outcome = store.reset(&keys[counter], request).await.expect("reset");
        let model = &mut world.models[counter];
        let known = !model.slots().is_empty() || !model.bases().is_empty();
        match outcome {
            ResetOutcome::Done { .. } => {
                assert!(known, "the store reset a counter the model never counted");
                model.reset(at, delete);
            }
            ResetOutcome::Unknown => assert!(!known, "the store lost a counted counter"),
            ResetOutcome::EpochMismatch { .. } => unreachable!("no epoch was expected"),
        }
        format!(
            "{} {}",
            if delete { "delete" } else { "reset" },
            keys[counter]
        )
    }
}

async fn commit(
    store: &dyn Store,
    replica: ReplicaId,
    region: &str,
    slots: &[SlotRow],
    at: Timestamp,
) {
    let replicas = [ReplicaRow {
        replica,
        region: region.to_owned(),
        at,
    }];
    store.commit(&replicas, slots).await.expect("commit");
}

/// Every counter as `store` loads it is the model's state.
async fn check(world: &World, store: &dyn Store, done: &[String]) {
    let keys = counters();
    let loaded = store.load(&keys).await.expect("load");
    for (counter, key) in keys.iter().enumerate() {
        let model = &world.models[counter];
        let state = loaded
            .iter()
            .find(|c| c.key == *key)
            .map(|c| c.state())
            .unwrap_or_default();
        assert!(
            state == *model && state.value() == model.value(),
            "{} after:\n{}\nstore: {state:?}\nmodel: {model:?}",
            key,
            done.join("\n")
        );
    }
}

/// One history against the store `open` opens (again, for each restart).
async fn history<S, F>(seed: u64, open: impl Fn() -> F)
where
    S: Store,
    F: std::future::Future<Output = S>,
{
    let mut store = open().await;
    let mut world = World::new(seed + 1);
    let mut done = Vec::new();
    for _ in 0..STEPS {
        if world.rng.random_bool(0.05) {
            store.close().await;
            store = open().await;
            done.push("restart".to_owned());
        }
        done.push(step(&mut world, &store).await);
        check(&world, &store, &done).await;
    }
    store.close().await;
}

#[tokio::test]
async fn the_sqlite_store_holds_what_the_lattice_holds_at_every_step() {
    for seed in 0..HISTORIES {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("tally.db").display());
        history(seed, || async {
            SqliteStore::open(&url, Durability::Normal)
                .await
                .expect("the store opens")
        })
        .await;
    }
}

#[tokio::test]
async fn the_postgres_store_holds_what_the_lattice_holds_at_every_step() {
    let Some(cluster) = PostgresCluster::start_unless_skipped("lattice differential").await else {
        return;
    };
    for seed in 0..HISTORIES {
        let url = cluster.create_database(&format!("lattice{seed}")).await;
        history(seed, || async {
            PostgresStore::open(&url, Durability::Normal)
                .await
                .expect("the store opens")
        })
        .await;
    }
}
