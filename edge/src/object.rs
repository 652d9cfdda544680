//! The shell every Durable Object of the edge shares (the counter's [`crate::counter::object`],
//! [`crate::presence`] and [`crate::unique`]): its state loaded once into a cell and used between
//! awaits only, its one alarm armed from a [`Scheduler`] and driven job by job, and the storage all
//! of them keep (the `meta` table, [`StoreError`]). Each object adds its state, its loading and its
//! passes.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;
use tally_crdt::{ReplicaId, Timestamp};
use worker::wasm_bindgen::JsValue;
use worker::wasm_bindgen::prelude::wasm_bindgen;
use worker::{Env, Response, Result, SqlStorage, State, console_error};

use crate::api::ApiError;
use crate::runtime::now;
use crate::scheduler::{Job, Scheduler};

/// The shortest delay an alarm is set with (see [`Shell::arm`]).
const MIN_ALARM_DELAY_MS: u64 = 25;

/// An object's loaded state: it holds the scheduler of the object's one alarm.
pub trait Loaded {
    /// The scheduler of the object's jobs.
    fn scheduler(&mut self) -> &mut Scheduler;
}

/// What every object holds: the runtime's state and environment, and its loaded state.
pub struct Shell<I> {
    /// The object's state (storage, sockets).
    pub state: State,
    /// The Worker's environment (vars, secrets, bindings).
    pub env: Env,
    inner: RefCell<Option<I>>,
}

impl<I: Loaded> Shell<I> {
    /// An object not loaded yet.
    pub fn new(state: State, env: Env) -> Self {
        Shell {
            state,
            env,
            inner: RefCell::new(None),
        }
    }

    /// Whether the state is loaded.
    pub fn loaded(&self) -> bool {
        self.inner.borrow().is_some()
    }

    /// Keeps the state a load made, and arms the alarm for what its scheduler wants. The
    /// caller checked [`Shell::loaded`] after its last await; a state loaded meanwhile is kept.
    pub async fn keep(&self, loaded: I, now: Timestamp) {
        {
            let mut inner = self.inner.borrow_mut();
            if inner.is_some() {
                return;
            }
            *inner = Some(loaded);
        }
        let next = self.with(|i| i.scheduler().rearm(now));
        self.arm(next).await;
    }

    /// Runs `f` on the loaded state; never across an await.
    ///
    /// # Panics
    ///
    /// Before the state is loaded: each object loads before any use of it.
    pub fn with<T>(&self, f: impl FnOnce(&mut I) -> T) -> T {
        let mut guard = self.inner.borrow_mut();
        f(guard
            .as_mut()
            .expect("load() runs before any use of the state"))
    }

    /// Runs `f` on the loaded state if it is loaded and not in use: for what runs when a
    /// future is dropped (a guard's `Drop`), where the state may be borrowed already.
    pub fn try_with(&self, f: impl FnOnce(&mut I)) {
        if let Ok(mut guard) = self.inner.try_borrow_mut()
            && let Some(inner) = guard.as_mut()
        {
            f(inner);
        }
    }

    /// Sets the alarm, if the scheduler asked for it to move.
    pub async fn arm(&self, at: Option<Timestamp>) {
        let Some(at) = at else { return };
        // Never at or before now: an alarm set in the past while the alarm handler runs can
        // be dropped by the runtime when the handler ends, and then nothing wakes the object
        // until its next request (seen under load: an object with dirty rows asleep for a
        // minute). A few milliseconds later costs nothing.
        let offset = Duration::from_millis(at.millis_since(now()).max(MIN_ALARM_DELAY_MS));
        if let Err(e) = self.state.storage().set_alarm(offset).await {
            console_error!("setting the alarm failed: {e}");
            self.with(|i| i.scheduler().alarm_lost());
        }
    }

    /// The jobs due at `now`: what an alarm runs, one pass each.
    pub fn due(&self, now: Timestamp) -> Vec<Job> {
        self.with(|i| i.scheduler().take_due(now))
    }

