//! The session token: read-your-writes and monotonic reads for a client, whichever object
//! answers it.
//!
//! A counter is served by several objects, each with its own view of the global count, so a
//! client's next request may land on an object that has not heard of its last hit yet.
//! Routing by client address cannot fix that (NAT, roaming, one address for many clients).
//! Instead the client carries what it has seen: the edge answers every request with a
//! `Tally-Session` header, and the client sends it back on the next one. The edge then
//! answers each half of a count (increments `p`, decrements `n`) at least as high as the
//! token says the client has seen. Both halves only ever grow, and a floor from the token is
//! a value the system really held, so the answer stays a true lower bound of the global
//! count; it is just never older than what this client saw.
//!
//! A reset starts a new epoch of a counter, whose halves start again from zero: what a client
//! saw is a bound within its epoch ([`Bound`]), and a view of a later epoch replaces it
//! whatever its totals. An object that has not heard of a reset the client has seen answers
//! the client's bound (plus its own hit) until it hears.
//!
//! **Signed.** Only a token the edge wrote is read: it carries an HMAC-SHA256 under the
//! `SESSION_KEY` secret (not the sync token, which the merger holds too), and a token that
//! does not verify — forged, altered, from before a deploy, or under a key retired from
//! `SESSION_KEY_PREVIOUS` — is treated as absent. Even a verified floor raises only its own
//! client's answer and the token it gets back: never the isolate cache, an object's state, or
//! anybody else's answer.
//!
//! **Writes first.** The counters a client wrote (at most [`MAX_WRITTEN`], the most recently
//! written first) are kept apart from those it only read (at most [`MAX_READ`]): reading a
//! page of many counters refreshes the written ones in place but never pushes them out.
//!
//! Form: `1.<key id>.<mac>.<written>;<read>`, where each list is comma-separated entries
//! `<kind>:<id>=<p>[-<n>][@<epoch>]` (no `-` for `n = 0`, no `@` for epoch 0), most recently
//! used first, e.g. `1.3f2a91c0.Qm9….g:home=715;pn:viewers:42=90-75@2`. The key id is the
//! first 4 bytes of SHA-256 of the key, in hex, so the edge knows which of its keys to check
//! while a key rotates; the mac is the first 16 bytes of HMAC-SHA256 under the key of
//! `tally-session:v1:<key id>:<written>;<read>`, in URL-safe base64 without padding. Halves
//! have at most [`HALF_DIGITS`] digits and epochs at most [`EPOCH_DIGITS`]; a token is at most
//! [`MAX_LEN`] bytes (the oldest read entries, then the oldest written ones, are left out of a
//! token that would be longer).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tally_crdt::{CounterKey, GlobalTotals};

use crate::counter::Bound;

/// Counters a token keeps among those its client wrote.
pub const MAX_WRITTEN: usize = 32;
/// Counters a token keeps among those its client only read.
pub const MAX_READ: usize = 32;
/// Longest token read or written, in bytes.
pub const MAX_LEN: usize = 8192;
/// Most digits of a half in a token.
pub const HALF_DIGITS: usize = 38;
/// Most digits of an epoch in a token.
pub const EPOCH_DIGITS: usize = 19;
/// The request and response header.
pub const HEADER: &str = "Tally-Session";

/// The form's version, the token's first field.
const VERSION: &str = "1";
/// Bytes of the MAC a token carries.
const MAC_LEN: usize = 16;
/// What the MAC covers before the key id and the entries.
const DOMAIN: &[u8] = b"tally-session:v1:";

/// The keys tokens are signed and checked with: the current one signs, it and the previous
/// one (while a key rotates) verify. Not `Clone`: an isolate makes its keys once and lends
/// them to every request.
pub struct SessionKeys {
    /// `(key id, HMAC keyed with it)`, the current key first.
    keys: Vec<(String, Hmac<Sha256>)>,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SessionKeys").field("ids", &ids).finish()
    }
}

