//! Version 1 of the Worker ↔ counter-object messages: the compact form.
//!
//! The same messages as the JSON form ([`super`]), positional and binary, each decoded once
//! from the bytes the request carried. The version is the path (`/v1/…`): an object of a
//! release before it answers `404`, and a later version gets a path of its own while objects
//! keep accepting this one for a release (the frozen bodies in `edge/tests/messages/v1/` hold
//! the form still).
//!
//! Integers are unsigned LEB128 (at most 10 bytes for a `u64`, 19 for a `u128`, no longer
//! than needed), a timestamp ZigZag-encoded first; a string is its length then its UTF-8
//! bytes; an `Option` one byte (0 none, 1 some) then the value.
//!
//! - **Hit**: a flags byte (bit 0 trusted, bit 1 a visitor follows, bit 2 *alone*: the hit
//!   may take the exact path, see below; no other bit set), the key (kind byte, 0 `g` or 1
//!   `pn`, then the id), `add.p`, `add.n`, the region, the client, then the visitor if bit 1.
//! - **`POST /v1/hits`**: hits, one after the other, nothing else (at least one). A hit
//!   without *alone* that finds its counter near a milestone is not counted (outcome
//!   *alone*); the Worker sends it again by itself with *alone* set, and then it takes the
//!   exact path. Answered `200` with one outcome per hit, in order, each preceded by its
//!   length as a 4-byte little-endian integer (so the Worker hands each client its own
//!   without decoding the others): tag 0 counted then the answer, tag 1 refused then the
//!   status and the error's JSON body, tag 2 alone.
//! - **`POST /v1/read`**: the region, the number of keys, the keys. Answered `200` with the
//!   number of answers, then the answers.
//! - **Answer**: the key; an optional view (`totals.p`, `totals.n`, an optional `updated_at`
//!   in Unix milliseconds, an optional `age_ms`, the epoch); an optional slot (the replica's
//!   16 bytes, big-endian, then its increment total); an optional verdict (tag 0 won then `n`
//!   and an optional label, 1 lost, 2 pending).
//!
//! Any other status carries an API error's JSON body, as in the JSON form.

use tally_crdt::{CounterKey, CounterKind, GlobalTotals, ReplicaId, SlotTotals, Timestamp};

use super::{Answer, Hit, HitOutcome, Read};
use crate::counter::View;
use crate::milestone::Verdict;
use crate::routing::Region;

/// The route of hits in this form (one or many).
pub const HITS_PATH: &str = "/v1/hits";
/// The route of a read in this form.
pub const READ_PATH: &str = "/v1/read";

const TRUSTED: u8 = 1;
const VISITOR: u8 = 2;
const ALONE: u8 = 4;

/// Bytes that are not a message of this form, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed internal message: {0}")]
pub struct Malformed(&'static str);

/// Appends values to a message.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn byte(&mut self, b: u8) {
        self.0.push(b);
    }

    fn uint(&mut self, mut v: u128) {
        loop {
            #[allow(clippy::cast_possible_truncation, reason = "the low seven bits")]
            let low = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(low);
                return;
            }
            self.0.push(low | 0x80);
        }
    }

    fn str(&mut self, s: &str) {
        self.uint(s.len() as u128);
        self.0.extend_from_slice(s.as_bytes());
    }

    fn some(&mut self, present: bool) {
        self.byte(u8::from(present));
    }

    fn key(&mut self, key: &CounterKey) {
        self.byte(match key.kind() {
            CounterKind::G => 0,
            CounterKind::Pn => 1,
        });
        self.str(key.id());
    }
}

