//! [`HyperLogLog`]: a mergeable sketch of how many distinct items were seen.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::Error;

/// A HyperLogLog sketch: an estimate of the number of distinct items inserted, mergeable by
/// register-wise max.
///
/// A counter counts hits; a HyperLogLog counts *distinct* things (visitors, IPs, user agents)
/// in a few KiB whatever their number, and merges like the counters do: register-wise max,
/// commutative, associative and idempotent. So an edge replica keeps one sketch per counter
/// and sends the registers that grew since its last acknowledged sync
/// ([`changes_since`](HyperLogLog::changes_since)); the merger applies them with
/// [`merge_registers`](HyperLogLog::merge_registers). A replayed, reordered or stale batch
/// changes nothing, because a register only ever takes the max.
///
/// # Design
///
/// - **Hash**: xxh3, 64 bits, with the fixed seed [`HyperLogLog::SEED`] (`"tally-h1"` in
///   ASCII). Every sketch that is merged with another must hash the same way, so the seed is
///   not a parameter: it is part of wire version 1. [`HyperLogLog::insert_hash`] takes a
///   hash made elsewhere, which must be as uniform as xxh3's.
/// - **Registers**: the top `p` bits of the hash pick one of `m = 2^p` registers; the rank
///   is 1 + the number of leading zeros of the other `64 - p` bits (at most `65 - p`, which
///   fits the 6 bits a register gets on the wire). A register holds the max rank seen.
/// - **Precision**: `p` in [`MIN_PRECISION`](HyperLogLog::MIN_PRECISION)`..=`
///   [`MAX_PRECISION`](HyperLogLog::MAX_PRECISION) (4..=18); relative standard error
///   `1.04 / sqrt(2^p)`. The default, 12, is the smallest precision whose error is at most
///   2 %: 1.625 % (p = 11 would give 2.3 %), for 3 KiB dense on the wire.
/// - **Estimator**: Otmar Ertl's improved raw estimator ("New cardinality estimation
///   algorithms for HyperLogLog sketches", 2017, arXiv:1702.01284). It works on the register
///   histogram alone, is nearly unbiased over the whole range a 64-bit hash can count, with
///   no empirical bias table (HLL++ needs about 200 numbers per precision for that), and
///   needs no switch to linear counting at small cardinalities (its `σ` term does that
///   smoothly). HLL++ is more exact below about `m / 4` items, because its sparse form keeps
///   25-bit indexes; here the sparse form holds the same `p`-bit registers as the dense one,
///   which keeps merging, deltas and the wire form one simple thing, and small counts are
///   still within a fraction of the standard error (linear counting).
/// - **Representation**: *sparse*, a sorted list of the set registers (4 bytes each in
///   memory), while at most `m / 4` registers are set; *dense*, one byte per register
///   (`m` bytes), beyond. That is exactly the point where the sparse list would be larger than
///   the dense array, in memory and on the wire alike. Registers only grow, so a sketch
///   never goes back to sparse, and the representation is a function of the registers:
///   equal sketches compare equal and encode to equal bytes.
/// - **Different precisions** do not merge: [`Error::HllPrecisionMismatch`], nothing
///   changed. Silently coarsening a sketch would lose accuracy no caller asked to lose; a
///   caller who wants the coarser union says so with [`downsample`](HyperLogLog::downsample),
///   which gives exactly the sketch the coarser precision would have built from the same items.
///
/// # Syncing registers
///
/// An edge replica keeps, per counter, its live sketch and `acknowledged`, the registers
/// the merger has confirmed. A sync sends `live.changes_since(&acknowledged)`, the
/// `(index, rank)` pairs of the registers that grew since; once the merger answers,
/// the replica applies the same list to `acknowledged` with `merge_registers`. The merger
/// applies every list it receives with `merge_registers` (max per register), so a retry,
/// a duplicate or a batch that overtakes a later one changes nothing; a lost answer only
/// makes the next batch repeat registers. `merge_registers` checks each pair against the
/// precision first, so a bad list is refused whole.
///
/// # Wire form (version 1)
///
/// [`to_bytes`](HyperLogLog::to_bytes) writes a 3-byte header, `[version = 1, p, encoding]`,
/// then
///
/// - encoding 0, **sparse**: one 3-byte big-endian entry per set register,
///   `index << 6 | rank`, indexes strictly increasing;
/// - encoding 1, **dense**: all `m` registers, 6 bits each, packed big-endian (4 registers
///   in 3 bytes), `3 · m / 4` bytes.
///
/// [`from_bytes`](HyperLogLog::from_bytes) refuses every other input with a typed [`Error`]
/// and never panics. It accepts either encoding for any number of set registers, and
/// normalizes. Serde writes the wire form as a base64 string (URL-safe alphabet, no padding),
/// so a sketch fits a JSON body.
///
/// # Examples
///
/// ```
/// use tally_crdt::HyperLogLog;
///
/// let mut paris = HyperLogLog::new(); // precision 12: 1.625 % standard error
/// let mut tokyo = HyperLogLog::new();
/// for visitor in 0..600u32 {
///     paris.insert(&visitor.to_le_bytes());
/// }
/// for visitor in 400..1000u32 {
///     tokyo.insert(&visitor.to_le_bytes()); // 400..600 were in Paris too
/// }
///
/// // The merger gets only the registers that moved; replays change nothing.
/// let mut global = HyperLogLog::new();
/// let changes = paris.changes_since(&global)?;
/// global.merge_registers(&changes)?;
/// global.merge_registers(&changes)?;
/// global.merge(&tokyo)?;
///
/// let estimate = global.estimate() as f64;
/// assert!((estimate - 1000.0).abs() <= 3.0 * global.relative_error() * 1000.0);
///
/// // The wire form round-trips; sketches of other precisions do not merge.
/// assert_eq!(HyperLogLog::from_bytes(&global.to_bytes())?, global);
/// let coarse = HyperLogLog::with_precision(10)?;
/// assert!(global.merge(&coarse).is_err());
/// global.downsample(10)?.merge(&coarse)?;
/// # Ok::<(), tally_crdt::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HyperLogLog {
    precision: u8,
    registers: Registers,
}

