//! [`CounterKey`]: which counter, once for the whole system, with every form it is written in.
//!
//! A counter is named by its kind and its id; the same id in each kind is a different
//! counter. The forms:
//!
//! | form | increment-only | up and down |
//! |---|---|---|
//! | [`CounterKind`] on the wire | `"g"` | `"pn"` |
//! | public edge path ([`CounterKey::edge_path`]) | `/{id}/counter` | `/{id}/gauge` |
//! | merger API path ([`CounterKey::merger_path`]) | `/v1/counters/{id}` | `/v1/gauges/{id}` |
//! | storage key and `Display` ([`CounterKey::storage_key`]) | `g:{id}` | `pn:{id}` |
//! | sync JSON | `{"id": …, "kind": "g"}` | `{"id": …, "kind": "pn"}` |

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::{CounterKind, Error, check_counter_id};

/// Which counter: a kind and a valid id (see [`check_counter_id`]). A `CounterKey` can only
/// be made from a valid id, so code that holds one never checks again.
///
/// Ordered by kind, then id (the order of sync batches and storage scans).
///
/// # Examples
///
/// ```
/// use tally_crdt::{CounterKey, CounterKind};
///
/// let key = CounterKey::new(CounterKind::Pn, "viewers:42")?;
/// assert_eq!(key.edge_path(), "/viewers:42/gauge");
/// assert_eq!(key.merger_path(), "/v1/gauges/viewers:42");
/// assert_eq!(key.storage_key(), "pn:viewers:42");
/// assert_eq!(CounterKey::from_storage_key("pn:viewers:42")?, key);
/// assert_eq!(CounterKey::from_edge_path("/viewers:42/gauge"), Some(Ok(key.clone())));
/// assert_eq!(serde_json::to_string(&key).unwrap(), r#"{"id":"viewers:42","kind":"pn"}"#);
/// assert!(CounterKey::new(CounterKind::G, "no spaces").is_err());
/// # Ok::<(), tally_crdt::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "KeyWire", into = "KeyWire")]
pub struct CounterKey {
    kind: CounterKind,
    id: String,
}

/// The JSON form, checked on the way in.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyWire {
    pub(crate) id: String,
    pub(crate) kind: CounterKind,
}

impl TryFrom<KeyWire> for CounterKey {
    type Error = Error;
    fn try_from(w: KeyWire) -> Result<Self, Error> {
        CounterKey::new(w.kind, w.id)
    }
}

impl From<CounterKey> for KeyWire {
    fn from(k: CounterKey) -> Self {
        KeyWire {
            id: k.id,
            kind: k.kind,
        }
    }
}

impl CounterKey {
    /// The counter `id` of `kind`.
    ///
    /// # Errors
    ///
    /// The id rule it breaks ([`Error::EmptyId`], [`Error::IdTooLong`], [`Error::IdBadChar`]).
    pub fn new(kind: CounterKind, id: impl Into<String>) -> Result<CounterKey, Error> {
        let id = id.into();
        check_counter_id(&id)?;
        Ok(CounterKey { kind, id })
    }

    /// Its kind.
    pub fn kind(&self) -> CounterKind {
        self.kind
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `/{id}/counter` or `/{id}/gauge`: the public route at the edge.
    pub fn edge_path(&self) -> String {
        format!("/{}/{}", self.id, self.kind.resource())
    }

    /// `/v1/counters/{id}` or `/v1/gauges/{id}`: the read route at the merger.
    pub fn merger_path(&self) -> String {
        format!("/v1/{}/{}", self.kind.namespace(), self.id)
    }

    /// `g:{id}` or `pn:{id}`: the key in storage (and the `Display` form).
    pub fn storage_key(&self) -> String {
        self.to_string()
    }

    /// Reads a [`storage_key`](Self::storage_key).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when there is no known kind prefix, else the id's rule.
    pub fn from_storage_key(text: &str) -> Result<CounterKey, Error> {
        let (kind, id) = text.split_once(':').ok_or(Error::InvalidKey)?;
        let kind = match kind {
            "g" => CounterKind::G,
            "pn" => CounterKind::Pn,
            _ => return Err(Error::InvalidKey),
        };
        CounterKey::new(kind, id)
    }

    /// Reads a public edge path `/{id}/counter` or `/{id}/gauge`: `None` when the path is no
    /// counter route at all, `Some(Err)` when it is one with an invalid id. Ids need no
    /// percent-decoding: the id charset has no character a URL escapes, so any `%` is invalid.
    pub fn from_edge_path(path: &str) -> Option<Result<CounterKey, Error>> {
        let mut parts = path.strip_prefix('/')?.split('/');
        let (Some(id), Some(resource), None) = (parts.next(), parts.next(), parts.next()) else {
            return None;
        };
        let kind = CounterKind::from_resource(resource)?;
        Some(CounterKey::new(kind, id))
    }
}

impl fmt::Display for CounterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.id)
    }
}

