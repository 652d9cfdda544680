//! Which Durable Object serves a counter: consistent hashing over a region's partitions.
//!
//! Each region has `PARTITIONS` objects, named `<region>:<partition>`. A counter is served by
//! `SPREAD` of them (its "virtual shards"): spread index `s` in `0..SPREAD` maps the counter to
//! partition `jump(hash(key, s), PARTITIONS)`. A hit picks `s` at random, so a hot counter's
//! writes are spread over up to `SPREAD` objects (one object takes a few hundred storage
//! writes per second); a read may go to any of them, since each answers the global count.
//! What one object holds is a share of the region's counters, not all of them.
//!
//! [Jump consistent hash](https://arxiv.org/abs/1406.2294) moves only `1/(n+1)` of the
//! counters when a region grows from `n` to `n+1` partitions. The hash is FNV-1a over the
//! counter's storage key, finished with SplitMix64: fixed by this file, so every Worker
//! version and every platform routes a counter to the same objects. A change of routing (more
//! partitions, a wider spread) is safe for the counts: each object is its own replica with
//! its own slots, so a counter that moves simply gains a slot at its new object.
//!
//! A region is a [`Region`]: its name checked once, where it enters (the request's continent,
//! the override header, an internal message), so every object name made from it is sound.

use serde::{Deserialize, Serialize};
use tally_crdt::{CounterKey, check_region};

/// A region's name: 1 to [`tally_crdt::MAX_REGION_LEN`] ASCII letters, digits, `-` or `_`
/// ([`check_region`]), checked when it is made, from a request or an internal message (the
/// serde form is the name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Region(String);

impl Region {
    /// The region of a request whose continent the runtime does not name.
    pub const UNKNOWN: &str = "unknown";

    /// A region named `name`.
    ///
    /// # Errors
    ///
    /// [`tally_crdt::Error::InvalidRegion`] for a name that is not a region's.
    pub fn new(name: &str) -> Result<Region, tally_crdt::Error> {
        Region::try_from(name.to_owned())
    }

    /// The region of a request the runtime names no continent for.
    pub fn unknown() -> Region {
        Region(Self::UNKNOWN.to_owned())
    }

    /// Its name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Region {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Region {
    type Error = tally_crdt::Error;

    fn try_from(name: String) -> Result<Region, tally_crdt::Error> {
        check_region(&name)?;
        Ok(Region(name))
    }
}

impl From<Region> for String {
    fn from(region: Region) -> String {
        region.0
    }
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stable 64-bit hash of a counter and a spread index.
pub fn hash(key: &CounterKey, spread_index: u32) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    let kind = key.kind().as_str().as_bytes();
    for &b in kind.iter().chain(b":").chain(key.id().as_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    splitmix64(h ^ u64::from(spread_index).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Jump consistent hash (Lamping and Veach, 2014): a bucket in `0..buckets` for `key`.
pub fn jump(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // (b + 1) * 2^31 / ((key >> 33) + 1), in floating point as the paper has it.
        #[allow(clippy::cast_precision_loss, reason = "the paper's arithmetic")]
        let step = ((b + 1) as f64) * ((1u64 << 31) as f64) / (((key >> 33) + 1) as f64);
        #[allow(
            clippy::cast_possible_truncation,
            reason = "step < 2^63 for buckets < 2^31"
        )]
        {
            j = step as i64;
        }
    }
    u32::try_from(b).expect("jump returns a bucket below `buckets`, a u32")
}

/// A stable 64-bit hash of some byte strings (FNV-1a over each, a 0xff byte between them,
/// which no id or session holds; finished with SplitMix64), for the presence and unique
/// objects' routing.
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for (i, part) in parts.iter().enumerate() {
        let separator: &[u8] = if i == 0 { &[] } else { &[0xff] };
        for &b in separator.iter().chain(part.iter()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    splitmix64(h)
}

/// The presence object of a region that holds `session` of presence id `id`: every heartbeat
/// of a session reaches the same object, and an id's sessions spread over all of them.
pub fn presence_partition(id: &str, session: &str, partitions: u32) -> u32 {
    jump(
        hash_parts(&[b"presence", id.as_bytes(), session.as_bytes()]),
        partitions.max(1),
    )
}

/// The unique object of a region for id `id` and spread index `s`.
pub fn unique_partition(id: &str, s: u32, partitions: u32) -> u32 {
    jump(
        hash_parts(&[b"unique", id.as_bytes(), &s.to_le_bytes()]),
        partitions.max(1),
    )
}

/// The partition of `key` for spread index `s`.
pub fn partition(key: &CounterKey, s: u32, partitions: u32) -> u32 {
    jump(hash(key, s), partitions.max(1))
}

/// The Durable Object name of a region's partition.
pub fn object_name(region: &str, partition: u32) -> String {
    format!("{region}:{partition}")
}

/// The name of a region's presence object (class `Presence`).
pub fn presence_object_name(region: &str, partition: u32) -> String {
    format!("presence:{region}:{partition}")
}

/// The name of a region's unique-visitor object (class `Unique`).
pub fn unique_object_name(region: &str, partition: u32) -> String {
    format!("unique:{region}:{partition}")
}

/// The Durable Object location hint for a region, so its objects live near its users:
/// Cloudflare's continent codes (and the short names the tests use) to its hint names.
/// `None` lets Cloudflare place the object near its first request.
pub fn location_hint(region: &str) -> Option<&'static str> {
    match region.to_ascii_lowercase().as_str() {
        "eu" => Some("weur"),
        "na" | "us" => Some("enam"),
        "sa" => Some("sam"),
        "as" | "ap" => Some("apac"),
        "oc" => Some("oc"),
        "af" => Some("afr"),
        "me" => Some("me"),
        _ => None,
    }
}