/// The registers, sparse exactly while at most `m / 4` are set (see "Design" on [`HyperLogLog`]).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Registers {
    /// The set registers as `index << 8 | rank`, sorted by index, ranks non-zero.
    Sparse(Vec<u32>),
    /// All `m` registers, one byte each.
    Dense(Vec<u8>),
}

/// Wire encoding byte of the sparse form.
const SPARSE: u8 = 0;
/// Wire encoding byte of the dense form.
const DENSE: u8 = 1;
/// Bytes of the wire header: version, precision, encoding.
const HEADER_LEN: usize = 3;

/// `α∞ = 1 / (2 ln 2)`, the limit of the HyperLogLog bias constant for large `m`.
const ALPHA_INF: f64 = 0.5 / core::f64::consts::LN_2;

impl HyperLogLog {
    /// The smallest precision: 16 registers, 26 % standard error.
    pub const MIN_PRECISION: u8 = 4;
    /// The largest precision: 262,144 registers (256 KiB dense in memory, 192 KiB on the
    /// wire), 0.2 % standard error.
    pub const MAX_PRECISION: u8 = 18;
    /// The default precision, 12: 4,096 registers, standard error 1.04 / 64 = 1.625 %, the
    /// smallest precision within 2 %. Dense, 4 KiB in memory and 3 KiB (+ 3) on the wire.
    pub const DEFAULT_PRECISION: u8 = 12;
    /// The seed of the xxh3 hash that [`insert`](Self::insert) applies: `"tally-h1"` in
    /// ASCII, big-endian. Fixed by wire version 1: sketches hashed otherwise do not merge.
    pub const SEED: u64 = u64::from_be_bytes(*b"tally-h1");
    /// The version byte [`to_bytes`](Self::to_bytes) writes and
    /// [`from_bytes`](Self::from_bytes) reads.
    pub const WIRE_VERSION: u8 = 1;

    /// An empty sketch of the [default precision](Self::DEFAULT_PRECISION).
    pub const fn new() -> Self {
        HyperLogLog {
            precision: Self::DEFAULT_PRECISION,
            registers: Registers::Sparse(Vec::new()),
        }
    }

    /// An empty sketch with `2^precision` registers.
    ///
    /// # Errors
    ///
    /// [`Error::HllInvalidPrecision`] unless `precision` is in
    /// [`MIN_PRECISION`](Self::MIN_PRECISION)`..=`[`MAX_PRECISION`](Self::MAX_PRECISION).
    pub fn with_precision(precision: u8) -> Result<Self, Error> {
        check_precision(precision)?;
        Ok(HyperLogLog {
            precision,
            registers: Registers::Sparse(Vec::new()),
        })
    }

    /// The precision `p`: the sketch has `2^p` registers.
    pub fn precision(&self) -> u8 {
        self.precision
    }

    /// The number of registers, `2^p`.
    pub fn register_count(&self) -> u32 {
        1 << self.precision
    }

    /// The relative standard error of [`estimate`](Self::estimate), `1.04 / sqrt(2^p)`:
    /// 1.625 % at the default precision. About 68 % of estimates fall within one standard
    /// error of the true count, 99.7 % within three.
    pub fn relative_error(&self) -> f64 {
        1.04 / libm::sqrt(f64::from(self.register_count()))
    }

    /// The seeded 64-bit hash of `item` that [`insert`](Self::insert) uses: xxh3 with
    /// [`SEED`](Self::SEED).
    pub fn hash(item: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(item, Self::SEED)
    }

