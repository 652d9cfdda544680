//! Single-flight reads: reads of one counter that miss the isolate cache while an object
//! request for it is in flight wait for that request's answer instead of sending their own.
//!
//! The read that finds no flight leads: it asks the object and hands the view to every read
//! that joined meanwhile. It shares nothing else: a failed call, or a leader whose client went
//! away (its future dropped before the answer), releases the followers empty, and each then
//! reads on its own. A leader the runtime neither finishes nor drops (a request cancelled
//! while it awaited) cannot hold the others either: a flight older than its limit (one object
//! call's longest) is replaced by the next read, and a follower waits at most that long. So a
//! read never waits for more than one other request and then its own.
//!
//! How a waiting read is woken is the caller's [`Waiter`]. In the Worker it must be a promise
//! the read made in its own request's context: workerd refuses a response made while another
//! request's handler runs ("Cannot perform I/O on behalf of a different request"), which is
//! where a Rust waker called by the leader would resume it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use tally_crdt::{CounterKey, Timestamp};

use crate::counter::View;

/// A counter of a region: what one flight reads.
type Slot = (String, CounterKey);

/// How a read waiting for a flight is told its outcome: the view, or `None` when the flight
/// came back empty (then it reads on its own). Told at most once.
pub trait Waiter {
    /// Tells the waiting read.
    fn wake(self, view: Option<View>);
}

/// One request in flight and the reads waiting for its answer.
struct Flight<W> {
    /// Tells this flight from a later one of the same counter.
    id: u64,
    started: Timestamp,
    followers: Vec<W>,
}

struct Board<W> {
    flights: HashMap<Slot, Flight<W>>,
    next_id: u64,
}

/// The flights in progress in this isolate (a handle: its clones share them).
pub struct Flights<W> {
    board: Rc<RefCell<Board<W>>>,
}

impl<W> Default for Flights<W> {
    fn default() -> Self {
        Flights {
            board: Rc::new(RefCell::new(Board {
                flights: HashMap::new(),
                next_id: 0,
            })),
        }
    }
}

impl<W> Clone for Flights<W> {
    fn clone(&self) -> Self {
        Flights {
            board: Rc::clone(&self.board),
        }
    }
}

/// What a read does: lead a flight, or wait (at most the flight's limit) to be woken.
pub enum Role<W: Waiter> {
    /// Ask the object, then [`Lead::land`] the view.
    Lead(Lead<W>),
    /// The waiter made for this read joined the flight.
    Follow,
}

impl<W: Waiter> Flights<W> {
    /// Joins the flight of `key` in `region` if one started less than `limit_ms` before `now`
    /// (with the waiter `waiter` makes), or starts one (an older flight is given up: its
    /// followers are released empty).
    pub fn join(
        &self,
        region: &str,
        key: &CounterKey,
        now: Timestamp,
        limit_ms: u64,
        waiter: impl FnOnce() -> W,
    ) -> Role<W> {
        let slot = (region.to_owned(), key.clone());
        let given_up = {
            let mut board = self.board.borrow_mut();
            match board.flights.get_mut(&slot) {
                Some(flight) if now.millis_since(flight.started) < limit_ms => {
                    flight.followers.push(waiter());
                    return Role::Follow;
                }
                _ => {}
            }
            board.next_id += 1;
            let id = board.next_id;
            let old = board.flights.insert(
                slot.clone(),
                Flight {
                    id,
                    started: now,
                    followers: Vec::new(),
                },
            );
            (old, id)
        };
        let (old, id) = given_up;
        // Woken outside the borrow: a waiter may run code that joins again.
        for follower in old.into_iter().flat_map(|f| f.followers) {
            follower.wake(None);
        }
        Role::Lead(Lead {
            flights: self.clone(),
            slot: Some((slot, id)),
        })
    }

    /// Flights in progress.
    pub fn len(&self) -> usize {
        self.board.borrow().flights.len()
    }

