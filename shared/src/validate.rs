//! The input rules both sides enforce: counter ids, regions and sync bounds.

use alloc::string::ToString;
use alloc::vec::Vec;

use crate::{
    CounterKey, CounterKind, Error, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, ReadRequest, ReplicaId,
    RetireRequest, SlotUpdate, SyncRequest,
};

/// Longest counter id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest region name, in bytes.
pub const MAX_REGION_LEN: usize = 64;
/// Most counters one [`SyncRequest`] may carry; an edge with more dirty counters sends
/// several syncs.
pub const MAX_COUNTERS_PER_SYNC: usize = 1000;

/// The largest epoch a cut names: what a store's signed 64-bit column holds.
const MAX_EPOCH: u64 = i64::MAX as u64;

/// Checks a counter id: 1 to [`MAX_ID_LEN`] bytes of ASCII letters, digits and `-_.:`,
/// starting with a letter or digit.
///
/// The set is safe in a URL path segment without escaping, in a Durable Object name, in SQL
/// text and in a Prometheus label, and the leading letter or digit rules out `.` and `..`.
///
/// # Errors
///
/// [`Error::EmptyId`], [`Error::IdTooLong`] or [`Error::IdBadChar`] with the offending byte.
///
/// # Examples
///
/// ```
/// use tally_crdt::{check_counter_id, Error};
///
/// assert!(check_counter_id("blog:post-42.views").is_ok());
/// assert_eq!(check_counter_id(".."), Err(Error::IdBadChar { at: 0 }));
/// assert_eq!(check_counter_id("a/b"), Err(Error::IdBadChar { at: 1 }));
/// ```
pub fn check_counter_id(id: &str) -> Result<(), Error> {
    let bytes = id.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(Error::EmptyId);
    };
    if bytes.len() > MAX_ID_LEN {
        return Err(Error::IdTooLong {
            len: bytes.len(),
            max: MAX_ID_LEN,
        });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(Error::IdBadChar { at: 0 });
    }
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':');
    match bytes.iter().position(|b| !allowed(b)) {
        Some(at) => Err(Error::IdBadChar { at }),
        None => Ok(()),
    }
}

/// Checks a region name: 1 to [`MAX_REGION_LEN`] ASCII letters, digits, `-` or `_`.
///
/// # Errors
///
/// [`Error::InvalidRegion`].
pub fn check_region(region: &str) -> Result<(), Error> {
    let ok = (1..=MAX_REGION_LEN).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRegion)
    }
}

/// Refuses a sync or read of more than [`MAX_COUNTERS_PER_SYNC`] counters.
pub(crate) fn check_sync_size(len: usize) -> Result<(), Error> {
    if len > MAX_COUNTERS_PER_SYNC {
        return Err(Error::TooManyCounters {
            got: len,
            max: MAX_COUNTERS_PER_SYNC,
        });
    }
    Ok(())
}

/// The first key that appears twice, if any.
fn duplicate<'a>(keys: impl Iterator<Item = &'a CounterKey>) -> Option<&'a CounterKey> {
    let mut keys: Vec<&CounterKey> = keys.collect();
    keys.sort_unstable();
    keys.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

impl SyncRequest {
    /// Refuses a version outside [`MIN_PROTOCOL_VERSION`] ..= [`PROTOCOL_VERSION`].
    pub(crate) fn check_version(version: u64) -> Result<(), Error> {
        if (u64::from(MIN_PROTOCOL_VERSION)..=u64::from(PROTOCOL_VERSION)).contains(&version) {
            Ok(())
        } else {
            Err(Error::UnsupportedVersion {
                got: version,
                supported: PROTOCOL_VERSION,
            })
        }
    }

