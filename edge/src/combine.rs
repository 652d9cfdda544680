//! Hits combined in the Worker: within an isolate, while a request to an object is in flight,
//! further hits bound for that object wait, and go together as one `POST /v1/hits`
//! ([`crate::internal::v1`]; `/hits` in the JSON form) when it returns. No timer: a hit alone goes at once. Each
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
//! holds no one up for long). Every batch goes as one, one hit alone too: a hit its object
//! answers `alone` (near a milestone: the exact path, which waits for the merger) is sent
//! again by itself at once, marked alone, outside the queue, so the next batch never waits
//! for the merger. An object of a release before the compact form answers `404`: its hits are
//! answered `500` (nothing stored; `OBJECT_MESSAGES = "json"` is for that deploy). In the JSON
//! form, an object of the release before `/hits` (`404`) gets each hit alone.

use worker::Env;
use worker::js_sys::{self, Array, Uint8Array};
use worker::wasm_bindgen::prelude::wasm_bindgen;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::worker_sys::Context;

use crate::api::ApiError;
use crate::internal::{Answer, Form, Hit, HitOutcome, Read, v1};
use crate::runtime::Failure;

/// How long a hit or a shared read waits for the answer to another request's object call
/// before it is answered `500 internal` (a hit's outcome is then unknown), in milliseconds:
/// far beyond any object call's time (the exact path goes alone, and bounds its wait by
/// `EXACT_WAIT_MS`). A hit that sends its own call waits on its own I/O, with no timer.
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
// A 200 of the compact form is bytes; anything else (and every JSON answer) text.
function post(s, path, body, bytes) {
  return s.fetch("https://object" + path, { method: "POST", body }).then((r) =>
    (bytes && r.status === 200 ? r.arrayBuffer().then((b) => new Uint8Array(b)) : r.text())
      .then((t) => [r.status, t]));
}
function failed(e) {
  console.error("object call failed: " + e);
  return [2, 0, ""];
}
// An object of a release before the compact form answers its paths 404.
function older(status) {
  if (status !== 404) return false;
  console.error("an object of a release before the compact messages answered 404: " +
    "deploy with OBJECT_MESSAGES = \"json\" until every object runs this release");
  return true;
}
// The outcomes of a compact `/v1/hits` answer, each after its 4-byte little-endian length;
// null if the bytes are not that.
function split(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const parts = [];
  let at = 0;
  while (at + 4 <= bytes.length) {
    const n = view.getUint32(at, true);
    if (at + 4 + n > bytes.length) return null;
    parts.push(bytes.subarray(at + 4, at + 4 + n));
    at += 4 + n;
  }
  return at === bytes.length ? parts : null;
}
function alone(s, w, compact) {
  counts.alone++;
  counts.calls++;
  if (!compact) {
    return post(s, "/hit", w.hit, false).then(([status, text]) => w.resolve([0, status, text]),
      (e) => w.resolve(failed(e)));
  }
  // The same hit, marked alone (flag bit 2): it may take the exact path now.
  const hit = w.hit.slice();
  hit[0] |= 4;
  return post(s, "/v1/hits", hit, true).then(([status, body]) => {
    if (status !== 200) return w.resolve(older(status) ? [3, 0, ""] : [0, status, body]);
    const parts = split(body);
    w.resolve(parts && parts.length === 1 ? parts[0] : failed("not one outcome"));
  }, (e) => w.resolve(failed(e)));
}
function body_of(batch, compact) {
  if (!compact) return '{"hits":[' + batch.map((w) => w.hit).join(",") + "]}";
  let n = 0;
  for (const w of batch) n += w.hit.length;
  const body = new Uint8Array(n);
  n = 0;
  for (const w of batch) { body.set(w.hit, n); n += w.hit.length; }
  return body;
}
function send(q, env, binding, name, hint) {
  const batch = q.pending.splice(0, MOST);
  if (!batch.length) { q.out = false; q.leads = []; return Promise.resolve(); }
  q.out = true;
  const s = stub(env, binding, name, hint);
  const compact = q.compact;
  // Even a hit alone goes as a batch: one near a milestone comes back at once (`alone`) and
  // waits for the merger by itself, never holding up the queue.
  counts.combined++;
  counts.calls++;
  return post(s, compact ? "/v1/hits" : "/hits", body_of(batch, compact), compact).then(
    ([status, answer]) => {
      const later = next(q, env, binding, name, hint);
      let single = [];
      if (batch.some((w) => w.drop)) {
        // A test's fault: the object's answer lost on the way back.
        batch.forEach((w) => w.resolve(failed("answer dropped (a test's fault)")));
      } else if (status === 200) {
        const parts = compact ? split(answer) : answer.split("\n");
        if (!parts || parts.length !== batch.length) {
          const got = parts ? parts.length : "unreadable";
          batch.forEach((w) => w.resolve(failed("answered " + got + " of " + batch.length)));
        } else {
          batch.forEach((w, i) => {
            const part = parts[i];
            const isAlone = compact ? part.length === 1 && part[0] === 2 : part === '"alone"';
            // A compact outcome settles as its bytes alone (fewer calls to read it).
            isAlone ? single.push(w) : w.resolve(compact ? part : [1, 200, part]);
          });
        }
      } else if (status === 404 && !compact) {
        single = batch;
      } else {
        const each = older(status) ? [3, 0, ""] : [0, status, answer];
        batch.forEach((w) => w.resolve(each));
      }
      return Promise.all([later, ...single.map((w) => alone(s, w, compact))]);
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
  const compact = typeof body !== "string";
  let f = flight ? flights.get(flight) : undefined;
  if (!f) {
    counts.read_calls++;
    f = post(stub(env, binding, name, hint), compact ? "/v1/read" : "/read", body, compact)
      .then(([status, answer]) => (compact && older(status) ? [3, 0, ""] : [0, status, answer]),
        failed);
    if (flight) {
      flights.set(flight, f);
      f.then(() => flights.delete(flight));
    }
    ctx.waitUntil(f);
    return f;
  }
  const settled = Promise.withResolvers();
  const timer = setTimeout(() => settled.resolve([2, 0, ""]), wait);
  f.then((answer) => { clearTimeout(timer); settled.resolve(answer); });
  return settled.promise;
}
export function combine_hit(env, ctx, binding, name, hint, hit, limit, wait, drop) {
  counts.hits++;
  const compact = typeof hit !== "string";
  // One queue per object and form (a deployment sends one form; the key keeps them apart).
  const key = compact ? name : "json:" + name;
  let q = queues.get(key);
  if (!q) { q = { out: false, pending: [], leads: [], compact }; queues.set(key, q); }
  const settled = Promise.withResolvers();
  if (!q.out) {
    // Sent at once, under this request's own `waitUntil`: it waits on its own I/O.
    q.pending.push({ hit, resolve: settled.resolve, drop });
    q.out = true;
    ctx.waitUntil(send(q, env, binding, name, hint));
    return settled.promise;
  }
  // A request that waits on another's I/O alone is taken as hung by workerd: the timer is
  // I/O of its own (and bounds the wait: the outcome is then unknown).
  const timer = setTimeout(() => settled.resolve([2, 0, ""]), wait);
  const resolve = (answer) => { clearTimeout(timer); settled.resolve(answer); };
  const promise = settled.promise;
  const lead = q.pending.length % MOST === 0;
  q.pending.push({ hit, resolve, drop });
  if (lead) {
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
    /// Queues `hit` (a [`Hit`]'s JSON text, or its compact form's bytes) for object `name` of
    /// `binding`; the promise settles with one compact [`HitOutcome`]'s bytes alone, or with
    /// `[kind, status, answer]`: kind 1, one JSON [`HitOutcome`] line; kind 0, the object's answer
    /// itself (an error, or the JSON answer to a hit sent alone to `/hit`); kind 2, no answer
    /// (the call failed, or none came within `wait`: the outcome is unknown); kind 3, an object
    /// of a release before the compact form (nothing stored). With `lose` (a test's fault, see
    /// [`DROP_HEADER`]) the answer to the call that carries it is dropped once it came.
    #[allow(
        clippy::too_many_arguments,
        reason = "one JS call, its arguments plain values"
    )]
    fn combine_hit(
        env: &JsValue,
        ctx: &JsValue,
        binding: &str,
        name: &str,
        hint: Option<&str>,
        hit: JsValue,
        limit: u32,
        wait: u32,
        lose: bool,
    ) -> js_sys::Promise;
    /// The counts of this isolate, as JSON: `hits` queued, object `calls` made for them, of
    /// them `combined` (`/hits`), and hits sent `alone` (`/hit`); `reads` asked of objects
    /// and the `read_calls` made for them.
    pub fn combine_stats() -> String;
    /// Reads `body` (a [`Read`]'s JSON text or compact bytes) from object `name` of `binding`,
    /// or joins the read of flight `flight` (the counter and region; empty: never shared)
    /// already out: settles with `[0, status, answer]`, `[2, 0, ""]` without an answer, or
    /// `[3, 0, ""]` from an object of a release before the compact form, as [`combine_hit`].
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
        body: JsValue,
        wait: u32,
    ) -> js_sys::Promise;
}