    /// The end of an alarm: sets the alarm anew for what is left (one set while the handler
    /// ran may not survive it).
    pub async fn rearm(&self) -> Result<Response> {
        let next = self.with(|i| {
            let scheduler = i.scheduler();
            scheduler.alarm_lost();
            scheduler.rearm(now())
        });
        self.arm(next).await;
        Response::ok("pass done")
    }
}

/// The `n` first entries of `set`, taken out of it: a refresh pass's batch of what reads
/// found stale.
pub fn take_first<T: Ord>(set: &mut BTreeSet<T>, n: usize) -> Vec<T> {
    std::iter::from_fn(|| set.pop_first()).take(n).collect()
}

/// A fresh random id: an object's incarnation or reporter.
pub fn random_id() -> ReplicaId {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("crypto.getRandomValues is available in Workers");
    ReplicaId::from_bytes(bytes)
}

/// Logs why an object failed; the Worker gets a plain 500.
pub fn internal(why: String) -> ApiError {
    console_error!("{why}");
    ApiError::Internal
}

/// Logs a storage failure; the Worker gets a plain 500.
pub fn store_failed(e: StoreError) -> ApiError {
    console_error!("{e}");
    ApiError::Internal
}

/// A storage failure, or a row that does not read back as written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The SQL API failed.
    #[error("storage: {0}")]
    Sql(#[from] worker::Error),
    /// A stored row is not what this module writes (damaged storage).
    #[error("damaged row {key:?}: {why}")]
    Damaged {
        /// The row's key.
        key: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// The `meta` table (`name TEXT PRIMARY KEY, value TEXT`), which every object class of the
/// edge keeps in its own storage.
pub const META_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;";

/// A meta entry of an object's storage.
///
/// # Errors
///
/// A storage failure.
pub fn get_meta(sql: &SqlStorage, name: &str) -> Result<Option<String>, StoreError> {
    #[derive(Deserialize)]
    struct Value {
        value: String,
    }
    let rows: Vec<Value> = sql
        .exec("SELECT value FROM meta WHERE name = ?", vec![name.into()])?
        .to_array()?;
    Ok(rows.into_iter().next().map(|v| v.value))
}

/// Sets a meta entry of an object's storage.
///
/// # Errors
///
/// A storage failure.
pub fn set_meta(sql: &SqlStorage, name: &str, value: &str) -> Result<(), StoreError> {
    sql.exec(
        "INSERT INTO meta (name, value) VALUES (?, ?) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        vec![name.into(), value.into()],
    )?;
    Ok(())
}

#[wasm_bindgen(
    wasm_bindgen = worker::wasm_bindgen,
    inline_js = "export function exec_bound(sql, query, params) { sql.exec(query, ...JSON.parse(params)); }"
)]
extern "C" {
    #[wasm_bindgen(catch)]
    fn exec_bound(sql: &JsValue, query: &str, params: &str) -> std::result::Result<(), JsValue>;
}

/// Runs a statement that answers no rows with its parameters bound in one call: `params` is a
/// JSON array (strings and numbers), spread into `exec` in JavaScript. `SqlStorage::exec`
/// makes a JavaScript value and a push across the boundary per parameter; a hit's row has 16.
///
/// # Errors
///
/// A storage failure.
pub fn exec_with_json(
    sql: &SqlStorage,
    query: &str,
    params: &str,
) -> std::result::Result<(), StoreError> {
    exec_bound(sql.as_ref(), query, params).map_err(|e| StoreError::Sql(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_the_first_entries_out_and_leaves_the_rest() {
        let mut set: BTreeSet<u32> = [5, 1, 3, 9].into();
        assert_eq!(take_first(&mut set, 3), vec![1, 3, 5]);
        assert_eq!(set, [9].into());
        assert_eq!(take_first(&mut set, 3), vec![9]);
        assert!(take_first(&mut set, 3).is_empty());
    }
}
