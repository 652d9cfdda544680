//! The differential test of the counter lattice: seeded random histories of syncs (with
//! duplicates, reorders, replays of old syncs, syncs lost on the way, and the carries edge
//! objects send of their own retired incarnations, some rebased into a later frame),
//! retirements (object folds), resets,
//! deletes, restarts and restores from a backup, run through `tally_crdt::CounterState` (the
//! model) and through the SQLite and the Postgres stores. After every step, each store's load
//! of every counter is the model's state: the same slots, carries, epoch, cuts and value. So
//! the SQL that merges (the slot upsert's max, the carry upsert's frames and max, the deletion
//! of the slots a carry
//! holds, the fold of a retirement, the cuts of a reset) is the lattice's join, retire and
//! reset.
//!
//! A restore puts back a copy of the database taken at an earlier step, and the model of that
//! step; then every edge object re-sends its slot and its carry of every counter it counted
//! (as the edge's anti-entropy does). Unless a reset came in between (which no edge can
//! re-send), the store then holds what it would have held without the restore: the carries
//! heal what the retirements since the backup folded.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tally_crdt::{
    CounterKey, CounterKind, CounterState, Frame, Region, ReplicaId, SlotTotals, Timestamp,
};
use tally_e2e::postgres::PostgresCluster;
use tally_merger::config::Durability;
use tally_merger::store::postgres::PostgresStore;
use tally_merger::store::sqlite::SqliteStore;
use tally_merger::store::{ReplicaRow, ResetOutcome, ResetRequest, SlotRow, Store, sent_carry};

/// Histories per store, and steps per history.
const HISTORIES: u64 = 12;
const STEPS: usize = 60;
/// Edge objects; each is one replica incarnation at a time.
const OBJECTS: usize = 5;

fn counters() -> [CounterKey; 2] {
    [
        CounterKey::new(CounterKind::G, "likes").expect("a valid id"),
        CounterKey::new(CounterKind::Pn, "viewers").expect("a valid id"),
    ]
}

fn region(object: usize) -> Region {
    Arc::from(if object.is_multiple_of(2) { "eu" } else { "us" })
}

/// One edge object as the edge holds it: its current incarnation and, per counter, that
/// incarnation's totals and the carry of every earlier one (the sums of their final slots).
#[derive(Debug, Clone)]
struct Object {
    incarnation: ReplicaId,
    own: Vec<SlotTotals>,
    carried: Vec<SlotTotals>,
    /// Per counter, the frame of its carry (0: never rebased) and what it reclaimed.
    frame: Vec<Option<Frame>>,
}

impl Object {
    /// Incarnation 0 of object `bits`.
    fn new(bits: u128) -> Object {
        Object {
            incarnation: ReplicaId::lineage(ReplicaId::from_u128(bits << 32), 0),
            own: vec![SlotTotals::default(); counters().len()],
            carried: vec![SlotTotals::default(); counters().len()],
            frame: vec![None; counters().len()],
        }
    }

    /// Its row of `counter`, as a sync at `at` sends it (with its carry, unless `carry`
    /// is false: an edge a version behind).
    fn row(&self, counter: usize, at: Timestamp, carry: bool) -> SlotRow {
        SlotRow {
            key: counters()[counter].clone(),
            replica: self.incarnation,
            totals: self.own[counter],
            at,
            visits: Vec::new(),
            carry: carry
                .then(|| sent_carry(self.incarnation, self.carried[counter], self.frame[counter]))
                .flatten(),
        }
    }

    /// Rebases its carry of `counter` into the next frame: what it carried is reclaimed, and
    /// its carry starts again from zero.
    fn rebase(&mut self, counter: usize) {
        let (frame, reclaimed) =
            self.frame[counter].map_or((0, SlotTotals::default()), |f| (f.epoch, f.reclaimed));
        let carried = std::mem::take(&mut self.carried[counter]);
        self.frame[counter] = Some(Frame {
            epoch: frame + 1,
            reclaimed: SlotTotals {
                p: reclaimed.p + carried.p,
                n: reclaimed.n + carried.n,
            },
        });
    }

    /// Rotates: the incarnation's totals are final, and join the carry of the next one.
    fn rotate(&mut self) {
        for (carried, own) in self.carried.iter_mut().zip(&mut self.own) {
            carried.p += own.p;
            carried.n += own.n;
            *own = SlotTotals::default();
        }
        self.incarnation = ReplicaId::lineage(self.incarnation, self.incarnation.generation() + 1);
    }
}

