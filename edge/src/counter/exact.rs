//! Who syncs on the exact path, and who waits: at most [`MAX_FLIGHTS`] exact syncs per
//! counter at a time, and none while the merger is away.
//!
//! A hit near a milestone is stored, then waits until the merger has committed its units so
//! that its answer can tell the verdict ([`crate::milestone`]). Every such hit of a counter
//! needs the same thing — the counter's own totals committed up to its units — so one sync
//! serves all the hits stored before it left. A hit stored while one sync of its counter is in
//! flight sends a second at once (with every hit stored by then), so that it waits one round
//! trip, not the rest of the first plus its own; a hit stored while two are in flight waits
//! for one of them to land, looks at its verdict, and if still undecided sends the next. So a
//! counter sends at most two exact syncs per round trip, whatever its rate, and a hit waits
//! for at most two.
//!
//! With the merger away, waiting helps nobody: after [`AWAY_AFTER`] exact syncs in a row
//! failed, hits answer `pending` at once for a window of `SYNC_TIMEOUT_MS`; then one hit
//! probes (and waits), the others still answer at once, and a success ends it. So at most one
//! hit per object per `SYNC_TIMEOUT_MS` waits for a merger that is down. A request or three
//! lost on the way do not open the window, and any other request of the object that reaches
//! the merger (its regular sync on the alarm, a sweep page, a read) closes it.

use std::collections::HashMap;

use futures_channel::oneshot;
use tally_crdt::{CounterKey, Timestamp};

/// Exact syncs that failed in a row before the merger counts as away.
pub const AWAY_AFTER: u32 = 4;

/// Exact syncs of one counter in flight at most.
pub const MAX_FLIGHTS: u8 = 2;

/// What a hit on the exact path does next.
#[derive(Debug)]
pub enum Turn {
    /// Send the counter's sync now; [`ExactGate::landed`] when it ends. `probe`: the merger
    /// was away, and this sync finds out whether it is back.
    Lead {
        /// Whether this is the away window's probe.
        probe: bool,
    },
    /// [`MAX_FLIGHTS`] syncs of this counter are in flight: wait for one (the receiver
    /// resolves, with an error, when one lands), then look again.
    Wait(oneshot::Receiver<()>),
    /// The merger is away: answer `pending` now (the hit is counted all the same).
    Away,
}

/// The object's exact syncs in flight, and whether the merger is away.
#[derive(Debug, Default)]
pub struct ExactGate {
    /// Counters with exact syncs in flight.
    flights: HashMap<CounterKey, Flights>,
    /// Exact syncs failed in a row.
    failures: u32,
    /// While the merger counts as away: until when no hit probes it.
    away_until: Option<Timestamp>,
    /// A probe is in flight (the merger still counts as away meanwhile).
    probing: bool,
}

/// One counter's exact syncs in flight, and the hits waiting for one to land.
#[derive(Debug, Default)]
struct Flights {
    in_flight: u8,
    waiting: Vec<oneshot::Sender<()>>,
}

impl ExactGate {
    /// The next step of a hit of `key` that its verdict did not end, at `now`.
    pub fn turn(&mut self, key: &CounterKey, now: Timestamp) -> Turn {
        if let Some(until) = self.away_until {
            if self.probing || now < until {
                return Turn::Away;
            }
            self.probing = true;
            self.flights.entry(key.clone()).or_default().in_flight += 1;
            return Turn::Lead { probe: true };
        }
        let flights = self.flights.entry(key.clone()).or_default();
        if flights.in_flight < MAX_FLIGHTS {
            flights.in_flight += 1;
            return Turn::Lead { probe: false };
        }
        let (tx, rx) = oneshot::channel();
        flights.waiting.push(tx);
        Turn::Wait(rx)
    }

    /// A sync of `key` ended: the hits waiting wake (dropping their senders), and look again.
    fn land(&mut self, key: &CounterKey, probe: bool) {
        if let Some(flights) = self.flights.get_mut(key) {
            flights.in_flight = flights.in_flight.saturating_sub(1);
            flights.waiting.clear();
            if flights.in_flight == 0 {
                self.flights.remove(key);
            }
        }
        if probe {
            self.probing = false;
        }
    }

