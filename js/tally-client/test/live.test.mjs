// The client against a live tally: the merger and the worker under `wrangler dev`, started
// by tests/tests/e2e/client.rs, which passes where they are:
//
//   TALLY_EDGE_URL        the edge, http://127.0.0.1:PORT
//   TALLY_MERGER_URL      the merger (the global counts the edge converges to)
//   TALLY_DROPPING_URL    a proxy to the edge that forwards each request and drops its answer
//   TALLY_STALLED_URL     a proxy that accepts connections and never forwards a byte
//   TALLY_WRITE_KEY       the edge's write key
//   TALLY_NEW_ID_LIMIT    the edge's new-id budget per window (its NEW_IDS rate limit)
//   TALLY_PRESENCE_TTL_MS the edge's PRESENCE_TTL_MS
//
// Run with --test-concurrency=1: the tests share the edge's new-id budget, and the one that
// spends it all runs last. Node 20 needs --experimental-websocket for the presence tests.

import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { createClient, StorageSessionStore, TallyError } from "tally-client";
import { createServerClient } from "tally-client/server";

function need(name) {
  const value = process.env[name];
  assert.ok(value, `${name} is not set (tests/tests/e2e/client.rs sets it)`);
  return value;
}
const EDGE = need("TALLY_EDGE_URL");
const MERGER = need("TALLY_MERGER_URL");
const TTL_MS = Number(need("TALLY_PRESENCE_TTL_MS"));
const WebSocket = globalThis.WebSocket;
assert.ok(WebSocket, "no global WebSocket: run Node 20 with --experimental-websocket, or Node >= 22");

// Ids of this run: the edge and the merger are fresh, but a rerun by hand should not collide.
const run = Date.now().toString(36);
const id = (name) => `${name}-${run}`;