/// One sync as an object sent it (and the store committed it): what a replay sends again.
#[derive(Debug, Clone)]
struct Sent {
    object: usize,
    row: SlotRow,
}

/// The edge, and the models, of one history.
struct World {
    rng: StdRng,
    /// The model of the store: what it holds.
    models: Vec<CounterState>,
    /// The model of a store never restored.
    truth: Vec<CounterState>,
    objects: Vec<Object>,
    sent: Vec<Sent>,
    /// Per backup taken: the models then, and whether a reset has happened since.
    backups: Vec<(Vec<CounterState>, bool)>,
    now: i64,
}

impl World {
    fn new(seed: u64) -> World {
        let bits = u128::from(seed) * 1_000;
        World {
            rng: StdRng::seed_from_u64(seed),
            models: counters().iter().map(|_| CounterState::new()).collect(),
            truth: counters().iter().map(|_| CounterState::new()).collect(),
            objects: (1..=OBJECTS as u128)
                .map(|i| Object::new(bits + i))
                .collect(),
            sent: Vec::new(),
            backups: Vec::new(),
            now: 1_000,
        }
    }

    fn at(&mut self) -> Timestamp {
        self.now += 1;
        Timestamp::from_unix_ms(self.now)
    }

    /// Commits `rows` of `object` to `store` (`times` times) and to both models.
    async fn sync(&mut self, store: &dyn Store, object: usize, rows: &[SlotRow], times: usize) {
        let region = region(object);
        let replicas = [ReplicaRow {
            replica: rows[0].replica,
            region: region.to_string(),
            at: rows[0].at,
        }];
        for _ in 0..times {
            store.commit(&replicas, rows).await.expect("commit");
        }
        for models in [&mut self.models, &mut self.truth] {
            for row in rows {
                let counter = counters().iter().position(|k| *k == row.key);
                let model = &mut models[counter.expect("one of them")];
                if let Some((object, carry)) = row.carry(&region) {
                    model.merge_carry(object, &carry);
                }
                model.merge_slot(row.replica, &region, row.totals);
            }
        }
    }
}

/// One step, applied to the models and to `store`; a description for the failure message.
async fn step(world: &mut World, store: &dyn Store) -> String {
    let keys = counters();
    let roll = world.rng.random_range(0..100);
    if roll < 60 || world.sent.is_empty() {
        // An object counts and syncs its totals of some counters (with its carries, unless
        // it runs a version behind); some syncs are delivered twice, some are lost.
        let object = world.rng.random_range(0..OBJECTS);
        let carry = world.rng.random_bool(0.8);
        let at = world.at();
        let mut rows = Vec::new();
        for counter in 0..keys.len() {
            if world.rng.random_bool(0.4) && counter + 1 < keys.len() {
                continue;
            }
            let own = &mut world.objects[object].own[counter];
            own.p += world.rng.random_range(1..20);
            if keys[counter].kind() == CounterKind::Pn {
                own.n += world.rng.random_range(0..20);
            }
            rows.push(world.objects[object].row(counter, at, carry));
        }
        let replica = rows[0].replica;
        if world.rng.random_bool(0.1) {
            return format!("lost sync of {replica}");
        }
        let times = if world.rng.random_bool(0.2) { 2 } else { 1 };
        world.sync(store, object, &rows, times).await;
        world.sent.extend(rows.iter().map(|row| Sent {
            object,
            row: row.clone(),
        }));
        format!(
            "sync of {replica} ({} counters, carry: {carry}, x{times})",
            rows.len()
        )
    } else if roll < 75 {
        // A replay of an old sync, late: a lower total (or of a retired replica, or one a
        // carry holds) is nothing.
        let old = world
            .sent
            .choose(&mut world.rng)
            .expect("not empty")
            .clone();
        let mut row = old.row;
        row.at = world.at();
        world
            .sync(store, old.object, std::slice::from_ref(&row), 1)
            .await;
        format!("replay of {} at {:?}", row.replica, row.totals)
    } else if roll < 81 {
        // An object rebases its carry of a counter into a later frame and syncs it.
        let object = world.rng.random_range(0..OBJECTS);
        let counter = world.rng.random_range(0..keys.len());
        world.objects[object].rebase(counter);
        let at = world.at();
        let row = world.objects[object].row(counter, at, true);
        let replica = row.replica;
        world
            .sync(store, object, std::slice::from_ref(&row), 1)
            .await;
        world.sent.push(Sent { object, row });
        format!("rebase of {replica}'s carry of {}", keys[counter])
    } else if roll < 87 {
        // An object rotates: its incarnation is retired (its object's slots up to it fold
        // into the object's carries) and the next one counts from zero.
        let object = world.rng.random_range(0..OBJECTS);
        let replica = world.objects[object].incarnation;
        let at = world.at();
        store.retire(replica, at).await.expect("retire");
        for model in world.models.iter_mut().chain(&mut world.truth) {
            model.retire(replica);
        }
        world.objects[object].rotate();
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
        let model = &world.models[counter];
        let known =
            !model.slots().is_empty() || !model.carries().is_empty() || !model.bases().is_empty();
        match outcome {
            ResetOutcome::Done { .. } => {
                assert!(known, "the store reset a counter the model never counted");
                world.models[counter].reset(at, delete);
                world.truth[counter].reset(at, delete);
            }
            ResetOutcome::Unknown => assert!(!known, "the store lost a counted counter"),
            ResetOutcome::EpochMismatch { .. } => unreachable!("no epoch was expected"),
        }
        for backup in &mut world.backups {
            backup.1 = true;
        }
        format!(
            "{} {}",
            if delete { "delete" } else { "reset" },
            keys[counter]
        )
    }
}

