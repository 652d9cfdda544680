//! [`ReplicaId`]: the identity of one replica incarnation, the key of a counter slot.

use core::fmt;
use core::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::Error;

/// The identity of one replica *incarnation*: the owner of one slot in every counter.
///
/// A replica id is an opaque 128-bit value, written as 32 lowercase hex digits. It is unique
/// per storage lifetime, which is what keeps max-merge counters correct: if a replica whose
/// storage was wiped came back under its old id, its new, smaller totals would be ignored by
/// the max-merge and every hit it counted would be lost silently.
///
/// How the edge makes it unique: a Durable Object reads its id from its own storage; when the
/// storage is new (first use, or wiped) it draws 128 random bits from the runtime's CSPRNG
/// (`crypto.getRandomValues`), persists them, and only then counts its first hit. The object's
/// *name* (region and shard) is not part of the id: a fresh incarnation of the same object
/// is a different replica. Collisions between random ids are negligible (birthday bound
/// 2^-64 after 2^32 incarnations).
///
/// An edge object's incarnations share a *lineage*: 96 bits drawn once per storage lifetime,
/// and a 32-bit generation counted up by each rotation ([`ReplicaId::lineage`]).
///
/// The nil id (all zeros) is reserved and never valid in a sync.
///
/// # Examples
///
/// ```
/// use tally_crdt::ReplicaId;
///
/// let id: ReplicaId = "000000000000000000000000000000ff".parse()?;
/// assert_eq!(id, ReplicaId::from_u128(255));
/// assert_eq!(id.to_string(), "000000000000000000000000000000ff");
/// assert!("not hex".parse::<ReplicaId>().is_err());
/// # Ok::<(), tally_crdt::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(u128);

impl ReplicaId {
    /// The reserved all-zero id; [`SyncRequest::validate`](crate::SyncRequest::validate)
    /// rejects it, so a replica that forgot to draw its id cannot sync.
    pub const NIL: ReplicaId = ReplicaId(0);

    /// Number of hex digits in the text form.
    pub const HEX_LEN: usize = 32;

    /// The id with this 128-bit value.
    pub const fn from_u128(value: u128) -> Self {
        ReplicaId(value)
    }

    /// The id made of 16 random bytes (big-endian), as a new incarnation draws them.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        ReplicaId(u128::from_be_bytes(bytes))
    }

    /// The 128-bit value of this id.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The 16 bytes of this id (big-endian).
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Whether this is the reserved [`ReplicaId::NIL`].
    pub const fn is_nil(self) -> bool {
        self.0 == 0
    }

    /// Bits of an id that name its generation (the rest name its object).
    const GENERATION_BITS: u32 = 32;

    /// The incarnation `generation` of the object `object` names: the object's 96 bits with
    /// the generation in the low 32 ([`object`](Self::object) and
    /// [`generation`](Self::generation) read them back). An edge object draws its 96 bits
    /// once per storage lifetime and numbers its incarnations, so any merger can tell, from an
    /// id alone, which object an incarnation belongs to and which came before it — what lets a
    /// per-object [`Carry`](crate::Carry) stand for every earlier incarnation's final slot.
    pub const fn lineage(object: ReplicaId, generation: u32) -> ReplicaId {
        ReplicaId((object.0 >> Self::GENERATION_BITS << Self::GENERATION_BITS) | generation as u128)
    }

    /// The object this incarnation belongs to: the id with its generation bits zero.
    pub const fn object(self) -> ReplicaId {
        ReplicaId(self.0 >> Self::GENERATION_BITS << Self::GENERATION_BITS)
    }

    /// The incarnation's generation: its low 32 bits. (An id drawn whole at random, as an
    /// edge before lineages drew it, reads as some generation of an object nobody else
    /// names: a carry of that object never exists, except the one its own retirement writes.)
    pub const fn generation(self) -> u32 {
        // Truncation is the point: the low 32 bits.
        #[allow(clippy::cast_possible_truncation)]
        let generation = self.0 as u32;
        generation
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplicaId({self})")
    }
}

impl FromStr for ReplicaId {
    type Err = Error;

    /// Parses exactly 32 hex digits (either case; the canonical form is lowercase).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != Self::HEX_LEN || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidReplicaId);
        }
        u128::from_str_radix(s, 16)
            .map(ReplicaId)
            .map_err(|_| Error::InvalidReplicaId)
    }
}

impl Serialize for ReplicaId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ReplicaId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = ReplicaId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a replica id of 32 hex digits")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ReplicaId, E> {
                v.parse()
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_str(IdVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn text_form_is_32_lowercase_hex_digits_and_round_trips() {
        let id = ReplicaId::from_u128(0xABCD_u128 << 100 | 7);
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<ReplicaId>(), Ok(id));
        assert_eq!(text.to_uppercase().parse::<ReplicaId>(), Ok(id));
    }

    #[test]
    fn bytes_round_trip_big_endian() {
        let mut bytes = [0u8; 16];
        bytes[15] = 1;
        assert_eq!(ReplicaId::from_bytes(bytes), ReplicaId::from_u128(1));
        assert_eq!(ReplicaId::from_u128(1).to_bytes(), bytes);
    }

    #[test]
    fn rejects_wrong_length_sign_and_non_hex() {
        for bad in [
            "",
            "0",
            &"0".repeat(31),
            &"0".repeat(33),
            "+0000000000000000000000000000001",
            "g0000000000000000000000000000000",
            " 0000000000000000000000000000001",
        ] {
            assert_eq!(
                bad.parse::<ReplicaId>(),
                Err(Error::InvalidReplicaId),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn serde_uses_the_text_form() {
        let id = ReplicaId::from_u128(u128::MAX);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"ffffffffffffffffffffffffffffffff\"");
        assert_eq!(serde_json::from_str::<ReplicaId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<ReplicaId>("12").is_err());
        assert!(serde_json::from_str::<ReplicaId>("\"12\"").is_err());
    }
}