    /// Adds `item`, hashed with [`hash`](Self::hash). Returns whether a register grew (an
    /// item seen before, or one that lands on a register already as high, changes nothing).
    pub fn insert(&mut self, item: &[u8]) -> bool {
        self.insert_hash(Self::hash(item))
    }

    /// Adds an item by its 64-bit hash, for callers that hash themselves. Mixing hashes made
    /// differently in one sketch (or in sketches that are merged) counts the same item twice.
    /// Returns whether a register grew.
    pub fn insert_hash(&mut self, hash: u64) -> bool {
        let p = u32::from(self.precision);
        let top = u32::try_from(hash >> 32).expect("a u64 shifted right by 32 fits in a u32");
        let index = top >> (32 - p);
        // The sentinel bit just below the index bits caps the rank at 65 - p when all the
        // other bits are zero.
        let rest = (hash << p) | (1 << (p - 1));
        let rank = u8::try_from(rest.leading_zeros() + 1).expect("rank is at most 65");
        self.raise(index, rank)
    }

    /// Merges `other` into `self`: every register becomes the max of the two. Returns whether
    /// a register grew.
    ///
    /// Commutative, associative and idempotent. Linear in the registers of both (the set
    /// ones for a sparse sketch).
    ///
    /// # Errors
    ///
    /// [`Error::HllPrecisionMismatch`] if the precisions differ; `self` is unchanged.
    pub fn merge(&mut self, other: &HyperLogLog) -> Result<bool, Error> {
        self.check_same_precision(other.precision)?;
        let grew = match (&mut self.registers, &other.registers) {
            (Registers::Dense(mine), Registers::Dense(theirs)) => {
                // Branch-free, so it vectorizes.
                let mut grew = false;
                for (a, &b) in mine.iter_mut().zip(theirs) {
                    grew |= b > *a;
                    *a = (*a).max(b);
                }
                grew
            }
            (Registers::Sparse(mine), Registers::Sparse(theirs)) => {
                let (merged, grew) = merge_sparse(mine, theirs);
                if grew {
                    *mine = merged;
                    self.densify_if_larger();
                }
                grew
            }
            (_, theirs) => {
                // One side dense: so is the union. Raise `self` (made dense if it is not).
                self.make_dense();
                let mut grew = false;
                for (index, rank) in theirs.iter_set() {
                    grew |= self.raise(index, rank);
                }
                grew
            }
        };
        Ok(grew)
    }

    /// The registers of `self` that are higher than in `older`, in index order: merging them
    /// into `older` (or into anything `older` was merged into) has the same effect as merging
    /// all of `self`. This is what an edge replica sends: `older` is the last state the
    /// merger acknowledged.
    ///
    /// # Errors
    ///
    /// [`Error::HllPrecisionMismatch`] if the precisions differ.
    pub fn changes_since(&self, older: &HyperLogLog) -> Result<Vec<(u32, u8)>, Error> {
        self.check_same_precision(older.precision)?;
        Ok(self
            .registers()
            .filter(|&(index, rank)| rank > older.get(index))
            .collect())
    }

    /// Merges registers `(index, rank)`, e.g. from [`changes_since`](Self::changes_since),
    /// each by max. Order and duplicates do not matter. The list is checked whole before
    /// anything is applied. Returns how many registers grew.
    ///
    /// # Errors
    ///
    /// [`Error::HllRegisterOutOfRange`] for an index at or past `2^p` or a rank above
    /// `65 - p`; `self` is unchanged. A rank of 0 is valid and changes nothing.
    pub fn merge_registers(&mut self, registers: &[(u32, u8)]) -> Result<usize, Error> {
        if let Some(&(index, rank)) = registers
            .iter()
            .find(|&&(index, rank)| !self.in_range(index, rank))
        {
            return Err(Error::HllRegisterOutOfRange { index, rank });
        }
        Ok(registers
            .iter()
            .filter(|&&(index, rank)| self.raise(index, rank))
            .count())
    }

    /// The value of register `index` (0 if it was never raised, or if `index` is past the
    /// last register).
    pub fn get(&self, index: u32) -> u8 {
        match &self.registers {
            Registers::Sparse(set) => set
                .binary_search_by_key(&index, |&e| e >> 8)
                .map_or(0, |at| sparse_rank(set[at])),
            Registers::Dense(all) => all.get(index as usize).copied().unwrap_or(0),
        }
    }