/// The spread index `random` picks for one request among `spread`: hits and reads of a hot
/// counter go to several objects.
pub fn spread_index(random: u64, spread: u32) -> u32 {
    u32::try_from(random % u64::from(spread.max(1))).expect("below a u32")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_is_checked_where_it_is_made_and_read() {
        assert_eq!(Region::new("eu").unwrap().as_str(), "eu");
        assert_eq!(Region::unknown().as_str(), "unknown");
        for bad in [
            "",
            "e u",
            "eu:1",
            "ü",
            &"a".repeat(tally_crdt::MAX_REGION_LEN + 1),
        ] {
            assert!(Region::new(bad).is_err(), "{bad:?}");
            let json = serde_json::to_string(bad).unwrap();
            assert!(serde_json::from_str::<Region>(&json).is_err(), "{bad:?}");
        }
        let eu: Region = serde_json::from_str(r#""eu-west_2""#).unwrap();
        assert_eq!(serde_json::to_string(&eu).unwrap(), r#""eu-west_2""#);
    }
    use tally_crdt::CounterKind;

    fn key(id: &str) -> CounterKey {
        CounterKey::new(CounterKind::G, id).unwrap()
    }

    #[test]
    fn routing_is_fixed_by_this_file() {
        // Golden values: a change here moves every counter to other objects.
        assert_eq!(jump(0, 1), 0);
        assert_eq!(jump(256, 1024), 520);
        let golden: Vec<u32> = ["home", "likes:42", "a"]
            .iter()
            .map(|id| partition(&key(id), 0, 64))
            .collect();
        assert_eq!(golden, GOLDEN);
    }
    const GOLDEN: [u32; 3] = [49, 55, 60];

    #[test]
    fn a_spread_index_is_one_of_the_spread() {
        let picked: std::collections::BTreeSet<u32> = (0..64u64)
            .map(|r| spread_index(r.wrapping_mul(0x9e37_79b9), 4))
            .collect();
        assert_eq!(picked, (0..4).collect());
        assert_eq!(spread_index(u64::MAX, 1), 0);
        assert_eq!(spread_index(7, 0), 0, "a spread of 0 reads as 1");
    }

    #[test]
    fn counters_spread_evenly_over_partitions() {
        let parts = 16;
        let mut load = vec![0u32; parts as usize];
        for i in 0..16_000 {
            load[partition(&key(&format!("page-{i}")), 0, parts) as usize] += 1;
        }
        for (p, n) in load.iter().enumerate() {
            assert!((800..1200).contains(n), "partition {p} has {n} of 16000");
        }
    }

    #[test]
    fn growing_a_region_moves_few_counters() {
        let moved = (0..10_000)
            .filter(|i| {
                let k = key(&format!("c{i}"));
                partition(&k, 0, 10) != partition(&k, 0, 11)
            })
            .count();
        // Jump hash moves 1/11 of the keys, about 909.
        assert!((700..1100).contains(&moved), "{moved}");
    }

    #[test]
    fn a_counter_spreads_over_several_partitions() {
        let k = key("viral");
        let mut seen: Vec<u32> = (0..8).map(|s| partition(&k, s, 64)).collect();
        seen.sort_unstable();
        seen.dedup();
        assert!(seen.len() >= 6, "{seen:?}");
    }

    #[test]
    fn known_regions_get_a_location_hint() {
        assert_eq!(location_hint("EU"), Some("weur"));
        assert_eq!(location_hint("us"), Some("enam"));
        assert_eq!(location_hint("unknown"), None);
        assert_eq!(object_name("eu", 3), "eu:3");
    }
}
