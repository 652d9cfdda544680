// The package as a user installs it: its two entries resolve by name, the browser entry has
// no write-key code and reaches the server entry through no import.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const pkg = dirname(createRequire(import.meta.url).resolve("tally-client/package.json"));

test("the browser entry exports the client and no write-key client", async () => {
  const browser = await import("tally-client");
  assert.equal(typeof browser.createClient, "function");
  assert.equal(typeof browser.TallyError, "function");
  assert.equal(browser.createServerClient, undefined);
  assert.equal(browser.TallyServerClient, undefined);
  const client = browser.createClient({ baseUrl: "http://127.0.0.1:9" });
  assert.equal(client.gauge, undefined, "the browser client cannot write gauges");
  assert.equal(client.add, undefined, "the browser client cannot add deltas");
});

test("the server entry exports the write-key client beside the browser client", async () => {
  const server = await import("tally-client/server");
  assert.equal(typeof server.createServerClient, "function");
  assert.equal(typeof server.createClient, "function");
  assert.throws(() => server.createServerClient({ baseUrl: "http://127.0.0.1:9", writeKey: "" }), TypeError);
});

test("no module the browser entry imports is, or mentions, the server entry", () => {
  const seen = new Set();
  const walk = (file) => {
    if (seen.has(file)) return;
    seen.add(file);
    const text = readFileSync(file, "utf8");
    assert.doesNotMatch(text, /writeKey|server\.js/, `${file} mentions the server entry`);
    for (const m of text.matchAll(/from\s*"(\.[^"]+)"/g)) walk(join(dirname(file), m[1]));
  };
  walk(join(pkg, "dist/index.js"));
  assert.ok(seen.size >= 5, `the import graph was followed (${[...seen].join(", ")})`);
});

test("a client on a platform without WebSocket says how to pass one", async () => {
  const { createClient } = await import("tally-client");
  const client = createClient({ baseUrl: "http://127.0.0.1:9" });
  const saved = globalThis.WebSocket;
  try {
    // Node 20 without --experimental-websocket: no global WebSocket.
    Object.defineProperty(globalThis, "WebSocket", { value: undefined, configurable: true, writable: true });
    assert.throws(() => client.presence("home"), /pass one as the WebSocket option/);
  } finally {
    Object.defineProperty(globalThis, "WebSocket", { value: saved, configurable: true, writable: true });
  }
});
