//! The messages between the Worker and its counter objects (never seen by clients).
//!
//! The Worker parses and checks the public request, then sends one of these to the object
//! that serves the counter; the object answers [`Answer`]s, or an API error with its status.
//! They come in two forms ([`Form`]): version 1, compact ([`v1`]: `POST /v1/hits`, `POST
//! /v1/read`), which the Worker sends; and the JSON form of the release before it, which
//! objects still accept for a release (a Worker of that release talks to objects of this one
//! during a gradual deploy), and which a Worker sends with `OBJECT_MESSAGES = "json"` (the
//! first deploy of this release over an older one, whose objects know no `/v1/` path):
//!
//! - `POST /hit` ([`Hit`]) and `POST /read` ([`Read`]) with a JSON body, answered with the
//!   JSON of the [`Answer`]s.
//! - Hits bound for one object while a request to it is in flight go together, when it
//!   returns, as one `POST /hits` ([`Hits`], built by the Worker's combiner, `crate::combine`),
//!   answered `200` with one [`HitOutcome`] per hit, in order, one JSON text per line
//!   (serde_json writes none with a raw line break).

use serde::{Deserialize, Serialize};
use tally_crdt::{CounterKey, ReplicaId, SlotTotals};

use crate::counter::View;
use crate::milestone::Verdict;
use crate::routing::Region;

pub mod v1;

/// The form of the messages a Worker sends its counter objects (`OBJECT_MESSAGES`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Form {
    /// The JSON form (`/hit`, `/hits`, `/read`): what objects of the release before [`v1`]
    /// accept too.
    Json,
    /// Version 1, compact ([`v1`]): objects of this release and later.
    #[default]
    V1,
}

/// The internal route of a hit (JSON form).
pub const HIT_PATH: &str = "/hit";
/// The internal route of a read (JSON form).
pub const READ_PATH: &str = "/read";
/// The internal route of hits combined in the Worker (JSON form).
pub const HITS_PATH: &str = "/hits";

/// A hit to count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hit {
    /// The counter.
    pub key: CounterKey,
    /// What to add to the object's own slot.
    pub add: SlotTotals,
    /// The region the object serves.
    pub region: Region,
    /// Who sent it (the client address), for the new-id budget.
    pub client: String,
    /// Whether the application's write key came with it (no new-id budget then).
    pub trusted: bool,
    /// The client's visitor key, kept only if the counter is near a milestone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visitor: Option<String>,
}

/// Hits combined in the Worker, counted one after the other, as each would be alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hits {
    /// The hits, in the order they arrived.
    pub hits: Vec<Hit>,
}

/// What became of one hit of [`Hits`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HitOutcome {
    /// Counted (stored before this answer), with the answer a hit alone gets.
    Counted(Answer),
    /// Refused, nothing stored: the API error a hit alone would get.
    Refused {
        /// Its status.
        status: u16,
        /// Its JSON body.
        body: String,
    },
    /// Not counted, nothing stored: its counter is near a milestone (the exact path, which
    /// waits for the merger), so it goes alone.
    Alone,
}

/// Counters to read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Read {
    /// The counters, each once.
    pub keys: Vec<CounterKey>,
    /// The region the object serves.
    pub region: Region,
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

/// One message of each kind with every field set, for the tests of both forms (the struct
/// literals name every field: a new one must be set here, and changes each form).
#[cfg(test)]
pub(crate) mod examples {
    use super::*;
    use crate::counter::View;
    use tally_crdt::{CounterKind, GlobalTotals, Timestamp};

    /// The counter `g` `home`.
    pub fn key() -> CounterKey {
        CounterKey::new(CounterKind::G, "home").expect("a valid id")
    }

    /// A hit with a visitor key.
    pub fn hit() -> Hit {
        Hit {
            key: key(),
            add: SlotTotals { p: 1, n: 0 },
            region: Region::new("eu").expect("a region"),
            client: "203.0.113.7".into(),
            trusted: false,
            visitor: Some("user-42".into()),
        }
    }