impl SessionKeys {
    /// `current` signs new tokens; tokens under `previous` are still read.
    pub fn new(current: &str, previous: Option<&str>) -> SessionKeys {
        let keyed = |key: &str| {
            let digest = Sha256::digest(key.as_bytes());
            let id: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
            let mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
                .expect("HMAC takes a key of any length");
            (id, mac)
        };
        let mut keys = vec![keyed(current)];
        if let Some(previous) = previous.filter(|p| *p != current) {
            keys.push(keyed(previous));
        }
        SessionKeys { keys }
    }

    /// The current key's id (the token's second field).
    pub fn current_id(&self) -> &str {
        &self.keys[0].0
    }

    fn mac(mac: &Hmac<Sha256>, id: &str, body: &str) -> Hmac<Sha256> {
        let mut mac = mac.clone();
        mac.update(DOMAIN);
        mac.update(id.as_bytes());
        mac.update(b":");
        mac.update(body.as_bytes());
        mac
    }

    /// Whether `tag` is the MAC of `body` under the key named `id`.
    fn verify(&self, id: &str, tag: &str, body: &str) -> bool {
        let Some((id, key)) = self.keys.iter().find(|(k, _)| k == id) else {
            return false;
        };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        tag.len() == MAC_LEN && Self::mac(key, id, body).verify_truncated_left(&tag).is_ok()
    }

    /// `1.<key id>.<mac>.<body>` under the current key.
    fn sign(&self, body: &str) -> String {
        let (id, key) = &self.keys[0];
        let full = Self::mac(key, id, body).finalize().into_bytes();
        let tag = URL_SAFE_NO_PAD.encode(&full[..MAC_LEN]);
        format!("{VERSION}.{id}.{tag}.{body}")
    }
}

/// What one client has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// Counters it wrote, most recently written first.
    written: Vec<(CounterKey, Bound)>,
    /// Counters it only read, most recently read first.
    read: Vec<(CounterKey, Bound)>,
}

/// Why a token's body is not one the edge writes (never shown: such a token is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
struct BadToken;

impl Session {
    /// The session a `Tally-Session` header carries: empty when the header is absent, empty,
    /// or not a token these keys signed (a forged or altered token, or one of a retired key,
    /// is no session at all).
    pub fn from_header(token: Option<&str>, keys: &SessionKeys) -> Session {
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return Session::default();
        };
        if token.len() > MAX_LEN {
            return Session::default();
        }
        let mut fields = token.splitn(4, '.');
        let (Some(VERSION), Some(id), Some(tag), Some(body)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Session::default();
        };
        if !keys.verify(id, tag, body) {
            return Session::default();
        }
        Session::parse_body(body).unwrap_or_default()
    }

    /// `<written>;<read>`, each a list of entries.
    fn parse_body(body: &str) -> Result<Session, BadToken> {
        let (written, read) = body.split_once(';').ok_or(BadToken)?;
        let written = parse_entries(written, MAX_WRITTEN)?;
        let read = parse_entries(read, MAX_READ)?;
        let mut keys: Vec<&CounterKey> = written.iter().chain(&read).map(|(k, _)| k).collect();
        keys.sort();
        keys.dedup();
        if keys.len() != written.len() + read.len() {
            return Err(BadToken);
        }
        Ok(Session { written, read })
    }

    /// What this client has seen of `key` (zero in epoch 0 if nothing).
    pub fn floor(&self, key: &CounterKey) -> Bound {
        self.written
            .iter()
            .chain(&self.read)
            .find(|(k, _)| k == key)
            .map_or_else(Bound::default, |(_, t)| *t)
    }

    /// The answer for `key` given the object's view: raised to the floor ([`Bound::join`]:
    /// each half, within one epoch; a later epoch's bound wins). Records the answer as what
    /// the client has now seen: first among the counters it wrote if `wrote`; else in place
    /// if it wrote the counter before, or first among those it read.
    pub fn answer(&mut self, key: &CounterKey, view: Bound, wrote: bool) -> GlobalTotals {
        let shown = view.join(self.floor(key));
        if wrote {
            self.read.retain(|(k, _)| k != key);
            self.written.retain(|(k, _)| k != key);
            self.written.insert(0, (key.clone(), shown));
            if self.written.len() > MAX_WRITTEN {
                // The oldest write is still something the client saw: it joins the reads.
                let oldest = self.written.pop().expect("longer than the limit");
                self.read.insert(0, oldest);
            }
        } else if let Some(entry) = self.written.iter_mut().find(|(k, _)| k == key) {
            entry.1 = shown;
        } else {
            self.read.retain(|(k, _)| k != key);
            self.read.insert(0, (key.clone(), shown));
        }
        self.read.truncate(MAX_READ);
        shown.totals
    }

    /// The token to send back, signed with the current key: at most [`MAX_LEN`] bytes,
    /// leaving out the oldest reads, then the oldest writes, if it would be longer.
    pub fn token(&self, keys: &SessionKeys) -> String {
        let (mut written, mut read) = (self.written.len(), self.read.len());
        loop {
            let mut body = String::new();
            push_entries(&mut body, &self.written[..written]);
            body.push(';');
            push_entries(&mut body, &self.read[..read]);
            let token = keys.sign(&body);
            if token.len() <= MAX_LEN || written + read == 0 {
                return token;
            }
            if read > 0 {
                read -= 1;
            } else {
                written -= 1;
            }
        }
    }
}