/// Every edge object re-sends its slot and its carry of every counter it counted, as the
/// edge's anti-entropy does after a restore.
async fn resend_everything(world: &mut World, store: &dyn Store) {
    for object in 0..OBJECTS {
        let at = world.at();
        let edge = &world.objects[object];
        let rows: Vec<SlotRow> = (0..counters().len())
            .filter(|&c| {
                edge.own[c] != SlotTotals::default()
                    || edge.carried[c] != SlotTotals::default()
                    || edge.frame[c].is_some()
            })
            .map(|c| edge.row(c, at, true))
            .collect();
        if !rows.is_empty() {
            world.sync(store, object, &rows, 1).await;
        }
    }
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

/// Where a history's database lives: opened, copied and replaced as its backend allows.
trait Backend {
    /// Opens the store on the current database.
    async fn open(&self) -> Box<dyn Store>;
    /// Copies the current database (its store closed) as backup `n`.
    async fn backup(&mut self, n: usize);
    /// Makes a fresh copy of backup `n` the current database (its store closed).
    async fn restore(&mut self, n: usize);
}

/// One history against `backend`'s store; answers how many restores it healed whose
/// restored store counted less than the store before it.
async fn history(seed: u64, mut backend: impl Backend) -> usize {
    let mut healed = 0;
    let mut store = backend.open().await;
    let mut world = World::new(seed + 1);
    let mut done = Vec::new();
    for _ in 0..STEPS {
        let roll = world.rng.random_range(0..100);
        if roll < 5 {
            store.close().await;
            store = backend.open().await;
            done.push("restart".to_owned());
        } else if roll < 12 {
            store.close().await;
            drop(store);
            backend.backup(world.backups.len()).await;
            world.backups.push((world.models.clone(), false));
            store = backend.open().await;
            done.push(format!("backup {}", world.backups.len() - 1));
        } else if roll < 16 && !world.backups.is_empty() {
            let n = world.rng.random_range(0..world.backups.len());
            store.close().await;
            drop(store);
            backend.restore(n).await;
            store = backend.open().await;
            let (models, reset_since) = world.backups[n].clone();
            world.models = models;
            let lost = world
                .models
                .iter()
                .zip(&world.truth)
                .any(|(m, t)| m.value() != t.value());
            done.push(format!("restore {n}"));
            check(&world, &*store, &done).await;
            resend_everything(&mut world, &*store).await;
            done.push("every object re-sends".to_owned());
            check(&world, &*store, &done).await;
            if !reset_since {
                healed += usize::from(lost);
                assert!(
                    world.models == world.truth,
                    "the re-sent carries did not heal the restore after:\n{}\nhealed: {:?}\nnever restored: {:?}",
                    done.join("\n"),
                    world.models,
                    world.truth
                );
            }
            world.truth.clone_from(&world.models);
            for backup in &mut world.backups[n + 1..] {
                // Taken in a timeline that is gone: a later restore of one must not expect
                // to meet this one's truth.
                backup.1 = true;
            }
        }
        done.push(step(&mut world, &*store).await);
        check(&world, &*store, &done).await;
    }
    store.close().await;
    healed
}

/// A history's SQLite database: a file per copy in one temporary directory.
struct Sqlite {
    dir: tempfile::TempDir,
    current: PathBuf,
    copies: usize,
}

impl Sqlite {
    fn new() -> Sqlite {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let current = dir.path().join("tally.db");
        Sqlite {
            dir,
            current,
            copies: 0,
        }
    }

    fn backup_path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("backup-{n}.db"))
    }
}

