//! The unique-visitors protocol: edge objects sync the registers of their HyperLogLog sketches
//! that grew; the merger merges them with max and serves the merged sketch.
//!
//! A sketch is named by a [`SketchKey`]: a unique id and, for the daily sketch, its UTC
//! [`Day`]. An edge object keeps one sketch per key it has counted and sends
//! ([`SketchSync`], `POST /v1/unique`) the registers that grew since its last acknowledged
//! sync, as a sketch of those registers alone. Merging is register-wise max, so a retried,
//! duplicated or reordered sync changes nothing beyond the first: the same idempotence as
//! the counters' slot totals, without slots (a register's max already is the union of every
//! replica's). The merger answers, per key, the merged sketch ([`SketchTotal`]), which the
//! object merges with its own to answer reads; `POST /v1/read/unique` ([`SketchRead`]) asks
//! for merged sketches and writes nothing.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::presence::check_version;
use crate::{Day, Error, HyperLogLog, ReplicaId, Timestamp};

/// Most sketches one [`SketchSync`] or [`SketchRead`] may carry: a dense sketch is about
/// 4 KiB of base64, so a full sync stays well under a megabyte.
pub const MAX_SKETCHES_PER_SYNC: usize = 100;

/// Which sketch: the all-time sketch of a unique id (`day` absent) or its sketch of one UTC
/// day.
///
/// Ordered by id, then day (all-time first).
///
/// # Examples
///
/// ```
/// use tally_crdt::SketchKey;
///
/// let all = SketchKey::new("home", None)?;
/// let today = SketchKey::new("home", Some("2030-10-10".parse()?))?;
/// assert_eq!(all.to_string(), "home");
/// assert_eq!(today.to_string(), "home@2030-10-10");
/// assert_eq!(serde_json::to_string(&today).unwrap(), r#"{"id":"home","day":"2030-10-10"}"#);
/// assert!(all < today);
/// # Ok::<(), tally_crdt::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "KeyWire", into = "KeyWire")]
pub struct SketchKey {
    id: String,
    day: Option<Day>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyWire {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    day: Option<Day>,
}

impl TryFrom<KeyWire> for SketchKey {
    type Error = Error;
    fn try_from(w: KeyWire) -> Result<SketchKey, Error> {
        SketchKey::new(w.id, w.day)
    }
}

impl From<SketchKey> for KeyWire {
    fn from(k: SketchKey) -> KeyWire {
        KeyWire {
            id: k.id,
            day: k.day,
        }
    }
}

impl SketchKey {
    /// The sketch of `id` (a counter id's rules), all-time or of `day`.
    ///
    /// # Errors
    ///
    /// The id rule it breaks.
    pub fn new(id: impl Into<String>, day: Option<Day>) -> Result<SketchKey, Error> {
        let id = id.into();
        crate::check_counter_id(&id)?;
        Ok(SketchKey { id, day })
    }

    /// The unique id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The day of a daily sketch.
    pub fn day(&self) -> Option<Day> {
        self.day
    }

    /// Its storage form, `{id}` or `{id}@{day}` (`@` is not in the id charset).
    ///
    /// # Errors
    ///
    /// The rule the text breaks.
    pub fn from_storage_key(text: &str) -> Result<SketchKey, Error> {
        match text.split_once('@') {
            Some((id, day)) => SketchKey::new(id, Some(day.parse()?)),
            None => SketchKey::new(text, None),
        }
    }
}

impl fmt::Display for SketchKey {
    /// The storage form: `{id}` or `{id}@{day}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.day {
            Some(day) => write!(f, "{}@{day}", self.id),
            None => f.write_str(&self.id),
        }
    }
}

/// An edge object's grown registers, `POST /v1/unique`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SketchSync {
    /// Protocol version, 2 to 6 (the same shape).
    pub version: u32,
    /// The sending replica incarnation (for the merger's per-region view and logs).
    pub replica: ReplicaId,
    /// The region it serves.
    pub region: String,
    /// At most [`MAX_SKETCHES_PER_SYNC`] sketches, each key once.
    pub sketches: Vec<SketchUpdate>,
}

/// The grown registers of one sketch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SketchUpdate {
    /// Which sketch.
    #[serde(flatten)]
    pub key: SketchKey,
    /// A sketch holding the registers that grew (or all of them): merged by max. Precision
    /// [`HyperLogLog::DEFAULT_PRECISION`].
    pub registers: HyperLogLog,
}

/// Merged sketches asked for, `POST /v1/read/unique`; writes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SketchRead {
    /// Protocol version, 2 to 6 (the same shape).
    pub version: u32,
    /// At most [`MAX_SKETCHES_PER_SYNC`] keys, each once.
    pub sketches: Vec<SketchKey>,
}

