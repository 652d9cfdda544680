// The npm package as a user gets it: installed from its tarball into a fresh project
// (scripts/test-js.sh) and imported by name, `import { GCounter } from "tally-crdt"`.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";

import { CounterState, GCounter, HyperLogLog, PNCounter } from "tally-crdt";

const require = createRequire(import.meta.url);

const A = "6f1c0a4e9d2b47a8b3c5d7e9f1a2b3c4";
const B = "000000000000000000000000000000bb";
const C = "000000000000000000000000000000cc";
const U64_MAX = 2n ** 64n - 1n;

// A small deterministic generator, so a failure replays.
function* amounts(seed) {
  let x = BigInt(seed);
  for (;;) {
    x = (x * 6364136223846793005n + 1442695040888963407n) % 2n ** 64n;
    // Mostly small totals, now and then one near u64::MAX.
    yield x % 7n === 0n ? U64_MAX - (x % 1000n) : x % 10_000n;
  }
}

function randomG(seed) {
  const next = amounts(seed);
  const c = new GCounter();
  for (const r of [A, B, C]) {
    const by = next.next().value;
    if (by % 3n !== 0n) c.increment(r, by);
  }
  return c;
}

function randomPN(seed) {
  const next = amounts(seed);
  const c = new PNCounter();
  for (const r of [A, B, C]) {
    c.increment(r, next.next().value);
    c.decrement(r, next.next().value);
  }
  return c;
}

// `a ⊔ b` as a new counter, leaving both alone.
function joined(Kind, a, b) {
  const out = Kind.fromJSON(a.toJSON());
  out.merge(b);
  return out;
}

for (const [Kind, random] of [
  [GCounter, randomG],
  [PNCounter, randomPN],
]) {
  test(`${Kind.name} merge is commutative, associative and idempotent`, () => {
    for (let seed = 1; seed <= 40; seed++) {
      const [a, b, c] = [random(seed), random(seed + 100), random(seed + 200)];
      assert.equal(joined(Kind, a, b).toJSON(), joined(Kind, b, a).toJSON(), "a⊔b = b⊔a");
      assert.equal(
        joined(Kind, joined(Kind, a, b), c).toJSON(),
        joined(Kind, a, joined(Kind, b, c)).toJSON(),
        "(a⊔b)⊔c = a⊔(b⊔c)",
      );
      assert.equal(joined(Kind, a, a).toJSON(), a.toJSON(), "a⊔a = a");
      const ab = joined(Kind, a, b);
      assert.equal(joined(Kind, ab, b).toJSON(), ab.toJSON(), "merging b again changes nothing");
    }
  });
}

test("a grow-only counter's value never drops under a merge", () => {
  for (let seed = 1; seed <= 40; seed++) {
    const [a, b] = [randomG(seed), randomG(seed + 1)];
    const ab = joined(GCounter, a, b);
    assert.ok(ab.value() >= a.value() && ab.value() >= b.value());
  }
});

test("values above 2^53 stay exact: BigInt, decimal string and JSON text", () => {
  const c = new GCounter();
  assert.equal(c.increment(A, U64_MAX), U64_MAX);
  c.increment(B, U64_MAX);
  const exact = 2n * U64_MAX; // 36893488147419103230, far past Number.MAX_SAFE_INTEGER
  assert.equal(typeof c.value(), "bigint");
  assert.equal(c.value(), exact);
  assert.equal(c.valueString(), "36893488147419103230");
  assert.equal(c.get(A), U64_MAX);

  const json = c.toJSON();
  assert.equal(json, `{"${B}":18446744073709551615,"${A}":18446744073709551615}`);
  const back = GCounter.fromJSON(json);
  assert.equal(back.value(), exact);
  assert.equal(back.toJSON(), json);
  // Why the README says to keep the text away from JSON.parse: it rounds the same total.
  assert.notEqual(BigInt(JSON.parse(json)[A]), U64_MAX);

  const gauge = new PNCounter();
  gauge.increment(A, 2n);
  gauge.decrement(B, U64_MAX);
  assert.equal(gauge.value(), 2n - U64_MAX);
  assert.equal(gauge.valueString(), "-18446744073709551613");
  assert.equal(PNCounter.fromJSON(gauge.toJSON()).value(), 2n - U64_MAX);
});