/// Reads values from a message, front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Malformed> {
        let (&b, rest) = self.0.split_first().ok_or(Malformed("ends early"))?;
        self.0 = rest;
        Ok(b)
    }

    fn uint(&mut self, bits: u32) -> Result<u128, Malformed> {
        let mut v: u128 = 0;
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            let low = u128::from(b & 0x7f);
            if shift >= bits || (bits - shift < 7 && low >> (bits - shift) != 0) {
                return Err(Malformed("an integer out of range"));
            }
            v |= low << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return Err(Malformed("an integer longer than needed"));
                }
                return Ok(v);
            }
            shift += 7;
        }
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        u64::try_from(self.uint(64)?).map_err(|_| Malformed("an integer out of range"))
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        u16::try_from(self.uint(16)?).map_err(|_| Malformed("an integer out of range"))
    }

    fn len(&mut self) -> Result<usize, Malformed> {
        let n = usize::try_from(self.uint(32)?).map_err(|_| Malformed("a length out of range"))?;
        if n > self.0.len() {
            return Err(Malformed("a length past the end"));
        }
        Ok(n)
    }

    fn str(&mut self) -> Result<&'a str, Malformed> {
        let n = self.len()?;
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        std::str::from_utf8(s).map_err(|_| Malformed("a string that is not UTF-8"))
    }

    fn some(&mut self) -> Result<bool, Malformed> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Malformed("an option byte other than 0 or 1")),
        }
    }

    fn key(&mut self) -> Result<CounterKey, Malformed> {
        let kind = match self.byte()? {
            0 => CounterKind::G,
            1 => CounterKind::Pn,
            _ => return Err(Malformed("an unknown counter kind")),
        };
        CounterKey::new(kind, self.str()?).map_err(|_| Malformed("an invalid counter id"))
    }

    fn region(&mut self) -> Result<Region, Malformed> {
        Region::new(self.str()?).map_err(|_| Malformed("an invalid region"))
    }

    fn end(&self) -> Result<(), Malformed> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Malformed("bytes after the message"))
        }
    }
}

/// Appends `hit` to `out`, marked *alone* (it may take the exact path) or not.
pub fn encode_hit(hit: &Hit, alone: bool, out: &mut Vec<u8>) {
    let mut w = Writer(out);
    let mut flags = 0;
    if hit.trusted {
        flags |= TRUSTED;
    }
    if hit.visitor.is_some() {
        flags |= VISITOR;
    }
    if alone {
        flags |= ALONE;
    }
    w.byte(flags);
    w.key(&hit.key);
    w.uint(u128::from(hit.add.p));
    w.uint(u128::from(hit.add.n));
    w.str(&hit.region);
    w.str(&hit.client);
    if let Some(visitor) = &hit.visitor {
        w.str(visitor);
    }
}

fn read_hit(r: &mut Reader<'_>) -> Result<(Hit, bool), Malformed> {
    let flags = r.byte()?;
    if flags & !(TRUSTED | VISITOR | ALONE) != 0 {
        return Err(Malformed("an unknown flag"));
    }
    let key = r.key()?;
    let add = SlotTotals {
        p: r.u64()?,
        n: r.u64()?,
    };
    let region = r.region()?;
    let client = r.str()?.to_owned();
    let visitor = if flags & VISITOR != 0 {
        Some(r.str()?.to_owned())
    } else {
        None
    };
    let hit = Hit {
        key,
        add,
        region,
        client,
        trusted: flags & TRUSTED != 0,
        visitor,
    };
    Ok((hit, flags & ALONE != 0))
}

/// The hits of a `POST /v1/hits` body, each with whether it is *alone*.
///
/// # Errors
///
/// [`Malformed`] for an empty body or one that is not hits.
pub fn decode_hits(body: &[u8]) -> Result<Vec<(Hit, bool)>, Malformed> {
    let mut r = Reader(body);
    let mut hits = Vec::new();
    while !r.0.is_empty() {
        hits.push(read_hit(&mut r)?);
    }
    if hits.is_empty() {
        return Err(Malformed("no hit"));
    }
    Ok(hits)
}

/// Appends `outcome` to a `/v1/hits` answer, preceded by its length.
pub fn push_outcome(outcome: &HitOutcome, out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut w = Writer(out);
    match outcome {
        HitOutcome::Counted(answer) => {
            w.byte(0);
            write_answer(&mut w, answer);
        }
        HitOutcome::Refused { status, body } => {
            w.byte(1);
            w.uint(u128::from(*status));
            w.str(body);
        }
        HitOutcome::Alone => w.byte(2),
    }
    let len = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// One outcome of a `/v1/hits` answer (without its length, which the Worker's combiner reads
/// to hand each client its own).
///
/// # Errors
///
/// [`Malformed`] for bytes that are not one outcome.
pub fn decode_outcome(bytes: &[u8]) -> Result<HitOutcome, Malformed> {
    let mut r = Reader(bytes);
    let outcome = match r.byte()? {
        0 => HitOutcome::Counted(read_answer(&mut r)?),
        1 => HitOutcome::Refused {
            status: r.u16()?,
            body: r.str()?.to_owned(),
        },
        2 => HitOutcome::Alone,
        _ => return Err(Malformed("an unknown outcome")),
    };
    r.end()?;
    Ok(outcome)
}

/// The outcomes of a `/v1/hits` answer, each as its bytes: what the combiner's JavaScript
/// does, for tests.
#[cfg(test)]
pub fn split_outcomes(mut body: &[u8]) -> Result<Vec<&[u8]>, Malformed> {
    let mut parts = Vec::new();
    while !body.is_empty() {
        let (len, rest) = body.split_at_checked(4).ok_or(Malformed("ends early"))?;
        let len = u32::from_le_bytes(len.try_into().expect("four bytes")) as usize;
        let (part, rest) = rest
            .split_at_checked(len)
            .ok_or(Malformed("a length past the end"))?;
        parts.push(part);
        body = rest;
    }
    Ok(parts)
}

/// `read` as a `POST /v1/read` body.
pub fn encode_read(read: &Read) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 24 * read.keys.len());
    let mut w = Writer(&mut out);
    w.str(&read.region);
    w.uint(read.keys.len() as u128);
    for key in &read.keys {
        w.key(key);
    }
    out
}