    /// An answer with a view, a slot and a won milestone.
    pub fn won() -> Answer {
        Answer {
            key: key(),
            view: Some(View {
                totals: GlobalTotals { p: 999, n: 0 },
                updated_at: Some(Timestamp::from_unix_ms(1_796_550_000_000)),
                age_ms: Some(250),
                epoch: 1,
            }),
            slot: Some((ReplicaId::from_u128(7), 12)),
            verdict: Some(Verdict::Won {
                n: 1000,
                label: Some("the 1000th like".into()),
            }),
        }
    }

    /// An answer with nothing known but a pending verdict, of counter `key`.
    pub fn pending(key: CounterKey) -> Answer {
        Answer {
            key,
            view: None,
            slot: None,
            verdict: Some(Verdict::Pending),
        }
    }

    /// One outcome of each kind.
    pub fn outcomes() -> Vec<HitOutcome> {
        vec![
            HitOutcome::Counted(won()),
            HitOutcome::Refused {
                status: 429,
                body: r#"{"error":"too_many_new_ids"}"#.into(),
            },
            HitOutcome::Alone,
        ]
    }
}

#[cfg(test)]
mod tests {
    //! The messages' JSON form, frozen (`edge/tests/messages/`): during a gradual deploy a
    //! Worker of the release before the compact form ([`v1`]) talks to objects of this one,
    //! which must still read what it sends; a change of these fails here.
    use super::examples::{hit, key, outcomes, pending, won};
    use super::*;
    use serde_json::Value;

    fn frozen(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/messages")
            .join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).expect("frozen JSON")
    }

    /// Every field set ([`super::examples`]).
    #[test]
    fn the_messages_with_every_field_set_are_the_frozen_ones() {
        let hit = hit();
        let read = Read {
            keys: vec![key()],
            region: Region::new("eu").unwrap(),
        };
        let answers = vec![won(), pending(key())];
        let outcomes = outcomes();
        let hits = Hits {
            hits: vec![hit.clone()],
        };
        for (name, value) in [
            ("hits.json", serde_json::to_value(&hits).unwrap()),
            (
                "hit_outcomes.json",
                serde_json::to_value(&outcomes).unwrap(),
            ),
            ("hit.json", serde_json::to_value(&hit).unwrap()),
            ("read.json", serde_json::to_value(&read).unwrap()),
            ("answers.json", serde_json::to_value(&answers).unwrap()),
        ] {
            assert_eq!(value, frozen(name), "{name}");
        }
    }

    #[test]
    fn the_frozen_messages_decode_and_encode_back_the_same() {
        let hit: Hit = serde_json::from_value(frozen("hit.json")).expect("a hit");
        assert_eq!(serde_json::to_value(&hit).unwrap(), frozen("hit.json"));
        let read: Read = serde_json::from_value(frozen("read.json")).expect("a read");
        assert_eq!(serde_json::to_value(&read).unwrap(), frozen("read.json"));
        let answers: Vec<Answer> = serde_json::from_value(frozen("answers.json")).expect("answers");
        assert_eq!(
            serde_json::to_value(&answers).unwrap(),
            frozen("answers.json")
        );
        let hits: Hits = serde_json::from_value(frozen("hits.json")).expect("hits");
        assert_eq!(serde_json::to_value(&hits).unwrap(), frozen("hits.json"));
        let outcomes: Vec<HitOutcome> =
            serde_json::from_value(frozen("hit_outcomes.json")).expect("outcomes");
        assert_eq!(
            serde_json::to_value(&outcomes).unwrap(),
            frozen("hit_outcomes.json")
        );
    }

    /// The answer to `/hits` is one outcome per line: no outcome's JSON holds a line break,
    /// whatever its strings hold.
    #[test]
    fn an_outcome_is_one_line() {
        let outcome = HitOutcome::Refused {
            status: 400,
            body: "{\"error\":\"a\nb\"}".into(),
        };
        let line = serde_json::to_string(&outcome).unwrap();
        assert!(!line.contains('\n'), "{line}");
    }
}
