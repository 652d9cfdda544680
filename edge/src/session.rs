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
//! Form: comma-separated entries `<kind>:<id>=<p>[-<n>][@<epoch>]` (e.g.
//! `g:home=715,pn:viewers:42=90-75@2`; no `@` for epoch 0), most recently used first, at most
//! [`MAX_ENTRIES`] counters and [`MAX_LEN`] bytes, halves of at most [`HALF_DIGITS`] digits
//! and epochs of at most [`EPOCH_DIGITS`]. A token names counters and counts,
//! nothing secret; a client that forges one only changes what it is shown itself.

use tally_crdt::{CounterKey, GlobalTotals};

use crate::counter::Bound;

/// Counters a token remembers; the least recently used is forgotten first.
pub const MAX_ENTRIES: usize = 32;
/// Longest token accepted, in bytes.
pub const MAX_LEN: usize = 8192;
/// Most digits of a half in a token.
pub const HALF_DIGITS: usize = 38;
/// Most digits of an epoch in a token.
pub const EPOCH_DIGITS: usize = 19;
/// The request and response header.
pub const HEADER: &str = "Tally-Session";

/// What one client has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// Most recently used first.
    seen: Vec<(CounterKey, Bound)>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Longer than [`MAX_LEN`].
    #[error("{HEADER} is longer than {MAX_LEN} bytes")]
    TooLong,
    /// More than [`MAX_ENTRIES`] entries.
    #[error("{HEADER} names more than {MAX_ENTRIES} counters")]
    TooManyEntries,
    /// An entry that is not `<kind>:<id>=<p>[-<n>][@<epoch>]`.
    #[error(
        "{HEADER} entry {0:?} is not <kind>:<id>=<p>[-<n>][@<epoch>]; send back the header as received"
    )]
    BadEntry(String),
}