impl Backend for Sqlite {
    async fn open(&self) -> Box<dyn Store> {
        let url = format!("sqlite://{}", self.current.display());
        Box::new(
            SqliteStore::open(&url, Durability::Normal)
                .await
                .expect("the store opens"),
        )
    }

    /// The merger's own online backup (`VACUUM INTO`): one consistent file, with no
    /// write-ahead log beside it. (Copying the files of the closed store raced the closing
    /// connection's checkpoint, which deletes the log: "the write-ahead log copies" failed
    /// once in a few hundred histories.)
    async fn backup(&mut self, n: usize) {
        let url = format!("sqlite://{}", self.current.display());
        tally_merger::backup::sqlite(&url, &self.backup_path(n))
            .await
            .expect("the backup is written");
    }

    /// A new file, copied from the backup (which nothing else opens).
    async fn restore(&mut self, n: usize) {
        self.copies += 1;
        self.current = self.dir.path().join(format!("restored-{}.db", self.copies));
        std::fs::copy(self.backup_path(n), &self.current).expect("the backup copies");
    }
}

#[tokio::test]
async fn the_sqlite_store_holds_what_the_lattice_holds_at_every_step() {
    let mut healed = 0;
    for seed in 0..HISTORIES {
        healed += history(seed, Sqlite::new()).await;
    }
    assert!(
        healed > 0,
        "no history restored a store that had lost counts"
    );
}

/// A history's Postgres databases: copies are databases made from the current one as a
/// template.
struct Postgres<'a> {
    cluster: &'a PostgresCluster,
    /// Prefix of this history's database names.
    name: String,
    current: String,
    copies: usize,
}

impl Postgres<'_> {
    /// Creates database `name` from `template`. The template must have no session: a
    /// closed store's server processes may take a moment to end, so this tries again.
    async fn copy(&self, template: &str, name: &str) {
        let admin = sqlx::PgPool::connect(&self.cluster.url())
            .await
            .expect("the cluster answers");
        let sql = format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\"");
        let mut tries = 0;
        while let Err(e) = sqlx::query(&sql).execute(&admin).await {
            tries += 1;
            assert!(tries < 100, "{sql}: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        admin.close().await;
    }
}

impl Backend for Postgres<'_> {
    async fn open(&self) -> Box<dyn Store> {
        let url = self.cluster.database_url(&self.current);
        Box::new(
            PostgresStore::open(&url, Durability::Normal)
                .await
                .expect("the store opens"),
        )
    }

    async fn backup(&mut self, n: usize) {
        let backup = format!("{}_b{n}", self.name);
        self.copy(&self.current, &backup).await;
    }

    async fn restore(&mut self, n: usize) {
        self.copies += 1;
        let restored = format!("{}_r{}", self.name, self.copies);
        self.copy(&format!("{}_b{n}", self.name), &restored).await;
        self.current = restored;
    }
}

#[tokio::test]
async fn the_postgres_store_holds_what_the_lattice_holds_at_every_step() {
    let Some(cluster) = PostgresCluster::start_unless_skipped("lattice differential").await else {
        return;
    };
    let mut healed = 0;
    for seed in 0..HISTORIES {
        let name = format!("lattice{seed}");
        cluster.create_database(&name).await;
        let backend = Postgres {
            cluster: &cluster,
            current: name.clone(),
            name,
            copies: 0,
        };
        healed += history(seed, backend).await;
    }
    assert!(
        healed > 0,
        "no history restored a store that had lost counts"
    );
}