test("toJSON/fromJSON carry per-replica totals as the sync protocol does", () => {
  // docs/protocol.md's example: replica A's totals for "home" (g) and "viewers" (pn), and
  // another replica's u64::MAX; each total is an exact JSON integer.
  const home = `{"${B}":18446744073709551615,"${A}":715}`;
  const g = GCounter.fromJSON(home);
  assert.equal(g.get(A), 715n);
  assert.equal(g.value(), U64_MAX + 715n);
  assert.equal(g.toJSON(), home, "the text comes back byte for byte");

  const viewers = `{"p":{"${A}":120},"n":{"${A}":97}}`;
  const pn = PNCounter.fromJSON(viewers);
  assert.equal(pn.value(), 23n);
  assert.equal(pn.toJSON(), viewers);

  // A late or repeated sync of older totals changes nothing (max per slot).
  const stale = GCounter.fromJSON(`{"${A}":700}`);
  g.merge(stale);
  g.merge(GCounter.fromJSON(home));
  assert.equal(g.toJSON(), home);
});

test("an empty counter is {} and zero", () => {
  assert.equal(new GCounter().toJSON(), "{}");
  assert.equal(new GCounter().value(), 0n);
  assert.equal(GCounter.fromJSON("{}").valueString(), "0");
  assert.equal(new PNCounter().valueString(), "0");
});

test("invalid JSON throws an Error that names the problem", () => {
  const cases = [
    [GCounter, "{", /EOF/],
    [GCounter, "[1]", /expected a map from replica id to slot total/],
    [GCounter, `{"x":1}`, /32 hex digits/],
    [GCounter, `{"${A}":-1}`, /expected u64/],
    [GCounter, `{"${A}":18446744073709551616}`, /u64/],
    [GCounter, `{"${A}":1,"${A}":2}`, /appears twice/],
    [PNCounter, `{"p":{}}`, /missing field `n`/],
    [PNCounter, `{"p":{},"n":{},"x":{}}`, /unknown field/],
  ];
  for (const [Kind, text, message] of cases) {
    assert.throws(() => Kind.fromJSON(text), (e) => e instanceof Error && message.test(e.message), text);
  }
});

test("refused operations throw and change nothing", () => {
  const c = new GCounter();
  c.increment(A, U64_MAX);
  const before = c.toJSON();
  assert.throws(() => c.increment(A, 1n), { message: /u64::MAX/ });
  assert.throws(() => c.increment("not-a-replica", 1n), { message: /32 hex digits/ });
  assert.throws(() => c.get("nope"), { message: /32 hex digits/ });
  // Amounts are BigInt: a Number is refused like an amount out of range.
  assert.throws(() => c.increment(B, 1), { name: "RangeError", code: "amount_out_of_range" });
  assert.throws(() => c.merge(new PNCounter()), { message: /expected instance of GCounter/ });
  assert.equal(c.toJSON(), before);
});

test(
  "thrown errors carry a stable code (err.code), as the edge and merger bodies do",
  () => {
    const code = (f) => {
      try {
        f();
      } catch (e) {
        return e.code;
      }
      assert.fail("did not throw");
    };
    assert.equal(code(() => GCounter.fromJSON("{")), "malformed_body");
    assert.equal(code(() => new GCounter().increment("nope", 1n)), "invalid_replica_id");
    const full = new GCounter();
    full.increment(A, U64_MAX);
    assert.equal(code(() => full.increment(A, 1n)), "slot_overflow");
    assert.equal(code(() => new HyperLogLog(3)), "hll_invalid_precision");
  },
);