    /// The set (non-zero) registers as `(index, rank)`, in index order.
    pub fn registers(&self) -> impl Iterator<Item = (u32, u8)> + '_ {
        self.registers.iter_set()
    }

    /// The estimated number of distinct items inserted (into this sketch or any merged into
    /// it), rounded. Within [`relative_error`](Self::relative_error) of the truth in about two
    /// cases out of three; exact as far as registers can tell when few registers are set.
    pub fn estimate(&self) -> u64 {
        round_to_u64(self.estimate_f64())
    }

    /// Whether nothing was ever inserted (or merged in).
    pub fn is_empty(&self) -> bool {
        match &self.registers {
            Registers::Sparse(set) => set.is_empty(),
            Registers::Dense(_) => false, // dense means more than m / 4 registers are set
        }
    }

    /// Whether the registers are held sparse (few are set) rather than dense.
    pub fn is_sparse(&self) -> bool {
        matches!(self.registers, Registers::Sparse(_))
    }

    /// Bytes the registers take in memory: 4 per set register while sparse, `2^p` once dense
    /// (capacity slack of the vector not counted).
    pub fn size_in_bytes(&self) -> usize {
        match &self.registers {
            Registers::Sparse(set) => set.len() * 4,
            Registers::Dense(all) => all.len(),
        }
    }

    /// The length of [`to_bytes`](Self::to_bytes), without encoding: 3 + 3 per set register
    /// while sparse, 3 + `3 · 2^p / 4` once dense.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match &self.registers {
                Registers::Sparse(set) => set.len() * 3,
                Registers::Dense(all) => all.len() / 4 * 3,
            }
    }

    /// The wire form (version 1): see [`HyperLogLog`], "Wire form".
    pub fn to_bytes(&self) -> Vec<u8> {
        let encoding = if self.is_sparse() { SPARSE } else { DENSE };
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&[Self::WIRE_VERSION, self.precision, encoding]);
        match &self.registers {
            Registers::Sparse(set) => {
                for &entry in set {
                    let wire = (entry >> 8) << 6 | u32::from(sparse_rank(entry));
                    out.extend_from_slice(&wire.to_be_bytes()[1..]);
                }
            }
            Registers::Dense(all) => {
                for r in all.chunks_exact(4) {
                    out.extend_from_slice(&[
                        r[0] << 2 | r[1] >> 4,
                        (r[1] & 0x0f) << 4 | r[2] >> 2,
                        (r[2] & 0x03) << 6 | r[3],
                    ]);
                }
            }
        }
        out
    }

    /// A sketch from its wire form, as [`to_bytes`](Self::to_bytes) writes it.
    ///
    /// # Errors
    ///
    /// Never panics; refuses:
    /// - [`Error::HllBadLength`]: shorter than the header, a sparse body that is not whole
    ///   3-byte entries, a dense body that is not exactly `3 · 2^p / 4` bytes;
    /// - [`Error::HllUnsupportedVersion`]: a version byte other than 1;
    /// - [`Error::HllInvalidPrecision`]: a precision outside 4..=18;
    /// - [`Error::HllUnknownEncoding`]: an encoding byte other than 0 (sparse) or 1 (dense);
    /// - [`Error::HllRegisterOutOfRange`]: a rank above `65 - p`, a sparse index at or past
    ///   `2^p`, or a sparse entry of rank 0;
    /// - [`Error::HllUnsortedSparse`]: sparse indexes not strictly increasing.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let bad_length = Error::HllBadLength { got: bytes.len() };
        let Some((&[version, precision, encoding], body)) = bytes.split_first_chunk::<HEADER_LEN>()
        else {
            return Err(bad_length);
        };
        if version != Self::WIRE_VERSION {
            return Err(Error::HllUnsupportedVersion {
                got: version,
                supported: Self::WIRE_VERSION,
            });
        }
        let mut sketch = HyperLogLog::with_precision(precision)?;
        match encoding {
            SPARSE => {
                if body.len() % 3 != 0 {
                    return Err(bad_length);
                }
                let mut set = Vec::with_capacity(body.len() / 3);
                let mut previous = None;
                for entry in body.chunks_exact(3) {
                    let wire = u32::from_be_bytes([0, entry[0], entry[1], entry[2]]);
                    let (index, rank) = (wire >> 6, low_six_bits(wire));
                    if rank == 0 || !sketch.in_range(index, rank) {
                        return Err(Error::HllRegisterOutOfRange { index, rank });
                    }
                    if previous.is_some_and(|p| index <= p) {
                        return Err(Error::HllUnsortedSparse { index });
                    }
                    previous = Some(index);
                    set.push(index << 8 | u32::from(rank));
                }
                sketch.registers = Registers::Sparse(set);
                sketch.densify_if_larger();
            }
            DENSE => {
                let m = sketch.register_count() as usize;
                if body.len() != m / 4 * 3 {
                    return Err(bad_length);
                }
                let mut all = Vec::with_capacity(m);
                for b in body.chunks_exact(3) {
                    all.extend_from_slice(&[
                        b[0] >> 2,
                        (b[0] & 0x03) << 4 | b[1] >> 4,
                        (b[1] & 0x0f) << 2 | b[2] >> 6,
                        b[2] & 0x3f,
                    ]);
                }
                let max = sketch.max_rank();
                if let Some((index, &rank)) = all.iter().enumerate().find(|&(_, &r)| r > max) {
                    return Err(Error::HllRegisterOutOfRange {
                        index: index_u32(index),
                        rank,
                    });
                }
                sketch.registers = Registers::Dense(all);
                sketch.sparsify_if_smaller();
            }
            got => return Err(Error::HllUnknownEncoding { got }),
        }
        Ok(sketch)
    }

    /// The sketch that `precision` (lower than this one's) would have built from the same
    /// items: register `i` folds into `i >> d` (`d` = the precision dropped), its rank taken
    /// from the `d` index bits that become rank bits. Lets sketches of different precisions
    /// be merged at the coarser one.
    ///
    /// # Errors
    ///
    /// [`Error::HllInvalidPrecision`] if `precision` is above this sketch's or below
    /// [`MIN_PRECISION`](Self::MIN_PRECISION).
    pub fn downsample(&self, precision: u8) -> Result<HyperLogLog, Error> {
        if precision > self.precision {
            return Err(Error::HllInvalidPrecision { got: precision });
        }
        let mut coarse = HyperLogLog::with_precision(precision)?;
        let d = u32::from(self.precision - precision);
        for (index, rank) in self.registers() {
            let dropped = index & ((1 << d) - 1);
            let rank = if dropped == 0 {
                rank + u8::try_from(d).expect("at most 14 bits are dropped")
            } else {
                // Leading zeros of `dropped` as a d-bit number, plus one.
                u8::try_from(dropped.leading_zeros() - (32 - d) + 1).expect("at most 14")
            };
            coarse.raise(index >> d, rank);
        }
        Ok(coarse)
    }

    /// The estimate before rounding: Ertl's improved raw estimator (2017) on the
    /// histogram of register values.
    fn estimate_f64(&self) -> f64 {
        let q = usize::from(64 - self.precision);
        let m = f64::from(self.register_count());
        // counts[k]: how many registers hold k, for k in 0..=q + 1 (q + 1 <= 61); 256 long
        // so that indexing by a u8 needs no bounds check.
        let mut counts = [0u32; 256];
        match &self.registers {
            Registers::Sparse(set) if set.is_empty() => return 0.0,
            Registers::Sparse(set) => {
                for &entry in set {
                    counts[usize::from(sparse_rank(entry))] += 1;
                }
                counts[0] = self.register_count() - index_u32(set.len());
            }
            Registers::Dense(all) => {
                // Four histograms, so that runs of equal ranks do not wait on each other's
                // increments; m is a multiple of 16.
                let mut more = [[0u32; 256]; 3];
                for r in all.chunks_exact(4) {
                    counts[usize::from(r[0])] += 1;
                    more[0][usize::from(r[1])] += 1;
                    more[1][usize::from(r[2])] += 1;
                    more[2][usize::from(r[3])] += 1;
                }
                for (k, c) in counts.iter_mut().enumerate().take(q + 2) {
                    *c += more[0][k] + more[1][k] + more[2][k];
                }
            }
        }
        let mut z = m * tau(1.0 - f64::from(counts[q + 1]) / m);
        for &c in counts[1..=q].iter().rev() {
            z = 0.5 * (z + f64::from(c));
        }
        z += m * sigma(f64::from(counts[0]) / m);
        ALPHA_INF * m * m / z
    }

    /// Raises register `index` to `rank` if that is higher; returns whether it grew. Converts
    /// to dense when the sparse list passes `m / 4`. `index` and `rank` must be in range.
    fn raise(&mut self, index: u32, rank: u8) -> bool {
        debug_assert!(self.in_range(index, rank));
        match &mut self.registers {
            Registers::Dense(all) => {
                let slot = &mut all[index as usize];
                if rank > *slot {
                    *slot = rank;
                    return true;
                }
                false
            }
            Registers::Sparse(set) => match set.binary_search_by_key(&index, |&e| e >> 8) {
                Ok(at) if rank > sparse_rank(set[at]) => {
                    set[at] = index << 8 | u32::from(rank);
                    true
                }
                Ok(_) => false,
                Err(_) if rank == 0 => false,
                Err(at) => {
                    set.insert(at, index << 8 | u32::from(rank));
                    self.densify_if_larger();
                    true
                }
            },
        }
    }

    fn in_range(&self, index: u32, rank: u8) -> bool {
        index < self.register_count() && rank <= self.max_rank()
    }

    /// `65 - p`: the rank of a hash whose `64 - p` non-index bits are all zero.
    fn max_rank(&self) -> u8 {
        65 - self.precision
    }

    /// The most registers a sparse sketch holds: past `m / 4`, 4 bytes each would outweigh
    /// the dense array's byte per register (and 3 bytes each on the wire, its 6 bits each).
    fn sparse_limit(&self) -> usize {
        self.register_count() as usize / 4
    }

    fn densify_if_larger(&mut self) {
        if let Registers::Sparse(set) = &self.registers
            && set.len() > self.sparse_limit()
        {
            self.make_dense();
        }
    }

    fn sparsify_if_smaller(&mut self) {
        if let Registers::Dense(all) = &self.registers {
            let set: Vec<u32> = self
                .registers()
                .map(|(i, r)| i << 8 | u32::from(r))
                .collect();
            debug_assert!(all.len() == self.register_count() as usize);
            if set.len() <= self.sparse_limit() {
                self.registers = Registers::Sparse(set);
            }
        }
    }

    fn make_dense(&mut self) {
        if let Registers::Sparse(set) = &self.registers {
            let mut all = vec![0; self.register_count() as usize];
            for &entry in set {
                all[(entry >> 8) as usize] = sparse_rank(entry);
            }
            self.registers = Registers::Dense(all);
        }
    }

    fn check_same_precision(&self, theirs: u8) -> Result<(), Error> {
        if theirs == self.precision {
            Ok(())
        } else {
            Err(Error::HllPrecisionMismatch {
                ours: self.precision,
                theirs,
            })
        }
    }
}