/// The read of a `POST /v1/read` body.
///
/// # Errors
///
/// [`Malformed`] for bytes that are not one read.
pub fn decode_read(body: &[u8]) -> Result<Read, Malformed> {
    let mut r = Reader(body);
    let region = r.region()?;
    let n = r.len()?;
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        keys.push(r.key()?);
    }
    r.end()?;
    Ok(Read { keys, region })
}

/// `answers` as the body of a `/v1/read` answer.
pub fn encode_answers(answers: &[Answer]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * answers.len() + 1);
    let mut w = Writer(&mut out);
    w.uint(answers.len() as u128);
    for answer in answers {
        write_answer(&mut w, answer);
    }
    out
}

/// The answers of a `/v1/read` answer's body.
///
/// # Errors
///
/// [`Malformed`] for bytes that are not answers.
pub fn decode_answers(body: &[u8]) -> Result<Vec<Answer>, Malformed> {
    let mut r = Reader(body);
    let n = r.len()?;
    let mut answers = Vec::with_capacity(n);
    for _ in 0..n {
        answers.push(read_answer(&mut r)?);
    }
    r.end()?;
    Ok(answers)
}

fn write_answer(w: &mut Writer<'_>, answer: &Answer) {
    w.key(&answer.key);
    w.some(answer.view.is_some());
    if let Some(view) = &answer.view {
        w.uint(view.totals.p);
        w.uint(view.totals.n);
        w.some(view.updated_at.is_some());
        if let Some(at) = view.updated_at {
            let ms = at.unix_ms();
            w.uint(u128::from(((ms << 1) ^ (ms >> 63)).cast_unsigned()));
        }
        w.some(view.age_ms.is_some());
        if let Some(age) = view.age_ms {
            w.uint(u128::from(age));
        }
        w.uint(u128::from(view.epoch));
    }
    w.some(answer.slot.is_some());
    if let Some((replica, total)) = answer.slot {
        w.0.extend_from_slice(&replica.to_bytes());
        w.uint(u128::from(total));
    }
    w.some(answer.verdict.is_some());
    match &answer.verdict {
        None => {}
        Some(Verdict::Won { n, label }) => {
            w.byte(0);
            w.uint(u128::from(*n));
            w.some(label.is_some());
            if let Some(label) = label {
                w.str(label);
            }
        }
        Some(Verdict::Lost) => w.byte(1),
        Some(Verdict::Pending) => w.byte(2),
    }
}