impl CounterKind {
    /// The public edge resource: `counter` or `gauge`.
    pub const fn resource(self) -> &'static str {
        match self {
            CounterKind::G => "counter",
            CounterKind::Pn => "gauge",
        }
    }

    /// The kind of an edge resource name.
    pub fn from_resource(resource: &str) -> Option<CounterKind> {
        match resource {
            "counter" => Some(CounterKind::G),
            "gauge" => Some(CounterKind::Pn),
            _ => None,
        }
    }

    /// The merger's namespace: `counters` or `gauges`.
    pub const fn namespace(self) -> &'static str {
        match self {
            CounterKind::G => "counters",
            CounterKind::Pn => "gauges",
        }
    }

    /// The kind of a merger namespace.
    pub fn from_namespace(namespace: &str) -> Option<CounterKind> {
        match namespace {
            "counters" => Some(CounterKind::G),
            "gauges" => Some(CounterKind::Pn),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_round_trips() {
        for kind in [CounterKind::G, CounterKind::Pn] {
            let key = CounterKey::new(kind, "a:b.c-d_e").unwrap();
            assert_eq!(
                CounterKey::from_storage_key(&key.storage_key()),
                Ok(key.clone())
            );
            assert_eq!(
                CounterKey::from_edge_path(&key.edge_path()),
                Some(Ok(key.clone()))
            );
            let json = serde_json::to_string(&key).unwrap();
            assert_eq!(serde_json::from_str::<CounterKey>(&json).unwrap(), key);
            assert_eq!(CounterKind::from_namespace(kind.namespace()), Some(kind));
            assert_eq!(CounterKind::from_resource(kind.resource()), Some(kind));
        }
    }

    #[test]
    fn invalid_forms_are_refused() {
        assert_eq!(CounterKey::from_storage_key("zz:x"), Err(Error::InvalidKey));
        assert_eq!(
            CounterKey::from_storage_key("nokind"),
            Err(Error::InvalidKey)
        );
        assert_eq!(CounterKey::from_storage_key("g:"), Err(Error::EmptyId));
        for not_a_route in [
            "",
            "/",
            "/home",
            "/home/counter/x",
            "/home/widget",
            "home/counter",
        ] {
            assert_eq!(
                CounterKey::from_edge_path(not_a_route),
                None,
                "{not_a_route:?}"
            );
        }
        assert!(matches!(
            CounterKey::from_edge_path("/a%20b/counter"),
            Some(Err(Error::IdBadChar { at: 1 }))
        ));
        assert_eq!(
            CounterKey::from_edge_path("//counter"),
            Some(Err(Error::EmptyId))
        );
        assert!(serde_json::from_str::<CounterKey>(r#"{"id":"a b","kind":"g"}"#).is_err());
        assert!(serde_json::from_str::<CounterKey>(r#"{"id":"a","kind":"g","x":1}"#).is_err());
    }

    #[test]
    fn order_is_kind_then_id() {
        let g = |id| CounterKey::new(CounterKind::G, id).unwrap();
        let pn = |id| CounterKey::new(CounterKind::Pn, id).unwrap();
        let mut keys = [pn("a"), g("b"), g("a")];
        keys.sort();
        assert_eq!(keys, [g("a"), g("b"), pn("a")]);
    }
}
