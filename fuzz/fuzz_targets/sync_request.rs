//! Sync bodies as an attacker (or a broken edge) could send them: arbitrary bytes into
//! `SyncRequest::from_json`, the one decoder both the merger and the edge use.
//!
//! - Never a panic, whatever the bytes.
//! - `from_json` agrees with serde's own decoding of `SyncRequest` (which validates too, via
//!   `try_from`) on bodies of the documented shape: what serde accepts, `from_json` accepts,
//!   equal; what serde refuses, `from_json` refuses, with the same rule when serde's refusal
//!   is a rule (its message starts with the rule's), else as `malformed_body` or (another
//!   version's shape) `unsupported_version`.
//! - What decodes is valid, and round-trips: serializing it with serde_json and decoding again
//!   gives an equal request, and serializing that gives the same bytes (one canonical form).
//! - A version-1 request that decodes has no counter a version-2 merger would reject alone
//!   (`SyncRequest::counter_error`): version 1 is all or nothing.
//! - What decodes has the documented shape (`docs/protocol.md`): a JSON object of `version`,
//!   `replica`, `region` and `counters`, each counter an object of `id`, `kind`, `p` and `n`.
//!   (serde's derived structs also accept arrays, `[1,"…","eu",[]]`: that must be refused.)
//!
//! Seeds: `fuzz/seeds/sync_request/`; dictionary: `fuzz/sync_request.dict` (see scripts/fuzz.sh).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tally_crdt::{Error, SyncRequest};

/// Whether `data` is an object of the request's fields whose `counters` are objects of a
/// counter's fields: the only shape the protocol defines.
fn has_documented_shape(data: &[u8]) -> bool {
    let only =
        |o: &Map<String, Value>, fields: &[&str]| o.keys().all(|k| fields.contains(&k.as_str()));
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(data) else {
        return false;
    };
    let Some(Value::Array(counters)) = request.get("counters") else {
        return false;
    };
    only(&request, &["version", "replica", "region", "counters"])
        && counters
            .iter()
            .all(|c| matches!(c, Value::Object(o) if only(o, &["id", "kind", "p", "n"])))
}

fuzz_target!(|data: &[u8]| {
    let decoded = SyncRequest::from_json(data);
    match serde_json::from_slice::<SyncRequest>(data) {
        Ok(shape_ok) if has_documented_shape(data) => {
            assert_eq!(
                decoded,
                Ok(shape_ok),
                "from_json accepts what serde accepts, for a well-shaped body"
            );
        }
        Ok(_) => assert!(
            matches!(decoded, Err(Error::Malformed(_))),
            "a body that serde decodes but is not the documented shape (an array for an \
             object) is malformed, got {decoded:?}"
        ),
        Err(serde_error) => match &decoded {
            Ok(request) => panic!("serde refused ({serde_error}) what from_json took: {request:?}"),
            Err(Error::Malformed(_) | Error::UnsupportedVersion { .. }) => {}
            // A rule: serde met it in `try_from`, and must have refused for the same one.
            Err(rule) => assert!(
                serde_error.to_string().starts_with(&rule.to_string()),
                "from_json refused for {rule:?}, serde for {serde_error}"
            ),
        },
    }
    match decoded {
        Ok(request) => {
            assert_eq!(request.validate(), Ok(()), "what decodes is valid");
            if request.version < 2 {
                assert!(
                    request
                        .counters
                        .iter()
                        .all(|c| SyncRequest::counter_error(c).is_none()),
                    "a version-1 sync is refused whole for a counter's rule"
                );
            }
            assert!(
                has_documented_shape(data),
                "decoded a body that is not the documented JSON shape: {}",
                String::from_utf8_lossy(data)
            );
            let json = serde_json::to_vec(&request).expect("a decoded request serializes");
            let again = SyncRequest::from_json(&json).unwrap_or_else(|e| {
                panic!(
                    "a re-serialized request decodes: {e:?} on {}",
                    String::from_utf8_lossy(&json)
                )
            });
            assert_eq!(again, request, "a request survives a round trip");
            let twice = serde_json::to_vec(&again).expect("a decoded request serializes");
            assert_eq!(twice, json, "serialization is canonical");
        }
        Err(e) => {
            // Every refusal has a stable code and a message that can be shown.
            assert!(!e.code().is_empty());
            assert!(!e.to_string().is_empty());
            assert!(
                !matches!(
                    e,
                    Error::SlotOverflow { .. } | Error::ValueOutOfRange | Error::InvalidReplicaId
                ),
                "not an error of decoding: {e:?}"
            );
        }
    }
});