impl Registers {
    /// The set registers as `(index, rank)`, in index order.
    fn iter_set(&self) -> impl Iterator<Item = (u32, u8)> + '_ {
        let (set, all): (&[u32], &[u8]) = match self {
            Registers::Sparse(set) => (set, &[]),
            Registers::Dense(all) => (&[], all),
        };
        set.iter().map(|&e| (e >> 8, sparse_rank(e))).chain(
            all.iter()
                .enumerate()
                .filter(|&(_, &r)| r > 0)
                .map(|(i, &r)| (index_u32(i), r)),
        )
    }
}

impl Default for HyperLogLog {
    fn default() -> Self {
        HyperLogLog::new()
    }
}

impl fmt::Debug for HyperLogLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HyperLogLog")
            .field("precision", &self.precision)
            .field("sparse", &self.is_sparse())
            .field("set_registers", &self.registers().count())
            .field("estimate", &self.estimate())
            .finish()
    }
}

impl Serialize for HyperLogLog {
    /// The [wire form](HyperLogLog::to_bytes) as base64 (URL-safe alphabet, no padding).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&URL_SAFE_NO_PAD.encode(self.to_bytes()))
    }
}

impl<'de> Deserialize<'de> for HyperLogLog {
    /// A base64 string (URL-safe, no padding) of the [wire form](HyperLogLog::from_bytes);
    /// any other string, or any wire form `from_bytes` refuses, is an error.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Base64Visitor;
        impl Visitor<'_> for Base64Visitor {
            type Value = HyperLogLog;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a HyperLogLog as URL-safe base64 without padding")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<HyperLogLog, E> {
                let bytes = URL_SAFE_NO_PAD
                    .decode(text)
                    .map_err(|e| E::custom(format_args!("HyperLogLog is not base64: {e}")))?;
                HyperLogLog::from_bytes(&bytes).map_err(E::custom)
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<HyperLogLog, E> {
                self.visit_str(&text)
            }
        }
        deserializer.deserialize_str(Base64Visitor)
    }
}

