//! Receipts: the short token a counter `PUT` answers (`Tally-Receipt`), naming the hit.
//!
//! A hit with delta `d` on a replica whose slot total it takes to `end` owns the slot's units
//! `end - d + 1 ..= end`: no other hit of that replica (incarnation) owns any of them, since
//! a slot only grows by its own hits. The merger gives every unit one global ordinal, in its
//! commit order, so "which hit was the N-th" is "which receipt holds the unit that got
//! ordinal N" (see docs/milestones.md).
//!
//! Wire form: URL-safe base64 without padding of 37 bytes, version `1`, the replica (16
//! bytes), `end` (8 bytes, big-endian), `delta` (4 bytes, big-endian) and the first 8 bytes of
//! `HMAC-SHA256(key, "tally-receipt:v1:" + id + ":" + the 29 bytes before)`: a receipt is
//! bound to its counter, and only who holds the key (the edge and the merger share the sync
//! token) can make one, so a client cannot claim a hit that is not its own.

use alloc::string::String;
use alloc::vec::Vec;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Error, ReplicaId};

const VERSION: u8 = 1;
const BODY_LEN: usize = 1 + 16 + 8 + 4;
const MAC_LEN: usize = 8;
/// Length of a receipt's text form.
pub const RECEIPT_LEN: usize = ((BODY_LEN + MAC_LEN) * 4).div_ceil(3);

/// One hit: the units `end - delta + 1 ..= end` of `replica`'s slot of a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Receipt {
    /// The replica (incarnation) that counted the hit.
    pub replica: ReplicaId,
    /// Its slot total right after the hit.
    pub end: u64,
    /// The hit's delta, at least 1.
    pub delta: u32,
}

impl Receipt {
    /// The first unit of the slot the hit owns.
    pub fn first(&self) -> u64 {
        self.end - u64::from(self.delta) + 1
    }

    /// Whether `unit` of `replica`'s slot belongs to this hit.
    pub fn holds(&self, replica: ReplicaId, unit: u64) -> bool {
        replica == self.replica && (self.first()..=self.end).contains(&unit)
    }

    /// The text form for counter `id`, signed with `key`.
    ///
    /// # Panics
    ///
    /// If `delta` is 0 or above `end` (no hit has that shape).
    pub fn encode(&self, key: &[u8], id: &str) -> String {
        assert!(
            self.delta >= 1 && u64::from(self.delta) <= self.end,
            "a receipt names at least one unit of the slot"
        );
        let mut bytes = self.body();
        let mac = mac(key, id, &bytes);
        bytes.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads and checks a receipt of counter `id` made with `key`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidReceipt`] for anything but a receipt this key made for this counter.
    pub fn decode(text: &str, key: &[u8], id: &str) -> Result<Receipt, Error> {
        if text.len() != RECEIPT_LEN {
            return Err(Error::InvalidReceipt);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| Error::InvalidReceipt)?;
        let (body, tag) = bytes.split_at(BODY_LEN);
        let mut check = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
        feed(&mut check, id, body);
        check
            .verify_truncated_left(tag)
            .map_err(|_| Error::InvalidReceipt)?;
        if body[0] != VERSION {
            return Err(Error::InvalidReceipt);
        }
        let replica = ReplicaId::from_bytes(body[1..17].try_into().expect("16 bytes"));
        let end = u64::from_be_bytes(body[17..25].try_into().expect("8 bytes"));
        let delta = u32::from_be_bytes(body[25..29].try_into().expect("4 bytes"));
        if delta == 0 || u64::from(delta) > end || replica.is_nil() {
            return Err(Error::InvalidReceipt);
        }
        Ok(Receipt {
            replica,
            end,
            delta,
        })
    }

    fn body(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(BODY_LEN + MAC_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&self.replica.to_bytes());
        bytes.extend_from_slice(&self.end.to_be_bytes());
        bytes.extend_from_slice(&self.delta.to_be_bytes());
        bytes
    }
}

fn feed(mac: &mut Hmac<Sha256>, id: &str, body: &[u8]) {
    mac.update(b"tally-receipt:v1:");
    mac.update(id.as_bytes());
    mac.update(b":");
    mac.update(body);
}

fn mac(key: &[u8], id: &str, body: &[u8]) -> [u8; MAC_LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    feed(&mut mac, id, body);
    let full = mac.finalize().into_bytes();
    full[..MAC_LEN].try_into().expect("8 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"a-sync-token-0123456789";

    fn receipt() -> Receipt {
        Receipt {
            replica: ReplicaId::from_u128(0xabc),
            end: 1_000_000_000_007,
            delta: 3,
        }
    }

    #[test]
    fn a_receipt_round_trips_and_names_its_units() {
        let r = receipt();
        let text = r.encode(KEY, "home");
        assert_eq!(text.len(), RECEIPT_LEN);
        assert_eq!(Receipt::decode(&text, KEY, "home"), Ok(r));
        assert!(r.holds(r.replica, 1_000_000_000_005));
        assert!(r.holds(r.replica, 1_000_000_000_007));
        assert!(!r.holds(r.replica, 1_000_000_000_004));
        assert!(!r.holds(r.replica, 1_000_000_000_008));
        assert!(!r.holds(ReplicaId::from_u128(0xabd), 1_000_000_000_006));
    }

    #[test]
    fn a_receipt_of_another_counter_key_or_a_changed_byte_is_refused() {
        let text = receipt().encode(KEY, "home");
        assert_eq!(
            Receipt::decode(&text, KEY, "about"),
            Err(Error::InvalidReceipt)
        );
        assert_eq!(
            Receipt::decode(&text, b"another-key-0123456789", "home"),
            Err(Error::InvalidReceipt)
        );
        let mut bytes = URL_SAFE_NO_PAD.decode(&text).expect("base64");
        for i in 0..bytes.len() {
            bytes[i] ^= 1;
            let forged = URL_SAFE_NO_PAD.encode(&bytes);
            assert_eq!(
                Receipt::decode(&forged, KEY, "home"),
                Err(Error::InvalidReceipt),
                "byte {i}"
            );
            bytes[i] ^= 1;
        }
        for bad in ["", "x", &text[1..], &alloc::format!("{text}A"), "!!!"] {
            assert_eq!(
                Receipt::decode(bad, KEY, "home"),
                Err(Error::InvalidReceipt)
            );
        }
    }
}