/// The merger's answer to a [`SketchSync`] (after the merge is committed) or a
/// [`SketchRead`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SketchResponse {
    /// The version of the request answered.
    pub version: u32,
    /// One merged sketch per key of the request (match them by key).
    pub sketches: Vec<SketchTotal>,
}

/// One merged sketch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SketchTotal {
    /// Which sketch.
    #[serde(flatten)]
    pub key: SketchKey,
    /// Every replica's registers merged (empty for a sketch nobody synced).
    pub sketch: HyperLogLog,
    /// When it last grew; `None` for a sketch nobody synced.
    pub updated_at: Option<Timestamp>,
}

fn check_keys<'a>(keys: impl ExactSizeIterator<Item = &'a SketchKey>) -> Result<(), Error> {
    if keys.len() > MAX_SKETCHES_PER_SYNC {
        return Err(Error::TooManyCounters {
            got: keys.len(),
            max: MAX_SKETCHES_PER_SYNC,
        });
    }
    let mut seen: Vec<&SketchKey> = keys.collect();
    seen.sort_unstable();
    match seen.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(Error::DuplicateId {
            id: alloc::format!("{}", w[0]),
        }),
        None => Ok(()),
    }
}

impl SketchSync {
    /// Checks a sync: version, a non-nil replica, its region, at most
    /// [`MAX_SKETCHES_PER_SYNC`] sketches, each key once, each of the default precision.
    ///
    /// # Errors
    ///
    /// The first rule broken, as its [`Error`] variant.
    pub fn validate(&self) -> Result<(), Error> {
        check_version(self.version)?;
        if self.replica.is_nil() {
            return Err(Error::NilReplica);
        }
        crate::check_region(&self.region)?;
        check_keys(self.sketches.iter().map(|s| &s.key))?;
        for s in &self.sketches {
            let theirs = s.registers.precision();
            if theirs != HyperLogLog::DEFAULT_PRECISION {
                return Err(Error::HllPrecisionMismatch {
                    ours: HyperLogLog::DEFAULT_PRECISION,
                    theirs,
                });
            }
        }
        Ok(())
    }

    /// Decodes a sync body and checks it.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] for a body that is not a sketch sync, else the rule broken.
    #[cfg(feature = "json")]
    pub fn from_json(body: &[u8]) -> Result<SketchSync, Error> {
        let sync: SketchSync = crate::presence::decode(body)?;
        sync.validate()?;
        Ok(sync)
    }
}

impl SketchRead {
    /// Checks a read: version, at most [`MAX_SKETCHES_PER_SYNC`] keys, each once.
    ///
    /// # Errors
    ///
    /// The first rule broken, as its [`Error`] variant.
    pub fn validate(&self) -> Result<(), Error> {
        check_version(self.version)?;
        check_keys(self.sketches.iter())
    }

    /// Decodes a read body and checks it.
    ///
    /// # Errors
    ///
    /// As for [`SketchSync::from_json`].
    #[cfg(feature = "json")]
    pub fn from_json(body: &[u8]) -> Result<SketchRead, Error> {
        let read: SketchRead = crate::presence::decode(body)?;
        read.validate()?;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn sync() -> SketchSync {
        let mut registers = HyperLogLog::new();
        registers.insert(b"visitor-1");
        SketchSync {
            version: crate::PROTOCOL_VERSION,
            replica: ReplicaId::from_u128(3),
            region: "eu".into(),
            sketches: vec![SketchUpdate {
                key: SketchKey::new("home", None).unwrap(),
                registers,
            }],
        }
    }

    #[test]
    fn a_sync_breaking_a_rule_names_it() {
        assert_eq!(sync().validate(), Ok(()));
        let mut s = sync();
        s.sketches.push(s.sketches[0].clone());
        assert_eq!(s.validate(), Err(Error::DuplicateId { id: "home".into() }));
        let mut s = sync();
        s.sketches[0].registers = HyperLogLog::with_precision(10).unwrap();
        assert_eq!(
            s.validate(),
            Err(Error::HllPrecisionMismatch {
                ours: 12,
                theirs: 10
            })
        );
    }

    #[test]
    fn storage_keys_round_trip() {
        let day: Day = "2026-12-02".parse().unwrap();
        for key in [
            SketchKey::new("a:b", None).unwrap(),
            SketchKey::new("a:b", Some(day)).unwrap(),
        ] {
            assert_eq!(SketchKey::from_storage_key(&key.to_string()), Ok(key));
        }
        assert!(SketchKey::from_storage_key("a@2026-13-02").is_err());
    }
}