test(
  "an amount outside 0..2^64-1 throws instead of wrapping",
  () => {
    const c = new GCounter();
    assert.throws(() => c.increment(A, -1n), RangeError);
    assert.throws(() => c.increment(A, 2n ** 64n), RangeError);
    assert.equal(c.value(), 0n);
  },
);

test("HyperLogLog estimates, merges and round-trips its wire form", () => {
  const a = new HyperLogLog();
  const b = new HyperLogLog(12);
  assert.equal(a.precision(), 12);
  assert.ok(a.isEmpty());
  for (let i = 0; i < 3000; i++) {
    a.insert(`visitor-${i}`);
    b.insertBytes(new TextEncoder().encode(`visitor-${i + 1000}`));
  }
  assert.equal(a.insert("visitor-0"), false, "a repeat changes nothing");
  assert.equal(a.merge(b), true);
  assert.equal(a.merge(b), false, "merging again changes nothing");
  const estimate = a.estimate();
  assert.equal(typeof estimate, "bigint");
  assert.ok(Math.abs(Number(estimate) - 4000) <= 3 * a.relativeError() * 4000, `${estimate}`);

  const ba = HyperLogLog.fromBytes(b.toBytes());
  ba.merge(HyperLogLog.fromBytes(a.toBytes()));
  assert.deepEqual(ba.toBytes(), a.toBytes(), "merge is commutative");

  const bytes = a.toBytes();
  assert.ok(bytes instanceof Uint8Array);
  assert.deepEqual(HyperLogLog.fromBytes(bytes).toBytes(), bytes);
  const json = a.toJSON();
  assert.match(JSON.parse(json), /^[A-Za-z0-9_-]+$/, "a string of URL-safe base64");
  assert.deepEqual(HyperLogLog.fromJSON(json).toBytes(), bytes);
});

test("HyperLogLog refuses bad precisions, mixed merges and malformed wire forms", () => {
  assert.throws(() => new HyperLogLog(3), { message: /precision 3/ });
  const a = new HyperLogLog();
  a.insert("x");
  assert.throws(() => a.merge(new HyperLogLog(10)), { message: /precisions differ/ });
  assert.equal(a.estimate(), 1n);
  for (const bad of [[], [1, 12], [2, 12, 0], [1, 12, 0, 0, 0]]) {
    assert.throws(() => HyperLogLog.fromBytes(new Uint8Array(bad)), Error, `${bad}`);
  }
  assert.throws(() => HyperLogLog.fromJSON(`"not base64!"`), Error);
});

test("CounterState joins views of one counter in any order, across retirements and resets", () => {
  // The store's history: A and B count, A retires, C is born, the counter is reset.
  const store = new CounterState();
  const views = [];
  const snapshot = () => {
    const v = new CounterState();
    v.join(store);
    views.push(v);
  };
  assert.equal(store.mergeSlot(A, "eu", 5n, 0n), true);
  assert.equal(store.mergeSlot(B, "us", 3n, 1n), true);
  assert.equal(store.mergeSlot(B, "us", 2n, 1n), false, "an older total is no growth");
  snapshot();
  assert.equal(store.retire(A), true);
  assert.equal(store.value(), 7n, "a retirement keeps the count");
  assert.equal(store.mergeSlot(A, "eu", 50n, 0n), false, "a retired replica counts no more");
  snapshot();
  store.mergeSlot(C, "eu", U64_MAX, 0n);
  snapshot();
  // Any order of joins of the views is the latest state; joining twice changes nothing.
  for (const order of [[0, 1, 2], [2, 1, 0], [1, 2, 0, 2, 1]]) {
    const j = new CounterState();
    for (const i of order) j.join(views[i]);
    assert.equal(j.value(), 7n + U64_MAX, String(order));
    assert.ok(j.dominates(views[2]) && views[2].dominates(j), String(order));
  }
  store.reset(1_796_550_000_000, false);
  assert.equal(store.value(), 0n);
  assert.equal(store.epoch(), 1n);
  store.mergeSlot(B, "us", 9n, 1n);
  assert.equal(store.value(), 6n, "only what grew above the cut");
  const old = views[2];
  old.join(store);
  assert.equal(old.valueString(), "6", "a view of the old epoch takes the reset");
  assert.throws(() => store.mergeSlot("nope", "eu", 1n, 0n), (e) => e.code === "invalid_replica_id");
  // An object's carry (its generations 0 and 1 counted 4 and 3) stands for their slots.
  const gen0 = "00000000000000000000000a00000000";
  const gen2 = "00000000000000000000000a00000002";
  const restored = new CounterState();
  restored.mergeSlot(gen0, "eu", 4n, 0n);
  assert.equal(restored.mergeCarry(gen2, "eu", 7n, 0n), true);
  assert.equal(restored.mergeSlot(gen2, "eu", 1n, 0n), true);
  assert.equal(restored.value(), 8n, "generation 0's slot is in the carry, not counted twice");
  assert.equal(restored.mergeCarry(gen2, "eu", 7n, 0n), false, "twice is once");
  assert.throws(() => store.reset(1.5, false), RangeError);
});