    /// Checks the rules of the request as a whole: a supported version, at most
    /// [`MAX_COUNTERS_PER_SYNC`] counters, a non-nil replica, a valid region, no counter
    /// twice, and for version 1 also every [`counter_error`](Self::counter_error) (version 1
    /// has no per-counter answer).
    ///
    /// # Errors
    ///
    /// The first rule broken, as its [`Error`] variant.
    pub fn validate(&self) -> Result<(), Error> {
        Self::check_version(u64::from(self.version))?;
        check_sync_size(self.counters.len())?;
        if self.replica.is_nil() {
            return Err(Error::NilReplica);
        }
        check_region(&self.region)?;
        if let Some(key) = duplicate(self.counters.iter().map(|c| &c.key)) {
            return Err(Error::DuplicateCounter {
                id: key.id().to_string(),
                kind: key.kind(),
            });
        }
        if self.version < 3 && self.counters.iter().any(|c| !c.visits.is_empty()) {
            return Err(Error::Malformed(
                "visits are part of protocol version 3".into(),
            ));
        }
        if self.version < 4
            && self
                .counters
                .iter()
                .any(|c| c.carried != crate::SlotTotals::default())
        {
            return Err(Error::Malformed(
                "carried totals are part of protocol version 4".into(),
            ));
        }
        if self.version < 5 && self.counters.iter().any(|c| c.frame.is_some()) {
            return Err(Error::Malformed(
                "frames are part of protocol version 5".into(),
            ));
        }
        if self.version < 6 && self.counters.iter().any(|c| c.cut.is_some()) {
            return Err(Error::Malformed(
                "cuts are part of protocol version 6".into(),
            ));
        }
        if self.counters.iter().any(|c| {
            c.cut
                .is_some_and(|cut| cut.epoch == 0 || cut.epoch > MAX_EPOCH)
        }) {
            return Err(Error::Malformed(
                "a cut's epoch is 1 to 2^63-1 (a counter never reset has no cut)".into(),
            ));
        }
        if self
            .counters
            .iter()
            .any(|c| c.frame.is_some_and(|f| f.epoch == 0))
        {
            return Err(Error::Malformed(
                "a frame's epoch is at least 1 (frame 0 is sent as no frame)".into(),
            ));
        }
        if self.version < 2
            && let Some(e) = self.counters.iter().find_map(Self::counter_error)
        {
            return Err(e);
        }
        Ok(())
    }

    /// The rule one counter of a sync breaks, if any: a decrement total on an increment-only
    /// counter, or a visit that is not one of its slot's hits. A version-2 merger rejects
    /// that counter alone.
    pub fn counter_error(update: &SlotUpdate) -> Option<Error> {
        if update.key.kind() == CounterKind::G && update.totals.n != 0 {
            return Some(Error::DecrementOnCounter {
                id: update.key.id().to_string(),
                n: update.totals.n,
            });
        }
        if update.key.kind() == CounterKind::G && update.carried.n != 0 {
            return Some(Error::DecrementOnCounter {
                id: update.key.id().to_string(),
                n: update.carried.n,
            });
        }
        if let Some(frame) = update.frame
            && update.key.kind() == CounterKind::G
            && frame.reclaimed.n != 0
        {
            return Some(Error::DecrementOnCounter {
                id: update.key.id().to_string(),
                n: frame.reclaimed.n,
            });
        }
        if let Some(cut) = update.cut
            && update.key.kind() == CounterKind::G
            && cut.totals.n != 0
        {
            return Some(Error::DecrementOnCounter {
                id: update.key.id().to_string(),
                n: u64::try_from(cut.totals.n).unwrap_or(u64::MAX),
            });
        }
        if update.visits.is_empty() {
            return None;
        }
        let why = if update.key.kind() != CounterKind::G {
            "only increment-only counters (kind g) carry visits"
        } else if update.visits.len() > crate::sync::MAX_VISITS_PER_COUNTER {
            "at most 32 visits per counter"
        } else if let Some(e) = update
            .visits
            .iter()
            .find_map(|v| crate::sync::check_visitor(&v.visitor).err())
        {
            return Some(e);
        } else if update
            .visits
            .iter()
            .any(|v| v.delta == 0 || u64::from(v.delta) > v.end || v.end > update.totals.p)
        {
            "a visit holds 1 to delta units at or below the slot's total"
        } else {
            return None;
        };
        Some(Error::InvalidVisit(why.to_string()))
    }

    /// Decodes a sync body and checks it, with the [`Error`] of the first rule it breaks.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] for JSON of another shape, [`Error::UnsupportedVersion`] for a
    /// body of another version, else the rule broken.
    #[cfg(feature = "json")]
    pub fn from_json(body: &[u8]) -> Result<SyncRequest, Error> {
        match serde_json::from_slice::<crate::sync::MapOnly<crate::sync::RawSync>>(body) {
            Ok(crate::sync::MapOnly(raw)) => SyncRequest::try_from(raw),
            Err(parse_error) => Err(version_or_malformed(body, parse_error)),
        }
    }
}