/// The object a call goes to: its class's binding, its name and its location hint.
pub type Target<'a> = (&'a str, &'a str, Option<&'a str>);

/// The request header that makes the combined call carrying its hit lose the object's answer
/// on the way back (every client of that call is answered `500`, its outcome unknown, though
/// the object counted it): a fault for tests, honoured only where `ALLOW_REGION_OVERRIDE` is
/// set (`wrangler dev`, tests), never in production.
pub const DROP_HEADER: &str = "X-Tally-Test-Drop-Answer";

/// Counts `hit` at object `target`, sent in `form`, combined with the isolate's other hits
/// for that object: its answer, or the object's error. `lose`: see [`DROP_HEADER`].
pub async fn hit(
    env: &Env,
    ctx: &Context,
    (binding, name, hint): Target<'_>,
    form: Form,
    (hit, lose): (&Hit, bool),
) -> Result<Answer, Failure> {
    let message = match form {
        Form::Json => JsValue::from(serde_json::to_string(hit).map_err(|_| ApiError::Internal)?),
        Form::V1 => {
            let mut bytes = Vec::with_capacity(64);
            v1::encode_hit(hit, false, &mut bytes);
            Uint8Array::from(bytes.as_slice()).into()
        }
    };
    let promise = combine_hit(
        env.as_ref(),
        ctx.as_ref(),
        binding,
        name,
        hint,
        message,
        LEAD_LIMIT_MS,
        WAIT_LIMIT_MS,
        lose,
    );
    let (kind, status, answer) = settled(promise).await?;
    outcome(form, kind, status, answer)
}

