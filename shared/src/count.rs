//! [`Count`]: a counter value as the public APIs write it in JSON.

use core::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Integers of this magnitude or less are exact in every JSON parser (JavaScript's included).
pub const JSON_SAFE_MAX: i128 = (1 << 53) - 1;

/// A counter value in the public APIs' JSON (the edge's `/{id}/counter` and the merger's
/// `/v1/counters/{id}`): a JSON **number** when `|value| ≤ 2^53 - 1`, so the common case reads
/// naturally, and a decimal **string** beyond, so no client (JavaScript's `JSON.parse`
/// included) rounds a large count silently. Reading accepts either form.
///
/// # Examples
///
/// ```
/// use tally_crdt::Count;
///
/// assert_eq!(serde_json::to_string(&Count(715)).unwrap(), "715");
/// assert_eq!(serde_json::to_string(&Count(1 << 60)).unwrap(), r#""1152921504606846976""#);
/// assert_eq!(serde_json::from_str::<Count>(r#""-12""#).unwrap(), Count(-12));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Count(pub i128);

impl Serialize for Count {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match i64::try_from(self.0) {
            Ok(v) if (-JSON_SAFE_MAX..=JSON_SAFE_MAX).contains(&self.0) => s.serialize_i64(v),
            _ => s.collect_str(&self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountVisitor;
        impl Visitor<'_> for CountVisitor {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer, or an integer as a decimal string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                Ok(Count(i128::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(i128::from(v)))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Count, E> {
                Ok(Count(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Count, E> {
                i128::try_from(v).map(Count).map_err(|_| {
                    E::invalid_value(de::Unexpected::Other("integer above i128::MAX"), &self)
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Count, E> {
                v.parse()
                    .map(Count)
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_any(CountVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_up_to_2_pow_53_minus_1_strings_beyond() {
        let json = |v| serde_json::to_string(&Count(v)).unwrap();
        assert_eq!(json(0), "0");
        assert_eq!(json(-3), "-3");
        assert_eq!(json(JSON_SAFE_MAX), "9007199254740991");
        assert_eq!(json(-JSON_SAFE_MAX), "-9007199254740991");
        assert_eq!(json(JSON_SAFE_MAX + 1), "\"9007199254740992\"");
        assert_eq!(json(-JSON_SAFE_MAX - 1), "\"-9007199254740992\"");
        assert_eq!(json(i128::from(u64::MAX) * 2), "\"36893488147419103230\"");
    }

    #[test]
    fn both_forms_read_back() {
        for v in [
            0,
            5,
            -5,
            JSON_SAFE_MAX,
            JSON_SAFE_MAX + 1,
            i128::from(u64::MAX) * 3,
            -(1 << 100),
        ] {
            let text = serde_json::to_string(&Count(v)).unwrap();
            assert_eq!(
                serde_json::from_str::<Count>(&text).unwrap(),
                Count(v),
                "{text}"
            );
        }
        assert!(serde_json::from_str::<Count>("1.5").is_err());
        assert!(serde_json::from_str::<Count>("\"12a\"").is_err());
    }
}