    /// A sync of `key` a [`Turn::Lead`] sent has ended at `now` (`ok`: answered 2xx): the
    /// counter's waiting hits wake. A failure, the [`AWAY_AFTER`]th in a row or a failed probe, opens an
    /// away window of `window_ms`; a success closes it.
    pub fn landed(
        &mut self,
        key: &CounterKey,
        probe: bool,
        ok: bool,
        now: Timestamp,
        window_ms: u64,
    ) {
        self.land(key, probe);
        if ok {
            self.failures = 0;
            self.away_until = None;
            return;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= AWAY_AFTER {
            self.away_until = Some(now.plus_ms(window_ms));
        }
    }

    /// Another request reached the merger (a regular sync, a sweep page or a read): it is
    /// back, and the window closes before its time (a probe in flight lands as usual).
    pub fn reached(&mut self) {
        self.failures = 0;
        self.away_until = None;
    }

    /// The sync of `key` a [`Turn::Lead`] was to send ended without an outcome (its hit's
    /// request went away): its waiters wake, and nothing is learnt of the merger.
    pub fn abandoned(&mut self, key: &CounterKey, probe: bool) {
        self.land(key, probe);
    }

    /// Whether the merger counts as away at `now` (for the log).
    pub fn is_away(&self, now: Timestamp) -> bool {
        self.away_until
            .is_some_and(|until| self.probing || now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_crdt::CounterKind;

    fn key(id: &str) -> CounterKey {
        CounterKey::new(CounterKind::G, id).unwrap()
    }

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_ms(ms)
    }

    #[test]
    fn two_syncs_per_counter_at_a_time_and_a_landing_wakes_the_others() {
        let mut gate = ExactGate::default();
        for _ in 0..MAX_FLIGHTS {
            assert!(matches!(
                gate.turn(&key("a"), at(0)),
                Turn::Lead { probe: false }
            ));
        }
        let Turn::Wait(mut waiting) = gate.turn(&key("a"), at(1)) else {
            panic!("a third hit of the counter waits");
        };
        assert!(
            matches!(gate.turn(&key("b"), at(1)), Turn::Lead { .. }),
            "another counter has its own flights"
        );
        assert_eq!(waiting.try_recv(), Ok(None), "still in flight");
        gate.landed(&key("a"), false, true, at(5), 2000);
        assert!(waiting.try_recv().is_err(), "woken when one lands");
        assert!(matches!(
            gate.turn(&key("a"), at(6)),
            Turn::Lead { probe: false }
        ));
        // Both land: the counter holds nothing.
        gate.landed(&key("a"), false, true, at(7), 2000);
        gate.abandoned(&key("a"), false);
        assert!(!gate.flights.contains_key(&key("a")));
    }

    #[test]
    fn a_few_lost_requests_keep_hits_waiting_but_failures_in_a_row_open_the_window() {
        let mut gate = ExactGate::default();
        for n in 0..AWAY_AFTER - 1 {
            assert!(matches!(gate.turn(&key("a"), at(0)), Turn::Lead { .. }));
            gate.landed(&key("a"), false, false, at(i64::from(n)), 2000);
            assert!(!gate.is_away(at(10)));
        }
        assert!(matches!(gate.turn(&key("a"), at(10)), Turn::Lead { .. }));
        gate.landed(&key("a"), false, false, at(10), 2000);
        assert!(gate.is_away(at(10)));
        assert!(matches!(gate.turn(&key("a"), at(11)), Turn::Away));
        assert!(matches!(gate.turn(&key("b"), at(2009)), Turn::Away));
        // The window over: one probe, and everybody else still answers at once.
        assert!(matches!(
            gate.turn(&key("b"), at(2010)),
            Turn::Lead { probe: true }
        ));
        assert!(matches!(gate.turn(&key("a"), at(2011)), Turn::Away));
        assert!(matches!(gate.turn(&key("b"), at(2011)), Turn::Away));
        // A failed probe opens the next window; a good one closes it.
        gate.landed(&key("b"), true, false, at(3000), 2000);
        assert!(matches!(gate.turn(&key("a"), at(4999)), Turn::Away));
        assert!(matches!(
            gate.turn(&key("a"), at(5000)),
            Turn::Lead { probe: true }
        ));
        gate.landed(&key("a"), true, true, at(5100), 2000);
        assert!(!gate.is_away(at(5100)));
        assert!(matches!(
            gate.turn(&key("a"), at(5101)),
            Turn::Lead { probe: false }
        ));
    }

    #[test]
    fn any_request_that_reaches_the_merger_closes_the_window() {
        let mut gate = ExactGate::default();
        for n in 0..AWAY_AFTER {
            assert!(matches!(gate.turn(&key("a"), at(0)), Turn::Lead { .. }));
            gate.landed(&key("a"), false, false, at(i64::from(n)), 2000);
        }
        assert!(matches!(gate.turn(&key("a"), at(10)), Turn::Away));
        gate.reached();
        assert!(!gate.is_away(at(11)));
        assert!(matches!(
            gate.turn(&key("a"), at(11)),
            Turn::Lead { probe: false }
        ));
        // And the count of failures in a row starts again.
        gate.landed(&key("a"), false, false, at(12), 2000);
        assert!(!gate.is_away(at(12)));
    }
}