/// Reads counters (`read`, sent in `form`) from object `target`, sharing the request of a
/// read of the same `flight` (counter and region; empty: not shared) already out in this
/// isolate: the object's answers, or its error.
pub async fn read(
    env: &Env,
    ctx: &Context,
    (binding, name, hint): Target<'_>,
    form: Form,
    flight: &str,
    read: &Read,
) -> Result<Vec<Answer>, Failure> {
    let message = match form {
        Form::Json => JsValue::from(serde_json::to_string(read).map_err(|_| ApiError::Internal)?),
        Form::V1 => Uint8Array::from(v1::encode_read(read).as_slice()).into(),
    };
    let promise = shared_read(
        env.as_ref(),
        ctx.as_ref(),
        binding,
        name,
        hint,
        flight,
        message,
        WAIT_LIMIT_MS,
    );
    let (kind, status, answer) = settled(promise).await?;
    if kind == Kind::Older {
        return Err(Failure::Api(ApiError::Internal));
    }
    match answer {
        Payload::Text(text) if status != 200 => Err(Failure::Object { status, body: text }),
        Payload::Text(text) if form == Form::Json => {
            serde_json::from_str(&text).map_err(unreadable)
        }
        Payload::Bytes(bytes) if form == Form::V1 => v1::decode_answers(&bytes).map_err(unreadable),
        _ => Err(unreadable("an answer of the other form")),
    }
}

/// What a settled promise of the snippet says, by its first element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The object's answer itself.
    Whole,
    /// One outcome of a combined answer.
    Outcome,
    /// An object of a release before the compact form: nothing stored.
    Older,
}

/// An answer's body: the text of JSON and errors, or the compact form's bytes.
#[derive(Debug)]
enum Payload {
    Text(String),
    Bytes(Vec<u8>),
}

/// The `[kind, status, answer]` a promise of the snippet settles with, or the bytes alone of
/// a compact outcome; an error when no answer came (kind 2).
async fn settled(promise: js_sys::Promise) -> Result<(Kind, u16, Payload), Failure> {
    let value = JsFuture::from(promise)
        .await
        .map_err(|_| Failure::Api(ApiError::Internal))?;
    let settled: Array = match value.dyn_into::<Uint8Array>() {
        Ok(bytes) => return Ok((Kind::Outcome, 200, Payload::Bytes(bytes.to_vec()))),
        Err(value) => value.unchecked_into(),
    };
    let kind = match settled.get(0).as_f64() {
        Some(0.0) => Kind::Whole,
        Some(1.0) => Kind::Outcome,
        Some(3.0) => Kind::Older,
        _ => return Err(Failure::Api(ApiError::Internal)),
    };
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "an HTTP status"
    )]
    let status = settled.get(1).as_f64().map_or(500, |s| s as u16);
    let answer = settled.get(2);
    let payload = match answer.as_string() {
        Some(text) => Payload::Text(text),
        None => match answer.dyn_into::<Uint8Array>() {
            Ok(bytes) => Payload::Bytes(bytes.to_vec()),
            Err(_) => Payload::Text(String::new()),
        },
    };
    Ok((kind, status, payload))
}

