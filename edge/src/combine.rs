//! Hits combined in the Worker: within an isolate, while a request to an object is in flight,
//! further hits bound for that object wait, and go together as one `POST /hits`
//! ([`crate::internal::Hits`]) when it returns. No timer: a hit alone goes at once. Each
//! client is answered only after its own hit is stored, with its own outcome (its own count
//! and slot, so its own receipt).
//!
//! The queue, the sends and the hand-offs are JavaScript (the snippet below), Rust only
//! builds each hit's message and reads its outcome. workerd refuses I/O made on behalf of one
//! request from another's context, and a Rust task woken by another request's promise
//! reaction runs in that one's context (wasm-bindgen-futures polls every woken task from one
//! queue): three designs that sent the combined request from Rust were refused under load,
//! the same queue in JavaScript never was (docs/benchmarks.md, "One request for many").
//! After its outcome arrives, a hit's Rust task makes no I/O: it only signs and answers.
//!
//! Who sends: the request that found the object's queue idle sends its own hit, under its
//! `waitUntil`. Hits queued while that is out wait; the first of each hundred (the most
//! one request carries) is its group's *lead*: it registers, under its own `waitUntil`, a
//! turn that the request before it hands over when it returns. So each combined call runs
//! under the `waitUntil` of a request of its own batch, and goes on if that client has gone;
//! a lead whose turn has not come within [`LEAD_LIMIT_MS`] sends anyway (a call that hangs
//! holds no one up for long). Every batch goes as `/hits`, one hit alone too: a hit its object
//! answers `alone` (near a milestone: the exact path, which waits for the merger) is sent
//! again by itself at once, outside the queue, so the next batch never waits for the merger;
//! an object of the release before `/hits` (`404`) gets each hit alone.

use worker::Env;
use worker::js_sys::{self, Array};
use worker::wasm_bindgen::prelude::wasm_bindgen;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::worker_sys::Context;

use crate::api::ApiError;
use crate::internal::{Answer, HitOutcome};
use crate::runtime::Failure;

/// How long a hit or a shared read waits for its answer before it is answered `500
/// internal` (a hit's outcome is then unknown), in milliseconds: far beyond any object call's
/// time (the exact path goes alone, and bounds its wait by `EXACT_WAIT_MS`).
pub const WAIT_LIMIT_MS: u32 = 30_000;

/// How long a lead waits for its turn before it sends anyway, in milliseconds.
pub const LEAD_LIMIT_MS: u32 = 5_000;

#[wasm_bindgen(
    wasm_bindgen = worker::wasm_bindgen,
    inline_js = r#"
