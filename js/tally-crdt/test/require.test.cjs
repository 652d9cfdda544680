// The npm package from CommonJS, as a user gets it: `require("tally-crdt")` after installing
// its tarball (scripts/test-js.sh). The full suite is counters.test.mjs; this checks that
// `require` finds the same API and that it works.
const assert = require("node:assert/strict");
const { test } = require("node:test");

const { GCounter, PNCounter, HyperLogLog } = require("tally-crdt");

const A = "6f1c0a4e9d2b47a8b3c5d7e9f1a2b3c4";
const B = "000000000000000000000000000000bb";

test("require gives the classes, which count, merge and round-trip exactly", () => {
  const a = new GCounter();
  const b = new GCounter();
  a.increment(A, 2n ** 64n - 1n);
  b.increment(B, 1n);
  a.merge(b);
  b.merge(a);
  assert.equal(a.toJSON(), b.toJSON());
  assert.equal(a.valueString(), "18446744073709551616");
  assert.equal(GCounter.fromJSON(a.toJSON()).value(), 2n ** 64n);

  const p = new PNCounter();
  p.decrement(A, 3n);
  assert.equal(p.value(), -3n);
  assert.equal(typeof HyperLogLog, "function");
});

test("require resolves to node/ and bad JSON throws an Error", () => {
  assert.match(require.resolve("tally-crdt"), /\/node_modules\/tally-crdt\/node\/tally_crdt\.js$/);
  assert.throws(() => PNCounter.fromJSON("{"), Error);
});