fn check_precision(precision: u8) -> Result<(), Error> {
    if (HyperLogLog::MIN_PRECISION..=HyperLogLog::MAX_PRECISION).contains(&precision) {
        Ok(())
    } else {
        Err(Error::HllInvalidPrecision { got: precision })
    }
}

/// Merges two sorted sparse lists by max per index; returns the union and whether `mine`
/// grew.
fn merge_sparse(mine: &[u32], theirs: &[u32]) -> (Vec<u32>, bool) {
    let mut out = Vec::with_capacity(mine.len() + theirs.len());
    let (mut i, mut j, mut grew) = (0, 0, false);
    while i < mine.len() && j < theirs.len() {
        let (a, b) = (mine[i], theirs[j]);
        match (a >> 8).cmp(&(b >> 8)) {
            core::cmp::Ordering::Less => {
                out.push(a);
                i += 1;
            }
            core::cmp::Ordering::Greater => {
                out.push(b);
                grew = true;
                j += 1;
            }
            core::cmp::Ordering::Equal => {
                // Same index in the high bits, so the larger entry has the larger rank.
                grew |= b > a;
                out.push(a.max(b));
                i += 1;
                j += 1;
            }
        }
    }
    grew |= j < theirs.len();
    out.extend_from_slice(&mine[i..]);
    out.extend_from_slice(&theirs[j..]);
    (out, grew)
}

/// The rank of a sparse entry `index << 8 | rank`.
fn sparse_rank(entry: u32) -> u8 {
    entry.to_le_bytes()[0]
}

fn low_six_bits(wire: u32) -> u8 {
    wire.to_le_bytes()[0] & 0x3f
}

fn index_u32(index: usize) -> u32 {
    u32::try_from(index).expect("a sketch has at most 2^18 registers")
}

