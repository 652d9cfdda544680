//! Unique visitors, as both stores merge them: a batch of sketch syncs merged register-wise
//! into the stored sketches (what grew is written, every sync is answered the sketches after
//! the whole batch), and the answers of a read. The stores run these rules; the SQL only
//! stores and selects.

use std::collections::{BTreeMap, BTreeSet};

use tally_crdt::{HyperLogLog, SketchKey, SketchTotal, SketchUpdate, Timestamp};

/// A stored sketch that an update cannot merge into (another precision).
#[derive(Debug, thiserror::Error)]
#[error("sketch of {key}: {error}")]
pub struct Mismatch {
    /// The sketch's key.
    pub key: SketchKey,
    /// Why the merge failed.
    pub error: tally_crdt::Error,
}

/// One sketch merge worked out: what to answer and what to write.
#[derive(Debug, Default)]
pub struct SketchMerge {
    /// Per sync, one merged sketch per update, in the updates' order.
    pub totals: Vec<Vec<SketchTotal>>,
    /// The sketches that grew, with their new wire form, in key order.
    pub writes: Vec<(SketchKey, Vec<u8>)>,
}

/// Merges the updates of `syncs` (a batch, each sync's keys once) into the `stored` sketches
/// (with their `updated_at`), at `at`. Every sync is answered the merged sketches after the
/// whole batch: a sketch only grows, so that holds its own registers and every other's.
///
/// # Errors
///
/// [`Mismatch`]: a stored sketch of another precision than an update's (a corrupt row for the
/// store: syncs are checked to carry the default precision, and only they write).
pub fn merge_sketch_rows(
    syncs: &[&[SketchUpdate]],
    mut stored: BTreeMap<SketchKey, (HyperLogLog, Option<Timestamp>)>,
    at: Timestamp,
) -> Result<SketchMerge, Mismatch> {
    let mut merge = SketchMerge::default();
    let mut grown = BTreeSet::new();
    for update in syncs.iter().flat_map(|updates| updates.iter()) {
        let (sketch, updated_at) = stored
            .entry(update.key.clone())
            .or_insert_with(|| (HyperLogLog::new(), None));
        let grew = sketch.merge(&update.registers).map_err(|error| Mismatch {
            key: update.key.clone(),
            error,
        })?;
        if grew {
            *updated_at = Some(updated_at.map_or(at, |t| t.max(at)));
            grown.insert(update.key.clone());
        }
    }
    for key in grown {
        let (sketch, _) = &stored[&key];
        merge.writes.push((key, sketch.to_bytes()));
    }
    merge.totals = syncs
        .iter()
        .map(|updates| {
            updates
                .iter()
                .map(|u| {
                    let (sketch, updated_at) = &stored[&u.key];
                    SketchTotal {
                        key: u.key.clone(),
                        sketch: sketch.clone(),
                        updated_at: *updated_at,
                    }
                })
                .collect()
        })
        .collect();
    Ok(merge)
}

/// One [`SketchTotal`] per key of `keys`, in their order, from the `found` rows (an empty
/// sketch, never updated, for a key without one).
pub fn sketch_answers(
    keys: &[SketchKey],
    mut found: BTreeMap<SketchKey, (HyperLogLog, Option<Timestamp>)>,
) -> Vec<SketchTotal> {
    keys.iter()
        .map(|key| {
            let (sketch, updated_at) = found
                .remove(key)
                .unwrap_or_else(|| (HyperLogLog::new(), None));
            SketchTotal {
                key: key.clone(),
                sketch,
                updated_at,
            }
        })
        .collect()
}