const MOST = 100;
const queues = new Map();
const counts = { hits: 0, calls: 0, combined: 0, alone: 0, reads: 0, read_calls: 0 };
const flights = new Map();
function stub(env, binding, name, hint) {
  const ns = env[binding];
  const id = ns.idFromName(name);
  return hint ? ns.get(id, { locationHint: hint }) : ns.get(id);
}
function post(s, path, body) {
  return s.fetch("https://object" + path, { method: "POST", body })
    .then((r) => r.text().then((t) => [r.status, t]));
}
function failed(e) {
  console.error("object call failed: " + e);
  return [2, 0, ""];
}
function alone(s, w) {
  counts.alone++;
  counts.calls++;
  return post(s, "/hit", w.hit).then(([status, text]) => w.resolve([0, status, text]),
    (e) => w.resolve(failed(e)));
}
function send(q, env, binding, name, hint) {
  const batch = q.pending.splice(0, MOST);
  if (!batch.length) { q.out = false; q.leads = []; return Promise.resolve(); }
  q.out = true;
  const s = stub(env, binding, name, hint);
  // Even a hit alone goes as `/hits`: one near a milestone comes back at once (`alone`) and
  // waits for the merger by itself, never holding up the queue.
  const body = '{"hits":[' + batch.map((w) => w.hit).join(",") + "]}";
  counts.combined++;
  counts.calls++;
  return post(s, "/hits", body).then(([status, text]) => {
    const later = next(q, env, binding, name, hint);
    let single = [];
    if (status === 200) {
      const lines = text.split("\n");
      if (lines.length !== batch.length) {
        batch.forEach((w) => w.resolve(failed("answered " + lines.length + " of " + batch.length)));
      } else {
        batch.forEach((w, i) => lines[i] === '"alone"' ? single.push(w) : w.resolve([1, 200, lines[i]]));
      }
    } else if (status === 404) {
      single = batch;
    } else {
      batch.forEach((w) => w.resolve([0, status, text]));
    }
    return Promise.all([later, ...single.map((w) => alone(s, w))]);
  }, (e) => {
    const later = next(q, env, binding, name, hint);
    batch.forEach((w) => w.resolve(failed(e)));
    return later;
  });
}
function next(q, env, binding, name, hint) {
  if (!q.pending.length) { q.out = false; q.leads = []; return Promise.resolve(); }
  const lead = q.leads.shift();
  if (lead) { lead(); return Promise.resolve(); }
  return send(q, env, binding, name, hint);
}
export function combine_stats() { return JSON.stringify(counts); }
export function shared_read(env, ctx, binding, name, hint, flight, body, wait) {
  counts.reads++;
  let f = flights.get(flight);
  if (!f) {
    counts.read_calls++;
    f = post(stub(env, binding, name, hint), "/read", body)
      .then(([status, text]) => [0, status, text], failed);
    flights.set(flight, f);
    f.then(() => flights.delete(flight));
    ctx.waitUntil(f);
    return f;
  }
  const settled = Promise.withResolvers();
  const timer = setTimeout(() => settled.resolve([2, 0, ""]), wait);
  f.then((answer) => { clearTimeout(timer); settled.resolve(answer); });
  return settled.promise;
}
export function combine_hit(env, ctx, binding, name, hint, hit, limit, wait) {
  counts.hits++;
  let q = queues.get(name);
  if (!q) { q = { out: false, pending: [], leads: [] }; queues.set(name, q); }
  const settled = Promise.withResolvers();
  // A request that waits on another's I/O alone is taken as hung by workerd: the timer is
  // I/O of its own (and bounds the wait: the outcome is then unknown).
  const timer = setTimeout(() => settled.resolve([2, 0, ""]), wait);
  const resolve = (answer) => { clearTimeout(timer); settled.resolve(answer); };
  const promise = settled.promise;
  const lead = q.out && q.pending.length % MOST === 0;
  q.pending.push({ hit, resolve });
  if (!q.out) {
    q.out = true;
    ctx.waitUntil(send(q, env, binding, name, hint));
  } else if (lead) {
    const turn = Promise.withResolvers();
    const timer = setTimeout(turn.resolve, limit);
    q.leads.push(turn.resolve);
    ctx.waitUntil(turn.promise.then(() => {
      clearTimeout(timer);
      const i = q.leads.indexOf(turn.resolve);
      if (i >= 0) q.leads.splice(i, 1);
      return send(q, env, binding, name, hint);
    }));
  }
  return promise;
}
"#
)]
extern "C" {
    /// Queues `hit` (a [`crate::internal::Hit`]'s JSON) for object `name` of `binding`; the
    /// promise settles with `[kind, status, text]`: kind 1, a [`HitOutcome`] line of a
    /// combined answer; kind 0, the answer to the hit sent alone (`/hit`); kind 2, no answer
    /// (the call failed, or none came within `wait`: the outcome is unknown).
    fn combine_hit(
        env: &JsValue,
        ctx: &JsValue,
        binding: &str,
        name: &str,
        hint: Option<&str>,
        hit: String,
        limit: u32,
        wait: u32,
    ) -> js_sys::Promise;
    /// The counts of this isolate, as JSON: `hits` queued, object `calls` made for them, of
    /// them `combined` (`/hits`), and hits sent `alone` (`/hit`); `reads` asked of objects
    /// and the `read_calls` made for them.
    pub fn combine_stats() -> String;
    /// Reads `body` (a [`crate::internal::Read`]'s JSON) from object `name` of `binding`, or
    /// joins the read of flight `flight` (the counter and region) already out: settles with
    /// `[0, status, text]`, or `[2, 0, ""]` without an answer, as [`combine_hit`] does.
    #[allow(
        clippy::too_many_arguments,
        reason = "one JS call, its arguments plain values"
    )]
    fn shared_read(
        env: &JsValue,
        ctx: &JsValue,
        binding: &str,
        name: &str,
        hint: Option<&str>,
        flight: &str,
        body: String,
        wait: u32,
    ) -> js_sys::Promise;
}

/// Counts `hit` (a [`crate::internal::Hit`]'s JSON) at object `name` of `binding`, combined
/// with the isolate's other hits for that object: its answer, or the object's error.
pub async fn hit(
    env: &Env,
    ctx: &Context,
    binding: &str,
    name: &str,
    hint: Option<&str>,
    hit: String,
) -> Result<Answer, Failure> {
    let promise = combine_hit(
        env.as_ref(),
        ctx.as_ref(),
        binding,
        name,
        hint,
        hit,
        LEAD_LIMIT_MS,
        WAIT_LIMIT_MS,
    );
    let (combined, status, text) = settled(promise).await?;
    outcome(combined, status, &text)
}