/** Polls `check` every 100 ms until it returns true; fails with `what` after `ms`. */
async function eventually(what, check, ms = 15_000) {
  const until = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last === true) return;
    } catch (e) {
      last = e;
    }
    if (Date.now() > until) assert.fail(`${what}: not within ${ms} ms (last: ${last})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The merger's global count of counter (or gauge) `name`. */
async function mergerCount(name, namespace = "counters") {
  const r = await fetch(`${MERGER}/v1/${namespace}/${name}`, { signal: AbortSignal.timeout(5000) });
  assert.equal(r.status, 200);
  return (await r.json()).count;
}

/** A TCP forwarder on 127.0.0.1 to the edge whose connections the test can cut. */
async function forwarder(port = 0) {
  const target = new URL(EDGE);
  const open = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    open.add(client);
    open.add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    for (const s of [client, upstream]) s.on("error", end).on("close", end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve, reject) => server.once("error", reject).listen(port, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      const n = open.size;
      for (const s of open) s.destroy();
      open.clear();
      return n;
    },
    // Cuts what is open too: a kept-alive connection would hold close() for seconds.
    close: () => new Promise((resolve) => {
      server.close(resolve);
      for (const s of open) s.destroy();
      open.clear();
    }),
  };
}

/** A loopback port nothing listens on (bound, then released). */
async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

test("N hits give the count N at the edge and at the merger, and answers never go down", async () => {
  const tally = createClient({ baseUrl: EDGE });
  const name = id("likes");
  const N = 12;
  let previous = 0;
  for (let i = 0; i < N; i++) {
    const hit = await tally.hit(name);
    assert.ok(hit.count >= Math.max(previous, 1), `hit ${i + 1} answered ${hit.count} after ${previous}`);
    assert.match(hit.receipt, /^[A-Za-z0-9_-]{50}$/, "every hit has its receipt");
    assert.equal(hit.attempts, 1);
    assert.equal(hit.milestone, null, "no milestone near");
    previous = hit.count;
  }
  assert.match(tally.sessionToken, /^1\./, "the client holds the edge's session token");
  // Read-your-writes: the same client reads at least what its last hit answered.
  assert.ok((await tally.read(name)).count >= previous);
  await eventually(`the merger counts ${N}`, async () => (await mergerCount(name)) === N);
  const fresh = createClient({ baseUrl: EDGE });
  await eventually(`a fresh client reads ${N}`, async () => (await fresh.read(name)).count === N);
});

test("readMany answers what read answers, in the order asked, in one request per 100 ids", async () => {
  let requests = 0;
  const counting = (url, init) => {
    requests++;
    return fetch(url, init);
  };
  const tally = createClient({ baseUrl: EDGE, fetch: counting });
  const [a, b, c, never] = ["a", "b", "c", "never"].map((n) => id(`batch:${n}`));
  for (const [name, hits] of [[a, 1], [b, 2], [c, 3]]) {
    for (let i = 0; i < hits; i++) await tally.hit(name);
  }
  await eventually("the merger has the three counters", async () =>
    (await mergerCount(a)) === 1 && (await mergerCount(b)) === 2 && (await mergerCount(c)) === 3);
  await eventually("readMany reads 3, 1, 2, 0", async () => {
    requests = 0;
    const items = await tally.readMany([c, a, b, never]);
    assert.equal(requests, 1, "one request");
    return JSON.stringify(items.map((i) => [i.id, i.count])) === JSON.stringify([[c, 3], [a, 1], [b, 2], [never, 0]]);
  });
  const items = await tally.readMany([a, b, c, never]);
  for (const item of items) {
    assert.equal(item.error, undefined, `${item.id} was read`);
    assert.equal(item.count, (await tally.read(item.id)).count, `readMany and read agree on ${item.id}`);
  }
  assert.equal(items[3].updatedAt, null, "a counter nobody hit has no time");
  const many = Array.from({ length: 150 }, (_, i) => id(`page-${i}`));
  requests = 0;
  const pages = await tally.readMany([a, ...many]);
  assert.equal(requests, 2, "150 ids take two requests");
  assert.equal(pages.length, 151);
  assert.deepEqual(pages[0], { id: a, count: 1, updatedAt: pages[0].updatedAt });
  assert.ok(pages.slice(1).every((p) => p.count === 0));
});

test("the session token is sent back, and a store given to the client keeps it", async () => {
  const values = new Map();
  const storage = { getItem: (k) => values.get(k) ?? null, setItem: (k, v) => values.set(k, v) };
  const sent = [];
  const recording = (url, init) => {
    sent.push(init.headers["Tally-Session"] ?? null);
    return fetch(url, init);
  };
  const first = createClient({ baseUrl: EDGE, session: new StorageSessionStore(storage, "t") });
  const name = id("session");
  const hit = await first.hit(name);
  const token = values.get("t");
  assert.match(token, /^1\./, "the token went into the store");
  // A second client on the same store (a reload) sends it, and reads its writes at once.
  const second = createClient({ baseUrl: EDGE, session: new StorageSessionStore(storage, "t"), fetch: recording });
  const read = await second.read(name);
  assert.equal(sent[0], token, "the stored token is sent");
  assert.ok(read.count >= hit.count, `read ${read.count} after a hit answered ${hit.count}`);
  assert.notEqual(values.get("t"), undefined);
});

test("unique counts each visitor once, all-time, and a keyless visit today", async () => {
  const tally = createClient({ baseUrl: EDGE });
  const name = id("post:visitors");
  let last;
  for (const visitor of ["v1", "v2", "v3", "v1", "v4", "v5", "v2"]) last = await tally.unique(name, { visitor });
  // Visits spread over the edge's objects; each answers what it and the merger know so far.
  assert.ok(last.count >= 1 && last.count <= 5, `a visit answered ${last.count}`);
  assert.equal(last.day, null, "a keyed visit answers the all-time estimate");
  assert.equal(last.error, 0.01625);
  await eventually("readUnique reads 5", async () => (await tally.readUnique(name)).count === 5);
  const today = await tally.unique(name);
  assert.equal(today.day, new Date().toISOString().slice(0, 10), "a keyless visit is counted today");
  assert.ok(today.count >= 1);
  const server = createServerClient({ baseUrl: EDGE, writeKey: need("TALLY_WRITE_KEY") });
  const bulk = await server.visitors(name, ["v5", "v6", "v7"]);
  assert.ok(bulk.count >= 3 && bulk.count <= 7, `a bulk visit answered ${bulk.count}`);
  await eventually("visitors in bulk add the two new ones", async () => (await tally.readUnique(name)).count === 7);
});

test("the server entry writes deltas and gauges with the write key, refused without it", async () => {
  const server = createServerClient({ baseUrl: EDGE, writeKey: need("TALLY_WRITE_KEY") });
  const counter = id("orders");
  const gauge = id("inbox-unread");
  await server.add(counter, 500);
  await server.gauge(gauge, 5);
  await server.gauge(gauge, -2);
  await eventually("the merger counts 500 and 3", async () =>
    (await mergerCount(counter)) === 500 && (await mergerCount(gauge, "gauges")) === 3);
  await eventually("the gauge reads 3", async () => (await server.readGauge(gauge)).count === 3);
  const [g] = await server.readGauges([gauge]);
  assert.equal(g.count, 3);
  const wrong = createServerClient({ baseUrl: EDGE, writeKey: "not-the-key" });
  await assert.rejects(wrong.gauge(gauge, 1), (e) => {
    assert.ok(e instanceof TallyError);
    assert.equal(e.code, "invalid_write_key");
    assert.equal(e.status, 401);
    assert.equal(e.attempts, 1, "a refusal is final");
    return true;
  });
  assert.equal(await mergerCount(gauge, "gauges"), 3, "a refused write counted nothing");
});

test("a silent connection: reads time out and are retried, a hit is unknown and not retried", async () => {
  const retries = [];
  const tally = createClient({
    baseUrl: need("TALLY_STALLED_URL"),
    timeoutMs: 300,
    retry: { readAttempts: 3, baseDelayMs: 20 },
    onRetry: (e) => retries.push(e.reason),
  });
  await assert.rejects(tally.read(id("stalled")), (e) => {
    assert.equal(e.code, "timeout");
    assert.equal(e.attempts, 3);
    return true;
  });
  assert.deepEqual(retries, ["timeout", "timeout"]);
  retries.length = 0;
  await assert.rejects(tally.hit(id("stalled")), (e) => {
    assert.equal(e.code, "outcome_unknown");
    assert.equal(e.outcomeUnknown, true);
    assert.equal(e.attempts, 1);
    return true;
  });
  assert.deepEqual(retries, [], "an unknown hit is not retried");
});

test("a hit whose answer is lost is reported unknown, and counted exactly once", async () => {
  const tally = createClient({ baseUrl: need("TALLY_DROPPING_URL"), retry: { writeAttempts: 5 } });
  const name = id("lost-answer");
  await assert.rejects(tally.hit(name), (e) => {
    assert.equal(e.code, "outcome_unknown", `${e.code}: ${e.message}`);
    assert.equal(e.attempts, 1);
    return true;
  });
  // It did arrive: the edge counted it once, and nothing sent it again.
  await eventually("the merger counts the lost-answer hit once", async () => (await mergerCount(name)) === 1);
  await new Promise((r) => setTimeout(r, 1000));
  assert.equal(await mergerCount(name), 1);
});

test("a hit that cannot connect is retried until the edge is reachable, and counted once", async () => {
  const never = createClient({ baseUrl: `http://127.0.0.1:${await freePort()}`, retry: { writeAttempts: 3, baseDelayMs: 10 } });
  await assert.rejects(never.hit(id("nowhere")), (e) => {
    assert.equal(e.code, "unreachable");
    assert.equal(e.attempts, 3, "a connection never made is tried again");
    return true;
  });
  const port = await freePort();
  const reasons = [];
  const tally = createClient({
    baseUrl: `http://127.0.0.1:${port}`,
    retry: { writeAttempts: 10, baseDelayMs: 100, maxDelayMs: 300 },
    onRetry: (e) => reasons.push(e.reason),
  });
  const name = id("late-edge");
  const hit = tally.hit(name);
  await new Promise((r) => setTimeout(r, 400));
  const path = await forwarder(port);
  try {
    const result = await hit;
    assert.ok(result.attempts > 1, "the first attempts found no listener");
    assert.ok(reasons.length >= 1 && reasons.every((r) => r === "not_sent"), reasons.join());
    assert.equal(result.count, 1);
  } finally {
    await path.close();
  }
  await eventually("the merger counts it once", async () => (await mergerCount(name)) === 1);
});