    /// Whether no flight is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends flight `id` of `slot`, if it is still the one in progress: its followers.
    fn end(&self, slot: &Slot, id: u64) -> Vec<W> {
        let mut board = self.board.borrow_mut();
        match board.flights.get(slot) {
            Some(flight) if flight.id == id => board
                .flights
                .remove(slot)
                .map(|f| f.followers)
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

/// The leading read of a flight. Dropped without [`Lead::land`] (a failed call, a client gone),
/// it releases its followers empty.
pub struct Lead<W: Waiter> {
    flights: Flights<W>,
    slot: Option<(Slot, u64)>,
}

impl<W: Waiter> Lead<W> {
    /// Hands `view` to every read that joined the flight, and ends it.
    pub fn land(mut self, view: View) {
        if let Some((slot, id)) = self.slot.take() {
            let followers = self.flights.end(&slot, id);
            for follower in followers {
                follower.wake(Some(view));
            }
        }
    }
}

impl<W: Waiter> Drop for Lead<W> {
    fn drop(&mut self) {
        if let Some((slot, id)) = self.slot.take() {
            let followers = self.flights.end(&slot, id);
            for follower in followers {
                follower.wake(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_channel::oneshot;
    use futures_util::FutureExt;
    use tally_crdt::{CounterKind, GlobalTotals};

    use super::*;

    const LIMIT: u64 = 1000;

    impl Waiter for oneshot::Sender<Option<View>> {
        fn wake(self, view: Option<View>) {
            let _ = self.send(view);
        }
    }

    type Told = oneshot::Receiver<Option<View>>;
    type Board = Flights<oneshot::Sender<Option<View>>>;

    fn key(id: &str) -> CounterKey {
        CounterKey::new(CounterKind::G, id).unwrap()
    }
    fn view(p: u128) -> View {
        View {
            totals: GlobalTotals { p, n: 0 },
            updated_at: None,
            age_ms: Some(0),
            epoch: 0,
        }
    }

    /// A read at `ms`: its role, and what it will be told if it follows.
    fn join(
        flights: &Board,
        region: &str,
        id: &str,
        ms: i64,
    ) -> (Role<oneshot::Sender<Option<View>>>, Told) {
        let (tx, rx) = oneshot::channel();
        let role = flights.join(region, &key(id), Timestamp::from_unix_ms(ms), LIMIT, || tx);
        (role, rx)
    }
    fn lead(
        flights: &Board,
        region: &str,
        id: &str,
        ms: i64,
    ) -> Lead<oneshot::Sender<Option<View>>> {
        match join(flights, region, id, ms) {
            (Role::Lead(lead), _) => lead,
            (Role::Follow, _) => panic!("expected to lead"),
        }
    }
    fn follow(flights: &Board, region: &str, id: &str, ms: i64) -> Told {
        match join(flights, region, id, ms) {
            (Role::Follow, told) => told,
            (Role::Lead(_), _) => panic!("expected to follow"),
        }
    }
    fn told(rx: Told) -> Option<Option<u128>> {
        rx.now_or_never()
            .and_then(Result::ok)
            .map(|v| v.map(|v| v.totals.p))
    }

    #[test]
    fn reads_that_join_a_flight_get_its_view_and_the_next_read_leads_again() {
        let flights = Board::default();
        let first_lead = lead(&flights, "eu", "a", 0);
        let first = follow(&flights, "eu", "a", 1);
        let second = follow(&flights, "eu", "a", 2);
        let _us = lead(&flights, "us", "a", 3); // per region
        let _b = lead(&flights, "eu", "b", 3); // per counter
        first_lead.land(view(7));
        assert_eq!(told(first), Some(Some(7)));
        assert_eq!(told(second), Some(Some(7)));
        assert_eq!(flights.len(), 2, "the other two flights");
        let _again = lead(&flights, "eu", "a", 4);
    }

    #[test]
    fn a_leader_gone_without_an_answer_releases_its_followers_empty() {
        let flights = Board::default();
        let gone = lead(&flights, "eu", "a", 0);
        let follower = follow(&flights, "eu", "a", 1);
        drop(gone);
        assert_eq!(told(follower), Some(None));
        assert!(flights.is_empty(), "the next read leads");
    }

    #[test]
    fn a_follower_gone_changes_nothing_for_the_others() {
        let flights = Board::default();
        let leader = lead(&flights, "eu", "a", 0);
        drop(follow(&flights, "eu", "a", 1));
        let stays = follow(&flights, "eu", "a", 2);
        leader.land(view(3));
        assert_eq!(told(stays), Some(Some(3)));
    }

    /// A leader the runtime never finishes nor drops holds nobody past the limit, and when it
    /// comes back it cannot end the flight that replaced it.
    #[test]
    fn a_flight_past_its_limit_is_replaced_and_its_late_leader_changes_nothing() {
        let flights = Board::default();
        let stuck = lead(&flights, "eu", "a", 0);
        let old = follow(&flights, "eu", "a", 999);
        let next = lead(&flights, "eu", "a", 1000);
        assert_eq!(
            told(old),
            Some(None),
            "the old flight's followers are released"
        );
        let mut new = follow(&flights, "eu", "a", 1001);
        stuck.land(view(1));
        assert!(
            new.try_recv().unwrap().is_none(),
            "the late leader does not answer the new flight"
        );
        assert_eq!(flights.len(), 1);
        next.land(view(2));
        assert_eq!(told(new), Some(Some(2)));
    }
}