impl Session {
    /// Reads a token; an absent or empty header is an empty session.
    ///
    /// # Errors
    ///
    /// [`SessionError`] naming what is wrong.
    pub fn parse(token: Option<&str>) -> Result<Session, SessionError> {
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(Session::default());
        };
        if token.len() > MAX_LEN {
            return Err(SessionError::TooLong);
        }
        let mut seen: Vec<(CounterKey, Bound)> = Vec::new();
        for entry in token.split(',').map(str::trim) {
            if seen.len() == MAX_ENTRIES {
                return Err(SessionError::TooManyEntries);
            }
            let bad = || SessionError::BadEntry(entry.chars().take(200).collect());
            let (key, totals) = entry.rsplit_once('=').ok_or_else(bad)?;
            let key = CounterKey::from_storage_key(key).map_err(|_| bad())?;
            let (totals, epoch) = totals.split_once('@').unwrap_or((totals, "0"));
            let (p, n) = totals.split_once('-').unwrap_or((totals, "0"));
            // At most 38 digits a half (below 10^38, so `p - n` always fits an `i128`) and
            // 19 an epoch: a bound no count reaches (it would take 2^63 slots), and one that
            // a client can check with a short pattern (docs/edge-openapi.json).
            let digits = |s: &str, most: usize| {
                (1..=most).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
            };
            if !digits(p, HALF_DIGITS) || !digits(n, HALF_DIGITS) || !digits(epoch, EPOCH_DIGITS) {
                return Err(bad());
            }
            let totals = Bound {
                totals: GlobalTotals {
                    p: p.parse().map_err(|_| bad())?,
                    n: n.parse().map_err(|_| bad())?,
                },
                epoch: epoch.parse().map_err(|_| bad())?,
            };
            if seen.iter().any(|(k, _)| *k == key) {
                return Err(bad());
            }
            seen.push((key, totals));
        }
        Ok(Session { seen })
    }

    /// What this client has seen of `key` (zero in epoch 0 if nothing).
    pub fn floor(&self, key: &CounterKey) -> Bound {
        self.seen
            .iter()
            .find(|(k, _)| k == key)
            .map_or_else(Bound::default, |(_, t)| *t)
    }

    /// The answer for `key` given the object's view: raised to the floor ([`Bound::join`]:
    /// each half, within one epoch; a later epoch's bound wins). Records the answer as what
    /// the client has now seen.
    pub fn answer(&mut self, key: &CounterKey, view: Bound) -> GlobalTotals {
        let shown = view.join(self.floor(key));
        self.seen.retain(|(k, _)| k != key);
        self.seen.insert(0, (key.clone(), shown));
        self.seen.truncate(MAX_ENTRIES);
        shown.totals
    }

    /// The token to send back.
    pub fn token(&self) -> String {
        let mut out = String::new();
        for (i, (key, t)) in self.seen.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&key.storage_key());
            out.push('=');
            out.push_str(&t.totals.p.to_string());
            if t.totals.n != 0 {
                out.push('-');
                out.push_str(&t.totals.n.to_string());
            }
            if t.epoch != 0 {
                out.push('@');
                out.push_str(&t.epoch.to_string());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_crdt::CounterKind;

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

    #[test]
    fn a_read_never_answers_below_what_the_client_saw() {
        let mut s = Session::default();
        assert_eq!(s.answer(&g("home"), b(10, 0)), t(10, 0));
        // Another object, behind on the client's own hit:
        assert_eq!(s.answer(&g("home"), b(7, 0)), t(10, 0));
        assert_eq!(s.answer(&g("home"), b(12, 0)), t(12, 0));
    }

    #[test]
    fn neither_half_of_a_gauge_goes_back() {
        let mut s = Session::default();
        s.answer(&pn("v"), b(10, 4));
        assert_eq!(s.answer(&pn("v"), b(9, 6)), t(10, 6));
        assert_eq!(s.answer(&pn("v"), b(11, 5)), t(11, 6));
    }

    #[test]
    fn tokens_round_trip_and_keep_the_most_recent_counters() {
        let mut s = Session::default();
        s.answer(&g("a:b.c"), b(u128::from(u64::MAX) * 2, 0));
        s.answer(&pn("v"), b(3, 2));
        let token = s.token();
        assert_eq!(token, "pn:v=3-2,g:a:b.c=36893488147419103230");
        assert_eq!(Session::parse(Some(&token)), Ok(s.clone()));
        for i in 0..40 {
            s.answer(&g(&format!("c{i}")), b(1, 0));
        }
        let again = Session::parse(Some(&s.token())).unwrap();
        assert_eq!(again.seen.len(), MAX_ENTRIES);
        assert_eq!(again.floor(&g("c39")), b(1, 0));
        assert_eq!(again.floor(&g("a:b.c")), b(0, 0), "the oldest is forgotten");
    }

    #[test]
    fn a_reset_the_client_saw_holds_and_one_it_did_not_see_wins() {
        let mut s = Session::default();
        assert_eq!(s.answer(&g("likes"), b(900, 0)), t(900, 0));
        // The counter was reset: an object that heard it answers far lower, and that wins.
        assert_eq!(s.answer(&g("likes"), after_reset(1, 4, 0)), t(4, 0));
        assert_eq!(s.token(), "g:likes=4@1");
        // An object that has not heard of the reset yet never brings the old count back.
        let mut s = Session::parse(Some(&s.token())).unwrap();
        assert_eq!(s.answer(&g("likes"), b(905, 0)), t(4, 0));
        assert_eq!(s.answer(&g("likes"), after_reset(1, 6, 0)), t(6, 0));
        assert!(matches!(
            Session::parse(Some("g:likes=4@")),
            Err(SessionError::BadEntry(_))
        ));
        assert!(matches!(
            Session::parse(Some("g:likes=4@-1")),
            Err(SessionError::BadEntry(_))
        ));
    }

    #[test]
    fn malformed_tokens_are_refused_with_a_reason() {
        assert_eq!(Session::parse(None), Ok(Session::default()));
        assert_eq!(Session::parse(Some("  ")), Ok(Session::default()));
        for bad in [
            "g:home",
            "g:home=",
            "g:home=-1",
            "g:home=1-",
            "x:home=1",
            "g:ho me=1",
            "g:home=1,g:home=2",
            "g:home=1e3",
            "g:home=999999999999999999999999999999999999999999",
            // Halves of more than 38 digits, epochs of more than 19.
            "g:home=100000000000000000000000000000000000000",
            "pn:home=1-000000000000000000000000000000000000001",
            "g:home=1@10000000000000000000",
        ] {
            assert!(
                matches!(Session::parse(Some(bad)), Err(SessionError::BadEntry(_))),
                "{bad:?}"
            );
        }
        let most = Session::parse(Some(
            "pn:x=99999999999999999999999999999999999999-0007@9999999999999999999",
        ))
        .unwrap();
        assert_eq!(
            most.token(),
            "pn:x=99999999999999999999999999999999999999-7@9999999999999999999"
        );
        let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("g:c{i}=1")).collect();
        assert_eq!(
            Session::parse(Some(&many.join(","))),
            Err(SessionError::TooManyEntries)
        );
        assert_eq!(
            Session::parse(Some(&"g:a=1,".repeat(2000))),
            Err(SessionError::TooLong)
        );
    }
}