fn read_answer(r: &mut Reader<'_>) -> Result<Answer, Malformed> {
    let key = r.key()?;
    let view = if r.some()? {
        let totals = GlobalTotals {
            p: r.uint(128)?,
            n: r.uint(128)?,
        };
        let updated_at = if r.some()? {
            let z = r.u64()?;
            let ms = (z >> 1).cast_signed() ^ -((z & 1).cast_signed());
            Some(Timestamp::from_unix_ms(ms))
        } else {
            None
        };
        let age_ms = if r.some()? { Some(r.u64()?) } else { None };
        Some(View {
            totals,
            updated_at,
            age_ms,
            epoch: r.u64()?,
        })
    } else {
        None
    };
    let slot = if r.some()? {
        let (bytes, rest) = r.0.split_at_checked(16).ok_or(Malformed("ends early"))?;
        r.0 = rest;
        let replica = ReplicaId::from_bytes(bytes.try_into().expect("sixteen bytes"));
        Some((replica, r.u64()?))
    } else {
        None
    };
    let verdict = if r.some()? {
        Some(match r.byte()? {
            0 => {
                let n = r.u64()?;
                let label = if r.some()? {
                    Some(r.str()?.to_owned())
                } else {
                    None
                };
                Verdict::Won { n, label }
            }
            1 => Verdict::Lost,
            2 => Verdict::Pending,
            _ => return Err(Malformed("an unknown verdict")),
        })
    } else {
        None
    };
    Ok(Answer {
        key,
        view,
        slot,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    //! The compact form: frozen bodies (`edge/tests/messages/v1/`, hex), round trips, and a
    //! decoder that refuses, never panics, whatever the bytes.
    use super::super::examples::{hit, outcomes, pending, won};
    use super::*;
    use proptest::prelude::*;

    fn key(kind: CounterKind, id: &str) -> CounterKey {
        CounterKey::new(kind, id).expect("a valid id")
    }

    fn region(name: &str) -> Region {
        Region::new(name).expect("a valid region")
    }

    /// The frozen bytes `name` (hex, whitespace and `#` comments ignored).
    fn frozen(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/messages/v1")
            .join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let hex: String = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
            .collect();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn answers() -> Vec<Answer> {
        vec![won(), pending(key(CounterKind::Pn, "live"))]
    }

    /// A message's JSON form, to compare two (a `u128` total does not fit a
    /// `serde_json::Value`).
    fn json<T: serde::Serialize>(value: &T) -> String {
        serde_json::to_string(value).expect("encodes")
    }

    /// Every field set, in each message (the struct literals name every field: a new one must
    /// be set here, and changes the form: give it a new version then, and freeze that one).
    #[test]
    fn the_messages_with_every_field_set_are_the_frozen_ones() {
        let mut hits = Vec::new();
        encode_hit(&hit(), false, &mut hits);
        let mut second = hit();
        (second.trusted, second.visitor) = (true, None);
        second.add = SlotTotals { p: 300, n: 2 };
        encode_hit(&second, true, &mut hits);
        assert_eq!(hits, frozen("hits.hex"), "hits");
        let read = Read {
            keys: vec![key(CounterKind::G, "home"), key(CounterKind::Pn, "live")],
            region: region("eu"),
        };
        assert_eq!(encode_read(&read), frozen("read.hex"), "read");
        assert_eq!(encode_answers(&answers()), frozen("answers.hex"), "answers");
        let mut framed = Vec::new();
        for outcome in outcomes() {
            push_outcome(&outcome, &mut framed);
        }
        assert_eq!(framed, frozen("hit_outcomes.hex"), "outcomes");
    }

    #[test]
    fn the_frozen_messages_decode_to_what_they_hold() {
        let hits = decode_hits(&frozen("hits.hex")).expect("hits");
        assert_eq!(hits.len(), 2);
        assert_eq!(json(&hits[0].0), json(&hit()));
        assert!(!hits[0].1, "the first is not alone");
        let (second, alone) = &hits[1];
        assert!(*alone && second.trusted && second.visitor.is_none());
        assert_eq!((second.add.p, second.add.n), (300, 2));
        let read = decode_read(&frozen("read.hex")).expect("read");
        assert_eq!(read.keys.len(), 2);
        assert_eq!(
            (read.keys[1].kind(), read.region.as_str()),
            (CounterKind::Pn, "eu")
        );
        let answers_got = decode_answers(&frozen("answers.hex")).expect("answers");
        assert_eq!(json(&answers_got), json(&answers()));
        let framed = frozen("hit_outcomes.hex");
        let parts = split_outcomes(&framed).expect("framed");
        let got: Vec<HitOutcome> = parts
            .iter()
            .map(|p| decode_outcome(p).expect("an outcome"))
            .collect();
        assert_eq!(json(&got), json(&outcomes()));
    }

    #[test]
    fn what_breaks_the_form_is_refused_by_name() {
        let mut one = Vec::new();
        encode_hit(&hit(), false, &mut one);
        let refused = |bytes: &[u8]| decode_hits(bytes).expect_err("refused").0;
        assert_eq!(refused(&[]), "no hit");
        assert_eq!(refused(&one[..one.len() - 1]), "a length past the end");
        let mut flagged = one.clone();
        flagged[0] |= 8;
        assert_eq!(refused(&flagged), "an unknown flag");
        let mut kind = one.clone();
        kind[1] = 2;
        assert_eq!(refused(&kind), "an unknown counter kind");
        // `add.p` (after the flags, the kind, the id's length and its 4 bytes) as 0x80 0x00:
        // zero written in two bytes.
        let mut long = one[..7].to_vec();
        long.extend_from_slice(&[0x80, 0x00]);
        long.extend_from_slice(&one[8..]);
        assert_eq!(refused(&long), "an integer longer than needed");
        // 2^64 does not fit a u64.
        let mut big = one[..7].to_vec();
        big.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]);
        big.extend_from_slice(&one[8..]);
        assert_eq!(refused(&big), "an integer out of range");
        let mut trailing = encode_answers(&answers());
        trailing.push(0);
        assert_eq!(
            decode_answers(&trailing).expect_err("refused").0,
            "bytes after the message"
        );
        assert!(decode_outcome(&[3]).is_err());
        assert!(
            decode_read(&[2, b'e', b'u', 5, 0]).is_err(),
            "five keys announced, none sent"
        );
    }

    fn any_hit() -> impl Strategy<Value = (Hit, bool)> {
        (
            any::<bool>(),
            "[a-z0-9][a-z0-9_-]{0,39}",
            any::<u64>(),
            any::<u64>(),
            "[a-z]{1,8}",
            "\\PC{0,40}",
            any::<bool>(),
            proptest::option::of("[ -~]{1,64}"),
        )
            .prop_map(|(pn, id, p, n, r, client, trusted, visitor)| {
                let kind = if pn { CounterKind::Pn } else { CounterKind::G };
                let hit = Hit {
                    key: key(kind, &id),
                    add: SlotTotals { p, n },
                    region: region(&r),
                    client,
                    trusted,
                    visitor,
                };
                (hit, trusted ^ pn)
            })
    }

    fn any_answer() -> impl Strategy<Value = Answer> {
        let view = (
            any::<u128>(),
            any::<u128>(),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<u64>()),
            any::<u64>(),
        )
            .prop_map(|(p, n, at, age_ms, epoch)| View {
                totals: GlobalTotals { p, n },
                updated_at: at.map(Timestamp::from_unix_ms),
                age_ms,
                epoch,
            });
        let verdict = prop_oneof![
            (any::<u64>(), proptest::option::of("\\PC{0,30}"))
                .prop_map(|(n, label)| Verdict::Won { n, label }),
            Just(Verdict::Lost),
            Just(Verdict::Pending),
        ];
        (
            "[a-z0-9]{1,20}",
            proptest::option::of(view),
            proptest::option::of((any::<u128>(), any::<u64>())),
            proptest::option::of(verdict),
        )
            .prop_map(|(id, view, slot, verdict)| Answer {
                key: key(CounterKind::G, &id),
                view,
                slot: slot.map(|(r, t)| (ReplicaId::from_u128(r), t)),
                verdict,
            })
    }

    proptest! {
        #[test]
        fn hits_come_back_as_they_went(hits in proptest::collection::vec(any_hit(), 1..8)) {
            let mut body = Vec::new();
            for (hit, alone) in &hits {
                encode_hit(hit, *alone, &mut body);
            }
            let got = decode_hits(&body).expect("decodes");
            prop_assert_eq!(got.len(), hits.len());
            for ((a, a_alone), (b, b_alone)) in got.iter().zip(&hits) {
                prop_assert_eq!(json(a), json(b));
                prop_assert_eq!(a_alone, b_alone);
            }
        }

        #[test]
        fn answers_and_outcomes_come_back_as_they_went(
            answers in proptest::collection::vec(any_answer(), 0..6),
            status in any::<u16>(),
            body in "\\PC{0,60}",
        ) {
            let got = decode_answers(&encode_answers(&answers)).expect("decodes");
            prop_assert_eq!(json(&got), json(&answers));
            let mut outcomes: Vec<HitOutcome> =
                answers.into_iter().map(HitOutcome::Counted).collect();
            outcomes.push(HitOutcome::Refused { status, body });
            outcomes.push(HitOutcome::Alone);
            let mut framed = Vec::new();
            for outcome in &outcomes {
                push_outcome(outcome, &mut framed);
            }
            let parts = split_outcomes(&framed).expect("framed");
            let got: Vec<HitOutcome> =
                parts.iter().map(|p| decode_outcome(p).expect("decodes")).collect();
            prop_assert_eq!(json(&got), json(&outcomes));
        }

        /// Whatever the bytes, each decoder answers a message or refuses: never a panic, and
        /// never more memory than the bytes can describe.
        #[test]
        fn any_bytes_are_decoded_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_hits(&bytes);
            let _ = decode_read(&bytes);
            let _ = decode_answers(&bytes);
            let _ = decode_outcome(&bytes);
        }
    }
}
