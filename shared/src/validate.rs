//! The input rules both sides enforce: counter ids, regions and sync bounds.

use alloc::string::ToString;
use alloc::vec::Vec;

use crate::{Error, PROTOCOL_VERSION, SyncRequest};

/// Longest counter id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest region name, in bytes.
pub const MAX_REGION_LEN: usize = 64;
/// Most counters one [`SyncRequest`] may carry; an edge with more dirty counters sends
/// several syncs.
pub const MAX_COUNTERS_PER_SYNC: usize = 1000;

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

impl SyncRequest {
    /// Checks every rule of the protocol: version, counter count, replica id, region, each
    /// counter id, no decrements on kind `g`, and no counter twice.
    ///
    /// # Errors
    ///
    /// The first violation found, as its own [`Error`] variant.
    pub fn validate(&self) -> Result<(), Error> {
        if self.version != PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion {
                got: u64::from(self.version),
                supported: PROTOCOL_VERSION,
            });
        }
        if self.counters.len() > MAX_COUNTERS_PER_SYNC {
            return Err(Error::TooManyCounters {
                got: self.counters.len(),
                max: MAX_COUNTERS_PER_SYNC,
            });
        }
        if self.replica.is_nil() {
            return Err(Error::NilReplica);
        }
        check_region(&self.region)?;
        for c in &self.counters {
            check_counter_id(&c.id)?;
            if c.kind == crate::CounterKind::G && c.n != 0 {
                return Err(Error::DecrementOnCounter {
                    id: c.id.clone(),
                    n: c.n,
                });
            }
        }
        let mut keys: Vec<_> = self
            .counters
            .iter()
            .map(|c| (c.id.as_str(), c.kind))
            .collect();
        keys.sort_unstable();
        if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::DuplicateCounter {
                id: w[0].0.to_string(),
                kind: w[0].1,
            });
        }
        Ok(())
    }

    /// Decodes a JSON sync body and [validates](SyncRequest::validate) it: the one entry
    /// point both the merger and the edge use for bodies they receive.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] for a body that is not a sync request (with the decoder's message),
    /// [`Error::UnsupportedVersion`] for a body of another protocol version even if its shape
    /// differs, and otherwise the first rule it breaks.
    ///
    /// # Examples
    ///
    /// ```
    /// use tally_crdt::{Error, SyncRequest};
    ///
    /// let body = br#"{"version":1,"replica":"0000000000000000000000000000002a",
    ///     "region":"eu","counters":[{"id":"home","kind":"g","p":715}]}"#;
    /// assert_eq!(SyncRequest::from_json(body)?.counters[0].p, 715);
    ///
    /// let future = br#"{"version":2,"replica":"0000000000000000000000000000002a","shape":"new"}"#;
    /// assert_eq!(
    ///     SyncRequest::from_json(future),
    ///     Err(Error::UnsupportedVersion { got: 2, supported: 1 })
    /// );
    /// # Ok::<(), tally_crdt::Error>(())
    /// ```
    #[cfg(feature = "json")]
    pub fn from_json(body: &[u8]) -> Result<SyncRequest, Error> {
        match serde_json::from_slice::<crate::sync::MapOnly<SyncRequest>>(body) {
            Ok(crate::sync::MapOnly(request)) => {
                request.validate()?;
                Ok(request)
            }
            Err(parse_error) => {
                // Another version may have another shape: name the version, not the shape.
                #[derive(serde::Deserialize)]
                struct VersionOnly {
                    version: u64,
                }
                match serde_json::from_slice::<VersionOnly>(body) {
                    Ok(v) if v.version != u64::from(PROTOCOL_VERSION) => {
                        Err(Error::UnsupportedVersion {
                            got: v.version,
                            supported: PROTOCOL_VERSION,
                        })
                    }
                    _ => Err(Error::Malformed(parse_error.to_string())),
                }
            }
        }
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