/// Rounds a non-negative estimate to the nearest `u64`, saturating (an estimate is finite
/// unless every register is at its maximum rank, which no real data reaches).
fn round_to_u64(estimate: f64) -> u64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "float-to-int `as` saturates (NaN to 0, +inf to u64::MAX): the rounding wanted"
    )]
    let rounded = (estimate + 0.5) as u64;
    rounded
}

/// `σ(x) = x + Σ_{k≥1} x^(2^k) 2^(k-1)` (Ertl 2017), summed until it stops changing; `x` is
/// the fraction of registers at 0. Infinite at 1 (an empty sketch, handled before).
fn sigma(x: f64) -> f64 {
    if x >= 1.0 {
        return f64::INFINITY;
    }
    let (mut x, mut y, mut z) = (x, 1.0, x);
    loop {
        x *= x;
        let before = z;
        z += x * y;
        y += y;
        if z == before {
            return z;
        }
    }
}

/// `τ(x) = (1 - x - Σ_{k≥1} (1 - x^(2^-k))^2 2^-k) / 3` (Ertl 2017), summed until it stops
/// changing; `x` is 1 - the fraction of registers at the maximum rank.
fn tau(x: f64) -> f64 {
    if x <= 0.0 || x >= 1.0 {
        return 0.0;
    }
    let (mut x, mut y, mut z) = (x, 1.0, 1.0 - x);
    loop {
        x = libm::sqrt(x);
        let before = z;
        y *= 0.5;
        z -= (1.0 - x) * (1.0 - x) * y;
        if z == before {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch(p: u8, hashes: impl IntoIterator<Item = u64>) -> HyperLogLog {
        let mut s = HyperLogLog::with_precision(p).unwrap();
        for h in hashes {
            s.insert_hash(h);
        }
        s
    }

    #[test]
    fn the_default_precision_is_the_smallest_within_two_percent() {
        let default = HyperLogLog::new();
        assert_eq!(default.precision(), 12);
        assert!((default.relative_error() - 0.01625).abs() < 1e-12);
        assert!(default.relative_error() <= 0.02);
        let below = HyperLogLog::with_precision(11).unwrap();
        assert!(below.relative_error() > 0.02);
    }

    #[test]
    fn precision_outside_4_to_18_is_refused() {
        for p in [0, 3, 19, 64, 255] {
            assert_eq!(
                HyperLogLog::with_precision(p),
                Err(Error::HllInvalidPrecision { got: p })
            );
        }
        for p in 4..=18 {
            assert_eq!(HyperLogLog::with_precision(p).unwrap().precision(), p);
        }
    }

    #[test]
    fn the_seed_is_tally_h1_in_ascii() {
        assert_eq!(HyperLogLog::SEED, 0x7461_6c6c_792d_6831);
        assert_eq!(
            HyperLogLog::hash(b"home"),
            xxhash_rust::xxh3::xxh3_64_with_seed(b"home", 0x7461_6c6c_792d_6831)
        );
    }

    #[test]
    fn index_is_the_top_bits_and_rank_counts_the_zeros_after_them() {
        let mut s = HyperLogLog::with_precision(4).unwrap();
        // Index 0b1010, then 0b001 followed by ones: rank 3.
        assert!(s.insert_hash(0xA000_0000_0000_0000 | (1 << 57) | 0xffff));
        assert_eq!(s.registers().collect::<Vec<_>>(), [(10, 3)]);
        // All 60 non-index bits zero: the largest rank, 65 - 4.
        assert!(s.insert_hash(0x3000_0000_0000_0000));
        assert_eq!(s.get(3), 61);
        // Lower ranks and repeats change nothing.
        assert!(!s.insert_hash(0xA000_0000_0000_0000 | (1 << 59)));
        assert!(!s.insert_hash(0x3000_0000_0000_0000));
    }

    #[test]
    fn an_empty_sketch_estimates_zero_and_one_item_estimates_one() {
        let mut s = HyperLogLog::new();
        assert!(s.is_empty());
        assert_eq!(s.estimate(), 0);
        assert!(s.insert(b"x"));
        assert!(!s.insert(b"x"));
        assert!(!s.is_empty());
        assert_eq!(s.estimate(), 1);
        assert!(
            (s.estimate_f64() - 1.0).abs() < 1e-3,
            "{}",
            s.estimate_f64()
        );
    }

    #[test]
    fn sparse_turns_dense_exactly_past_a_quarter_of_the_registers() {
        let mut s = HyperLogLog::with_precision(6).unwrap(); // 64 registers, sparse up to 16
        for i in 0..16u64 {
            s.insert_hash(i << 58 | 1);
            assert!(s.is_sparse());
            assert!(s.size_in_bytes() <= 64);
        }
        assert_eq!(s.size_in_bytes(), 64);
        assert_eq!(s.encoded_len(), 3 + 16 * 3);
        s.insert_hash(16 << 58 | 1);
        assert!(!s.is_sparse());
        assert_eq!(s.size_in_bytes(), 64);
        assert_eq!(s.encoded_len(), 3 + 48);
        assert_eq!(s.to_bytes().len(), s.encoded_len());
    }

    #[test]
    fn merge_of_different_precisions_is_refused_and_changes_nothing() {
        let mut a = sketch(12, [1, 2, 3]);
        let before = a.clone();
        let b = sketch(13, [4]);
        assert_eq!(
            a.merge(&b),
            Err(Error::HllPrecisionMismatch {
                ours: 12,
                theirs: 13
            })
        );
        assert_eq!(
            a.changes_since(&b),
            Err(Error::HllPrecisionMismatch {
                ours: 12,
                theirs: 13
            })
        );
        assert_eq!(a, before);
    }

    #[test]
    fn merge_of_sparse_into_dense_and_dense_into_sparse_agree() {
        let small = sketch(6, [1 << 58, 2 << 58, 7]);
        let big = sketch(6, (0..40u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        assert!(small.is_sparse() && !big.is_sparse());
        let mut a = small.clone();
        assert!(a.merge(&big).unwrap());
        let mut b = big.clone();
        b.merge(&small).unwrap();
        assert_eq!(a, b);
        assert!(
            !b.clone().merge(&small).unwrap(),
            "a second merge changes nothing"
        );
    }

    #[test]
    fn merge_registers_checks_the_whole_list_before_applying_any() {
        let mut s = HyperLogLog::with_precision(4).unwrap();
        for bad in [(16, 1), (0, 62), (u32::MAX, 0)] {
            assert_eq!(
                s.merge_registers(&[(1, 5), bad]),
                Err(Error::HllRegisterOutOfRange {
                    index: bad.0,
                    rank: bad.1
                })
            );
            assert!(s.is_empty());
        }
        assert_eq!(s.merge_registers(&[(3, 61), (1, 2), (1, 5), (2, 0)]), Ok(3));
        assert_eq!(s.merge_registers(&[(1, 5), (3, 4)]), Ok(0));
        assert_eq!(s.registers().collect::<Vec<_>>(), [(1, 5), (3, 61)]);
    }

    #[test]
    fn downsampling_equals_building_at_the_lower_precision() {
        let hashes: Vec<u64> = (0..5000u64)
            .map(|i| HyperLogLog::hash(&i.to_le_bytes()))
            .chain([0, 1, u64::MAX, 1 << 50])
            .collect();
        let fine = sketch(14, hashes.iter().copied());
        for p in 4..=14 {
            assert_eq!(
                fine.downsample(p).unwrap(),
                sketch(p, hashes.iter().copied()),
                "{p}"
            );
        }
        assert_eq!(
            fine.downsample(15),
            Err(Error::HllInvalidPrecision { got: 15 })
        );
        assert_eq!(
            fine.downsample(3),
            Err(Error::HllInvalidPrecision { got: 3 })
        );
    }

    #[test]
    fn dense_packing_puts_six_bits_per_register_big_endian() {
        let mut s = HyperLogLog::with_precision(4).unwrap();
        s.merge_registers(&[(0, 1), (1, 2), (2, 3), (3, 4), (4, 61)])
            .unwrap();
        assert!(!s.is_sparse());
        let bytes = s.to_bytes();
        assert_eq!(bytes.len(), 3 + 12);
        assert_eq!(&bytes[..3], &[1, 4, 1]);
        // 000001 000010 000011 000100 | 111101 000000 ...
        assert_eq!(
            &bytes[3..9],
            &[0b0000_0100, 0b0010_0000, 0b1100_0100, 0b1111_0100, 0, 0]
        );
        assert_eq!(HyperLogLog::from_bytes(&bytes).unwrap(), s);
    }

    #[test]
    fn a_dense_wire_form_with_few_registers_loads_as_sparse() {
        let mut bytes = vec![1, 4, 1];
        bytes.extend_from_slice(&[0; 12]);
        bytes[3] = 0b0000_0100; // register 0 = 1
        let s = HyperLogLog::from_bytes(&bytes).unwrap();
        assert!(s.is_sparse());
        assert_eq!(s.registers().collect::<Vec<_>>(), [(0, 1)]);
        assert_eq!(s.to_bytes(), [1, 4, 0, 0, 0, 1]);
    }

    #[test]
    fn sigma_and_tau_match_their_series_at_the_ends() {
        assert_eq!(sigma(0.0), 0.0);
        assert!(sigma(1.0).is_infinite());
        assert_eq!(tau(0.0), 0.0);
        assert_eq!(tau(1.0), 0.0);
        // σ(x) ≈ x for tiny x; τ(x) ≈ (1 - x) / 3 - … is positive inside (0, 1).
        assert!((sigma(1e-6) - 1e-6).abs() < 1e-11);
        assert!(tau(0.5) > 0.0 && tau(0.5) < 0.5 / 3.0);
    }
}