test("presence: viewers go up and down live, and a cut socket reconnects and rejoins", async () => {
  const tally = createClient({ baseUrl: EDGE, WebSocket });
  const path = await forwarder();
  const cuttable = createClient({ baseUrl: path.url, WebSocket });
  const name = id("live");
  const a = cuttable.presence(name);
  const b = tally.presence(name);
  try {
    await a.waitFor((s) => s.count === 2);
    await b.waitFor((s) => s.count === 2);
    const first = a.current.session;
    assert.match(first, /^[A-Za-z0-9_-]+$/);
    assert.ok(path.cut() >= 2, "the test cut a's connection");
    await a.waitFor((s) => s.reconnects >= 1 && s.state === "open" && s.session !== first);
    await a.waitFor((s) => s.count === 2, 15_000);
    await b.waitFor((s) => s.count === 2, 15_000);
    // Two leases' time: the sockets renew them by pinging, so nobody drops out.
    const reconnects = a.current.reconnects;
    await new Promise((r) => setTimeout(r, 2 * TTL_MS + 500));
    assert.equal(a.current.count, 2, "still two viewers after two leases");
    assert.equal(b.current.reconnects, 0, "b's socket lived throughout");
    assert.equal(a.current.reconnects, reconnects, "a's socket lived throughout");
    b.close();
    assert.equal(b.current.state, "closed");
    await a.waitFor((s) => s.count === 1, 15_000);
  } finally {
    a.close();
    b.close();
    await path.close();
  }
  await eventually("nobody views after both left", async () => (await tally.readPresence(name)).count === 0);
});