/// Reads one counter (`read`, a [`crate::internal::Read`]'s JSON) from object `name` of
/// `binding`, sharing the request of a read of the same `flight` (counter and region) already
/// out in this isolate: the object's answers, or its error.
pub async fn read(
    env: &Env,
    ctx: &Context,
    (binding, name, hint): (&str, &str, Option<&str>),
    flight: &str,
    read: String,
) -> Result<Vec<Answer>, Failure> {
    let promise = shared_read(
        env.as_ref(),
        ctx.as_ref(),
        binding,
        name,
        hint,
        flight,
        read,
        WAIT_LIMIT_MS,
    );
    let (_, status, text) = settled(promise).await?;
    if status != 200 {
        return Err(Failure::Object { status, body: text });
    }
    serde_json::from_str(&text).map_err(|e| {
        worker::console_error!("unreadable object answer: {e}");
        Failure::Api(ApiError::Internal)
    })
}

/// The `[kind, status, text]` a promise of the snippet settles with: whether `text` is a
/// combined outcome, the status and text; an error when no answer came (kind 2).
async fn settled(promise: js_sys::Promise) -> Result<(bool, u16, String), Failure> {
    let settled: Array = JsFuture::from(promise)
        .await
        .map_err(|_| Failure::Api(ApiError::Internal))?
        .unchecked_into();
    let kind = settled.get(0).as_f64();
    if kind == Some(2.0) {
        return Err(Failure::Api(ApiError::Internal));
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "an HTTP status"
    )]
    let status = settled.get(1).as_f64().map_or(500, |s| s as u16);
    let text = settled.get(2).as_string().unwrap_or_default();
    Ok((kind == Some(1.0), status, text))
}

/// What a hit's settled `[kind, status, text]` says: see [`combine_hit`].
fn outcome(combined: bool, status: u16, text: &str) -> Result<Answer, Failure> {
    let unreadable = |e: serde_json::Error| {
        worker::console_error!("unreadable object answer: {e}");
        Failure::Api(ApiError::Internal)
    };
    if combined {
        return match serde_json::from_str::<HitOutcome>(text).map_err(unreadable)? {
            HitOutcome::Counted(answer) => Ok(answer),
            HitOutcome::Refused { status, body } => Err(Failure::Object { status, body }),
            // The combiner sends such a hit alone: it never answers `alone`.
            HitOutcome::Alone => Err(Failure::Api(ApiError::Internal)),
        };
    }
    if status != 200 {
        return Err(Failure::Object {
            status,
            body: text.to_owned(),
        });
    }
    let answers: Vec<Answer> = serde_json::from_str(text).map_err(unreadable)?;
    answers
        .into_iter()
        .next()
        .ok_or(Failure::Api(ApiError::Internal))
}

#[cfg(test)]
mod tests {
    //! How a hit's outcome, as the snippet settles it, becomes its answer or its error.
    use super::*;
    use tally_crdt::{CounterKey, CounterKind, ReplicaId};

    fn answer() -> Answer {
        Answer {
            key: CounterKey::new(CounterKind::G, "home").expect("a valid id"),
            view: None,
            slot: Some((ReplicaId::from_u128(7), 13)),
            verdict: None,
        }
    }

    #[test]
    fn a_counted_line_is_its_hits_answer() {
        let line = serde_json::to_string(&HitOutcome::Counted(answer())).unwrap();
        let got = outcome(true, 200, &line).ok().expect("counted");
        assert_eq!(got.slot, answer().slot);
    }

    #[test]
    fn a_refused_line_is_the_objects_error_passed_through() {
        let line = serde_json::to_string(&HitOutcome::Refused {
            status: 429,
            body: r#"{"error":"too_many_new_ids"}"#.into(),
        })
        .unwrap();
        assert!(matches!(
            outcome(true, 200, &line),
            Err(Failure::Object { status: 429, body }) if body.contains("too_many_new_ids")
        ));
    }

    #[test]
    fn a_hit_sent_alone_answers_as_before_and_its_errors_pass_through() {
        let text = serde_json::to_string(&vec![answer()]).unwrap();
        assert_eq!(
            outcome(false, 200, &text).ok().expect("answered").slot,
            answer().slot
        );
        assert!(matches!(
            outcome(false, 503, r#"{"error":"x"}"#),
            Err(Failure::Object { status: 503, .. })
        ));
    }
}