fn push_entries(out: &mut String, entries: &[(CounterKey, Bound)]) {
    use std::fmt::Write as _;
    for (i, (key, t)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}={}", key.storage_key(), t.totals.p);
        if t.totals.n != 0 {
            let _ = write!(out, "-{}", t.totals.n);
        }
        if t.epoch != 0 {
            let _ = write!(out, "@{}", t.epoch);
        }
    }
}

/// Comma-separated entries `<kind>:<id>=<p>[-<n>][@<epoch>]`, at most `most` of them.
fn parse_entries(list: &str, most: usize) -> Result<Vec<(CounterKey, Bound)>, BadToken> {
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen = Vec::new();
    for entry in list.split(',') {
        if seen.len() == most {
            return Err(BadToken);
        }
        let (key, totals) = entry.rsplit_once('=').ok_or(BadToken)?;
        let key = CounterKey::from_storage_key(key).map_err(|_| BadToken)?;
        let (totals, epoch) = totals.split_once('@').unwrap_or((totals, "0"));
        let (p, n) = totals.split_once('-').unwrap_or((totals, "0"));
        // At most 38 digits a half (below 10^38, so `p - n` always fits an `i128`) and 19 an
        // epoch: a bound no count reaches (it would take 2^63 slots).
        let digits = |s: &str, most: usize| {
            (1..=most).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(p, HALF_DIGITS) || !digits(n, HALF_DIGITS) || !digits(epoch, EPOCH_DIGITS) {
            return Err(BadToken);
        }
        let bound = Bound {
            totals: GlobalTotals {
                p: p.parse().map_err(|_| BadToken)?,
                n: n.parse().map_err(|_| BadToken)?,
            },
            epoch: epoch.parse().map_err(|_| BadToken)?,
        };
        seen.push((key, bound));
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_crdt::CounterKind;

    fn keys() -> SessionKeys {
        SessionKeys::new("a-session-key-0123456789", None)
    }
    fn g(id: &str) -> CounterKey {
        CounterKey::new(CounterKind::G, id).unwrap()
    }
    fn pn(id: &str) -> CounterKey {
        CounterKey::new(CounterKind::Pn, id).unwrap()
    }
    fn t(p: u128, n: u128) -> GlobalTotals {
        GlobalTotals { p, n }
    }
    fn b(p: u128, n: u128) -> Bound {
        Bound {
            totals: t(p, n),
            epoch: 0,
        }
    }
    fn after_reset(epoch: u64, p: u128, n: u128) -> Bound {
        Bound {
            totals: t(p, n),
            epoch,
        }
    }
    /// The token's body (what follows version, key id and MAC).
    fn body(token: &str) -> &str {
        token.splitn(4, '.').nth(3).unwrap()
    }
    fn again(s: &Session) -> Session {
        Session::from_header(Some(&s.token(&keys())), &keys())
    }

    #[test]
    fn a_read_never_answers_below_what_the_client_saw() {
        let mut s = Session::default();
        assert_eq!(s.answer(&g("home"), b(10, 0), false), t(10, 0));
        // Another object, behind on the client's own hit:
        assert_eq!(s.answer(&g("home"), b(7, 0), false), t(10, 0));
        assert_eq!(s.answer(&g("home"), b(12, 0), false), t(12, 0));
    }

    #[test]
    fn neither_half_of_a_gauge_goes_back() {
        let mut s = Session::default();
        s.answer(&pn("v"), b(10, 4), true);
        assert_eq!(s.answer(&pn("v"), b(9, 6), false), t(10, 6));
        assert_eq!(s.answer(&pn("v"), b(11, 5), false), t(11, 6));
    }

    #[test]
    fn tokens_round_trip_signed() {
        let mut s = Session::default();
        s.answer(&g("a:b.c"), b(u128::from(u64::MAX) * 2, 0), false);
        s.answer(&pn("v"), b(3, 2), true);
        s.answer(&g("x"), after_reset(4, 1, 0), false);
        let token = s.token(&keys());
        assert_eq!(
            body(&token),
            "pn:v=3-2;g:x=1@4,g:a:b.c=36893488147419103230"
        );
        assert!(token.starts_with(&format!("1.{}.", keys().current_id())));
        assert_eq!(again(&s), s);
        let most = "pn:x=99999999999999999999999999999999999999-0007@9999999999999999999;";
        let read = Session::parse_body(most).unwrap();
        assert_eq!(
            body(&read.token(&keys())),
            "pn:x=99999999999999999999999999999999999999-7@9999999999999999999;"
        );
    }

    #[test]
    fn a_token_the_edge_did_not_sign_is_no_session() {
        let mut s = Session::default();
        s.answer(&g("likes"), b(5, 0), true);
        let token = s.token(&keys());
        let forged_count = token.replace("=5", "=99999999999");
        let forged_epoch = token.replace("=5", "=0@9999999999999999999");
        let other_key = s.token(&SessionKeys::new("another-session-key-000", None));
        let unsigned = format!(
            "1.{}.AAAAAAAAAAAAAAAAAAAAAA.g:likes=9;",
            keys().current_id()
        );
        for bad in [
            forged_count.as_str(),
            &forged_epoch,
            &other_key,
            &unsigned,
            "g:likes=99999999999",
            "hello",
            "1.x.y.z",
            "1...",
            &token[..token.len() - 1],
            &format!("{token},g:b=1"),
            &"a".repeat(MAX_LEN + 1),
        ] {
            assert_eq!(
                Session::from_header(Some(bad), &keys()),
                Session::default(),
                "{bad:?}"
            );
        }
        assert_eq!(Session::from_header(Some(&token), &keys()), s);
        assert_eq!(Session::from_header(None, &keys()), Session::default());
        assert_eq!(
            Session::from_header(Some("  "), &keys()),
            Session::default()
        );
    }

    #[test]
    fn a_rotating_key_reads_the_previous_tokens_and_signs_with_the_new_one() {
        let old = SessionKeys::new("the-old-session-key-0000", None);
        let mut s = Session::default();
        s.answer(&g("likes"), b(5, 0), true);
        let old_token = s.token(&old);
        let rotating =
            SessionKeys::new("the-new-session-key-0000", Some("the-old-session-key-0000"));
        let read = Session::from_header(Some(&old_token), &rotating);
        assert_eq!(read, s);
        let new_token = read.token(&rotating);
        assert!(new_token.starts_with(&format!("1.{}.", rotating.current_id())));
        assert_ne!(rotating.current_id(), old.current_id());
        let after = SessionKeys::new("the-new-session-key-0000", None);
        assert_eq!(Session::from_header(Some(&new_token), &after), s);
        assert_eq!(
            Session::from_header(Some(&old_token), &after),
            Session::default(),
            "a retired key's tokens are no session"
        );
    }

    #[test]
    fn reads_never_push_out_what_the_client_wrote() {
        let mut s = Session::default();
        s.answer(&g("liked"), b(1, 0), true);
        // A page of 100 counters, read twice.
        for _ in 0..2 {
            for i in 0..100 {
                s.answer(&g(&format!("c{i}")), b(7, 0), false);
            }
        }
        // An object behind on the like still answers it.
        let mut s = again(&s);
        assert_eq!(s.floor(&g("liked")), b(1, 0));
        assert_eq!(s.answer(&g("liked"), b(0, 0), false), t(1, 0));
        assert_eq!(s.read.len(), MAX_READ);
        assert_eq!(s.floor(&g("c99")), b(7, 0));
        assert_eq!(s.floor(&g("c0")), b(0, 0), "the oldest read is forgotten");
        // Writes keep the most recent 32; the older one is read history now.
        for i in 0..MAX_WRITTEN {
            s.answer(&g(&format!("w{i}")), b(2, 0), true);
        }
        let s = again(&s);
        assert_eq!(s.written.len(), MAX_WRITTEN);
        assert_eq!(s.read[0], (g("liked"), b(1, 0)));
    }

    #[test]
    fn a_reset_the_client_saw_holds_and_one_it_did_not_see_wins() {
        let mut s = Session::default();
        assert_eq!(s.answer(&g("likes"), b(900, 0), false), t(900, 0));
        // The counter was reset: an object that heard it answers far lower, and that wins.
        assert_eq!(s.answer(&g("likes"), after_reset(1, 4, 0), false), t(4, 0));
        assert_eq!(body(&s.token(&keys())), ";g:likes=4@1");
        // An object that has not heard of the reset yet never brings the old count back.
        let mut s = again(&s);
        assert_eq!(s.answer(&g("likes"), b(905, 0), false), t(4, 0));
        assert_eq!(s.answer(&g("likes"), after_reset(1, 6, 0), false), t(6, 0));
    }

    #[test]
    fn malformed_bodies_are_not_read_even_signed() {
        for bad in [
            "g:home=1",
            "g:home;",
            "g:home=;",
            "g:home=-1;",
            "g:home=1-;",
            "x:home=1;",
            "g:ho me=1;",
            "g:home=1,g:home=2;",
            "g:home=1;g:home=2",
            "g:home=1e3;",
            "g:home=4@;",
            "g:home=4@-1;",
            "g:home=100000000000000000000000000000000000000;",
            "pn:home=1-000000000000000000000000000000000000001;",
            "g:home=1@10000000000000000000;",
        ] {
            let token = keys().sign(bad);
            assert_eq!(
                Session::from_header(Some(&token), &keys()),
                Session::default(),
                "{bad:?}"
            );
        }
        let many: Vec<String> = (0..=MAX_READ).map(|i| format!("g:c{i}=1")).collect();
        let token = keys().sign(&format!(";{}", many.join(",")));
        assert_eq!(
            Session::from_header(Some(&token), &keys()),
            Session::default()
        );
    }

    #[test]
    fn a_token_never_passes_its_length() {
        let mut s = Session::default();
        let long = "x".repeat(tally_crdt::MAX_ID_LEN);
        for i in 0..MAX_WRITTEN {
            s.answer(
                &g(&format!("{i:03}{}", &long[3..])),
                b(u128::MAX / 10, 0),
                true,
            );
        }
        for i in 0..MAX_READ {
            s.answer(
                &pn(&format!("{i:03}{}", &long[3..])),
                after_reset(u64::MAX / 10, u128::MAX / 10, u128::MAX / 10),
                false,
            );
        }
        let token = s.token(&keys());
        assert!(token.len() <= MAX_LEN, "{}", token.len());
        let read = Session::from_header(Some(&token), &keys());
        assert_eq!(
            read.written.len(),
            MAX_WRITTEN,
            "writes are kept before reads"
        );
        assert!(!read.read.is_empty() && read.read.len() < MAX_READ);
        assert_eq!(read.read[0], s.read[0], "the most recent reads are kept");
    }
}