// Last: it spends the client's whole new-id budget of the window.
test("a hit refused for the new-id budget (429 too_many_new_ids) is retried, and counted once", async () => {
  const limit = Number(need("TALLY_NEW_ID_LIMIT"));
  const flood = createClient({ baseUrl: EDGE, retry: { writeAttempts: 1 } });
  const reasons = [];
  const patient = createClient({
    baseUrl: EDGE,
    retry: { writeAttempts: 40, baseDelayMs: 200, maxDelayMs: 1000 },
    onRetry: (e) => reasons.push(e.reason),
  });
  // The limiter's windows are aligned to the clock: a flood may cross one and need a second
  // round; a hit that found a fresh window was not refused, and the round is done again.
  for (let round = 1; round <= 3; round++) {
    let refused;
    for (let i = 0; i < 4 * limit && !refused; i++) {
      try {
        await flood.hit(id(`flood-${round}-${i}`));
      } catch (e) {
        refused = e;
      }
    }
    assert.ok(refused, `no refusal in ${4 * limit} new ids`);
    assert.equal(refused.code, "too_many_new_ids", refused.message);
    assert.equal(refused.status, 429);
    assert.ok(refused.retryAfterMs > 0, "the refusal says when to come back");
    reasons.length = 0;
    const name = id(`patient-${round}`);
    const hit = await patient.hit(name);
    if (hit.attempts === 1) continue;
    assert.ok(reasons.length >= 1 && reasons.every((r) => r === "too_many_new_ids"), reasons.join());
    assert.equal(hit.count, 1);
    await eventually("the merger counts the retried hit once", async () => (await mergerCount(name)) === 1);
    return;
  }
  assert.fail("three rounds and the patient hit was never refused first");
});