impl RetireRequest {
    /// Checks a retirement: version 2 or later and a non-nil replica.
    ///
    /// # Errors
    ///
    /// The first rule broken, as its [`Error`] variant.
    pub fn validate(&self) -> Result<(), Error> {
        if !(2..=PROTOCOL_VERSION).contains(&self.version) {
            return Err(Error::UnsupportedVersion {
                got: u64::from(self.version),
                supported: PROTOCOL_VERSION,
            });
        }
        if self.replica.is_nil() {
            return Err(Error::NilReplica);
        }
        Ok(())
    }

    /// Decodes a retirement body and checks it.
    ///
    /// # Errors
    ///
    /// As for [`SyncRequest::from_json`].
    #[cfg(feature = "json")]
    pub fn from_json(body: &[u8]) -> Result<RetireRequest, Error> {
        match serde_json::from_slice::<crate::sync::MapOnly<RetireRequest>>(body) {
            Ok(crate::sync::MapOnly(retire)) => {
                retire.validate()?;
                Ok(retire)
            }
            Err(parse_error) => Err(version_or_malformed(body, parse_error)),
        }
    }
}

impl ReadRequest {
    /// Checks a read: version 2 or later, at most [`MAX_COUNTERS_PER_SYNC`] counters, each
    /// once, and a non-nil replica if one is named.
    ///
    /// # Errors
    ///
    /// The first rule broken, as its [`Error`] variant.
    pub fn validate(&self) -> Result<(), Error> {
        if !(2..=PROTOCOL_VERSION).contains(&self.version) {
            return Err(Error::UnsupportedVersion {
                got: u64::from(self.version),
                supported: PROTOCOL_VERSION,
            });
        }
        check_sync_size(self.counters.len())?;
        if self.replica.is_some_and(ReplicaId::is_nil) {
            return Err(Error::NilReplica);
        }
        if let Some(key) = duplicate(self.counters.iter()) {
            return Err(Error::DuplicateCounter {
                id: key.id().to_string(),
                kind: key.kind(),
            });
        }
        Ok(())
    }

    /// Decodes a read body and checks it.
    ///
    /// # Errors
    ///
    /// As for [`SyncRequest::from_json`].
    #[cfg(feature = "json")]
    pub fn from_json(body: &[u8]) -> Result<ReadRequest, Error> {
        match serde_json::from_slice::<crate::sync::MapOnly<crate::sync::RawRead>>(body) {
            Ok(crate::sync::MapOnly(raw)) => ReadRequest::try_from(raw),
            Err(parse_error) => Err(version_or_malformed(body, parse_error)),
        }
    }
}

/// Another version may have another shape: name the version, not the shape.
#[cfg(feature = "json")]
pub(crate) fn version_or_malformed(body: &[u8], parse_error: serde_json::Error) -> Error {
    #[derive(serde::Deserialize)]
    struct VersionOnly {
        version: u64,
    }
    match serde_json::from_slice::<VersionOnly>(body) {
        Ok(v)
            if v.version > u64::from(PROTOCOL_VERSION)
                || v.version < u64::from(MIN_PROTOCOL_VERSION) =>
        {
            Error::UnsupportedVersion {
                got: v.version,
                supported: PROTOCOL_VERSION,
            }
        }
        _ => Error::Malformed(parse_error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    #[test]
    fn ids_at_the_length_bounds() {
        assert_eq!(check_counter_id(""), Err(Error::EmptyId));
        assert!(check_counter_id("a").is_ok());
        assert!(check_counter_id(&"a".repeat(MAX_ID_LEN)).is_ok());
        assert_eq!(
            check_counter_id(&"a".repeat(MAX_ID_LEN + 1)),
            Err(Error::IdTooLong {
                len: MAX_ID_LEN + 1,
                max: MAX_ID_LEN
            })
        );
    }

    #[test]
    fn ids_outside_the_charset_name_the_byte() {
        for (id, at) in [
            ("-a", 0),
            (".", 0),
            ("a b", 1),
            ("a/../b", 1),
            ("ab%2F", 2),
            ("café", 3),
            ("a\0", 1),
            ("a?x=1", 1),
        ] {
            assert_eq!(check_counter_id(id), Err(Error::IdBadChar { at }), "{id:?}");
        }
        let long_unicode: String = core::iter::repeat_n('é', 100).collect();
        assert!(matches!(
            check_counter_id(&long_unicode),
            Err(Error::IdTooLong { .. })
        ));
    }

    #[test]
    fn regions() {
        assert!(check_region("eu-west_1").is_ok());
        for bad in ["", "eu west", "eu/1", "é", &"a".repeat(MAX_REGION_LEN + 1)] {
            assert_eq!(check_region(bad), Err(Error::InvalidRegion), "{bad:?}");
        }
    }
}