test("import and require load one copy: their counters merge with each other", () => {
  const cjs = require("tally-crdt");
  assert.equal(cjs.GCounter, GCounter);
  const mine = new GCounter();
  mine.increment(A, 1n);
  const theirs = new cjs.GCounter();
  theirs.increment(B, 2n);
  mine.merge(theirs);
  assert.equal(mine.value(), 3n);
});

test("the package resolves to node/ in Node and carries the workspace's version", () => {
  assert.match(import.meta.resolve("tally-crdt"), /\/node_modules\/tally-crdt\/node\/tally_crdt\.js$/);
  const pkg = require("tally-crdt/package.json");
  assert.equal(pkg.version, process.env.TALLY_EXPECT_VERSION);
  assert.equal(pkg.license, process.env.TALLY_EXPECT_LICENSE);
});

test("the bundler build loads where .wasm imports are ES modules", () => {
  // Node's --experimental-wasm-modules gives the ESM integration that webpack's
  // asyncWebAssembly and vite-plugin-wasm provide: the bundler/ files run unchanged there.
  const entry = join(dirname(require.resolve("tally-crdt/package.json")), "bundler", "tally_crdt.js");
  const script = `
    import { GCounter, PNCounter, HyperLogLog } from ${JSON.stringify(pathToFileURL(entry).href)};
    const c = GCounter.fromJSON('{"${A}":18446744073709551615}');
    c.increment("${B}", 1n);
    const p = new PNCounter();
    p.decrement("${A}", 5n);
    const h = new HyperLogLog();
    h.insert("x");
    console.log(c.valueString(), String(p.value()), String(h.estimate()));
  `;
  const run = spawnSync(
    process.execPath,
    ["--experimental-wasm-modules", "--no-warnings", "--input-type=module", "-e", script],
    { encoding: "utf8" },
  );
  assert.equal(run.status, 0, run.stderr);
  assert.equal(run.stdout.trim(), "18446744073709551616 -5 1");
});

test("the README's JavaScript examples run as printed", () => {
  const readme = readFileSync(join(dirname(require.resolve("tally-crdt/package.json")), "README.md"), "utf8");
  const blocks = [...readme.matchAll(/^```js\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
  assert.ok(blocks.length >= 2, "the README has its examples");
  // The blocks continue one another, as a reader would type them; the last line checks the
  // values the comments promise.
  const script = `${blocks.join("\n")}
    const got = [views.value(), viewers.value(), visitors.estimate(), text].map(String);
    console.log(JSON.stringify(got));`;
  const run = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
  assert.equal(run.status, 0, run.stderr);
  assert.deepEqual(JSON.parse(run.stdout), [
    "5",
    "-1",
    "2",
    `{"000000000000000000000000000000bb":4,"6f1c0a4e9d2b47a8b3c5d7e9f1a2b3c4":1}`,
  ]);
});