fn unreadable(e: impl std::fmt::Display) -> Failure {
    // The console is the runtime's: native tests have none.
    #[cfg(target_arch = "wasm32")]
    worker::console_error!("unreadable object answer: {e}");
    #[cfg(not(target_arch = "wasm32"))]
    let _ = e;
    Failure::Api(ApiError::Internal)
}

/// What a hit's settled `[kind, status, answer]` says, for a hit sent in `form`: see
/// [`combine_hit`].
fn outcome(form: Form, kind: Kind, status: u16, answer: Payload) -> Result<Answer, Failure> {
    let outcome = match (kind, answer) {
        (Kind::Older, _) => return Err(Failure::Api(ApiError::Internal)),
        (_, Payload::Text(text)) if kind == Kind::Whole && status != 200 => {
            return Err(Failure::Object { status, body: text });
        }
        (Kind::Outcome, Payload::Text(line)) if form == Form::Json => {
            serde_json::from_str::<HitOutcome>(&line).map_err(unreadable)?
        }
        (Kind::Outcome, Payload::Bytes(bytes)) if form == Form::V1 => {
            v1::decode_outcome(&bytes).map_err(unreadable)?
        }
        // The JSON answer to a hit sent alone to `/hit`.
        (Kind::Whole, Payload::Text(text)) if form == Form::Json => {
            let answers: Vec<Answer> = serde_json::from_str(&text).map_err(unreadable)?;
            return answers
                .into_iter()
                .next()
                .ok_or(Failure::Api(ApiError::Internal));
        }
        _ => return Err(unreadable("an answer of the other form")),
    };
    match outcome {
        HitOutcome::Counted(answer) => Ok(answer),
        HitOutcome::Refused { status, body } => Err(Failure::Object { status, body }),
        // The combiner sends such a hit alone: it never answers `alone`.
        HitOutcome::Alone => Err(Failure::Api(ApiError::Internal)),
    }
}

#[cfg(test)]
mod tests {
    //! How a hit's outcome, as the snippet settles it, becomes its answer or its error, in
    //! either form.
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

    /// `outcome`'s bytes as the snippet hands them over: without their length.
    fn compact(outcome: &HitOutcome) -> Payload {
        let mut framed = Vec::new();
        v1::push_outcome(outcome, &mut framed);
        Payload::Bytes(framed[4..].to_vec())
    }

    fn json(outcome: &HitOutcome) -> Payload {
        Payload::Text(serde_json::to_string(outcome).unwrap())
    }

    #[test]
    fn a_counted_outcome_is_its_hits_answer() {
        let counted = HitOutcome::Counted(answer());
        for (form, payload) in [(Form::Json, json(&counted)), (Form::V1, compact(&counted))] {
            let got = outcome(form, Kind::Outcome, 200, payload)
                .ok()
                .expect("counted");
            assert_eq!(got.slot, answer().slot, "{form:?}");
        }
    }

    #[test]
    fn a_refused_outcome_is_the_objects_error_passed_through() {
        let refused = HitOutcome::Refused {
            status: 429,
            body: r#"{"error":"too_many_new_ids"}"#.into(),
        };
        for (form, payload) in [(Form::Json, json(&refused)), (Form::V1, compact(&refused))] {
            assert!(matches!(
                outcome(form, Kind::Outcome, 200, payload),
                Err(Failure::Object { status: 429, body }) if body.contains("too_many_new_ids")
            ));
        }
    }

    #[test]
    fn a_hit_sent_alone_answers_as_before_and_its_errors_pass_through() {
        let text = serde_json::to_string(&vec![answer()]).unwrap();
        assert_eq!(
            outcome(Form::Json, Kind::Whole, 200, Payload::Text(text))
                .ok()
                .expect("answered")
                .slot,
            answer().slot
        );
        for form in [Form::Json, Form::V1] {
            assert!(matches!(
                outcome(
                    form,
                    Kind::Whole,
                    503,
                    Payload::Text(r#"{"error":"x"}"#.into())
                ),
                Err(Failure::Object { status: 503, .. })
            ));
        }
    }

    /// An answer of the other form, or an object of an older release, is never taken for a
    /// count: the client is answered 500 (its outcome unknown) and nothing is made up.
    #[test]
    fn an_answer_of_the_other_form_or_an_older_object_is_an_error() {
        let counted = HitOutcome::Counted(answer());
        assert!(outcome(Form::V1, Kind::Outcome, 200, json(&counted)).is_err());
        assert!(outcome(Form::Json, Kind::Outcome, 200, compact(&counted)).is_err());
        assert!(outcome(Form::V1, Kind::Older, 0, Payload::Text(String::new())).is_err());
        assert!(outcome(Form::V1, Kind::Outcome, 200, Payload::Bytes(vec![9])).is_err());
    }
}
