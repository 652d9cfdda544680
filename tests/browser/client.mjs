// The client's example page (js/tally-client/example/index.html) in a real browser:
// Debian's headless Chromium driven by playwright-core. Run by tests/tests/e2e/client.rs,
// which starts the merger and the edge; this script serves the page and the built package
// from a loopback server of its own (another origin than the edge's: the page's calls are
// cross-origin, as on a real site), drives two visitors' pages and compares what they show
// with what the edge and the merger hold.
//
//   TALLY_EDGE_URL        the edge, http://127.0.0.1:PORT
//   TALLY_MERGER_URL      the merger
//   TALLY_CHROMIUM        the browser binary
//   TALLY_CLIENT_PACKAGE  the built package (scripts/build-client.sh)
//   TALLY_EXAMPLE         the example folder
//   TALLY_SCREENSHOT      where the PNG goes
//
// Each check prints one line; the first failure throws, and the exit code is 1.

import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize } from "node:path";
import { chromium } from "playwright-core";

const edge = need("TALLY_EDGE_URL");
const merger = need("TALLY_MERGER_URL");
const started = Date.now();

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}
function log(line) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s] ${line}`);
}
function check(ok, what, detail = "") {
  if (!ok) throw new Error(`FAILED: ${what}${detail ? `\n  ${detail}` : ""}`);
  log(`ok: ${what}`);
}

// The page at /, the package at /node_modules/tally-client/ (where its import map looks).
const roots = [
  ["/node_modules/tally-client/", need("TALLY_CLIENT_PACKAGE")],
  ["/", need("TALLY_EXAMPLE")],
];
const types = { ".html": "text/html", ".js": "text/javascript", ".json": "application/json" };
const server = createServer(async (req, res) => {
  const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
  const [prefix, dir] = roots.find(([p]) => path.startsWith(p));
  const file = normalize(join(dir, path.slice(prefix.length) || "index.html"));
  if (!file.startsWith(dir)) return res.writeHead(403).end();
  try {
    const body = await readFile(file);
    res.writeHead(200, { "Content-Type": types[extname(file)] ?? "application/octet-stream" }).end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const site = `http://127.0.0.1:${server.address().port}`;

/** Polls `fn` until it returns true, for at most `ms`. */
async function eventually(what, fn, ms = 15000) {
  const until = Date.now() + ms;
  let last;
  while (Date.now() < until) {
    last = await fn();
    if (last === true) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`FAILED: ${what} (last: ${last})`);
}
async function mergerCount(id) {
  const r = await fetch(`${merger}/v1/counters/${id}`, { signal: AbortSignal.timeout(5000) });
  return (await r.json()).count;
}

const pageId = `post-${Date.now().toString(36)}`;
const url = `${site}/?edge=${encodeURIComponent(edge)}&page=${pageId}`;
const browser = await chromium.launch({ executablePath: need("TALLY_CHROMIUM"), headless: true });
const problems = [];
// The pages opened, by visitor, for what they show when a check fails.
const pages = {};
try {
  const open = async () => {
    const context = await browser.newContext({ viewport: { width: 800, height: 520 } });
    const page = await context.newPage();
    page.setDefaultTimeout(15000);
    page.on("request", (r) => {
      if (!r.url().startsWith(site) && !r.url().startsWith(edge.replace(/^http/, "ws")) && !r.url().startsWith(edge)) {
        problems.push(`request to ${r.url()}`);
      }
    });
    const answers = [];
    page.on("response", async (r) => {
      if (!r.url().startsWith(edge)) return;
      const at = ((Date.now() - started) / 1000).toFixed(2);
      const body = await r.text().catch(() => "(no body)");
      answers.push(`[${at} s] ${r.request().method()} ${r.url().slice(edge.length)} ${r.status()}`
        + ` cache=${r.headers()["tally-cache"] ?? "-"} ${body.slice(0, 160)}`);
    });
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("console", (m) => m.type() === "error" && problems.push(`console: ${m.text()}`));
    await page.goto(url);
    return { context, page, answers };
  };
  const text = (page, selector) => page.textContent(selector);

  // 1. A visitor: the likes read 0, the badge counts this viewer.
  const first = (pages.first = await open());
  await first.page.waitForFunction(() => document.getElementById("likes").textContent === "0");
  check(true, "the like count reads 0 for a new page");
  await first.page.waitForFunction(() => document.getElementById("viewers").textContent === "1");
  check(await first.page.getAttribute("#viewers-badge", "data-state") === "open", "the badge shows 1 viewer, live");

  // 2. Three likes: each click answered, the merger counts exactly 3.
  for (let i = 1; i <= 3; i++) {
    await first.page.click("#like");
    await first.page.waitForFunction(() => !document.getElementById("like").disabled
      && document.getElementById("like").getAttribute("aria-pressed") === "true");
  }
  const shown = Number(await text(first.page, "#likes"));
  check(shown >= 1 && shown <= 3 && (await text(first.page, "#status")) === "", `three likes answered (shows ${shown})`);
  await eventually("the merger counts 3 likes", async () => (await mergerCount(`${pageId}:likes`)) === 3);
  check(true, "the merger counts exactly 3 likes");
  const token = await first.page.evaluate(() => localStorage.getItem("tally-session"));
  check(/^1\./.test(token ?? ""), "the session token is kept in localStorage");

  // 3. A second visitor: both badges show 2; the likes read 3.
  const second = (pages.second = await open());
  await second.page.waitForFunction(() => document.getElementById("likes").textContent === "3", null, { timeout: 15000 });
  check(true, "a second visitor reads 3 likes");
  await first.page.waitForFunction(() => document.getElementById("viewers").textContent === "2");
  await second.page.waitForFunction(() => document.getElementById("viewers").textContent === "2");
  check(true, "both badges show 2 viewers");

  // 4. After a reload the first visitor still reads its likes (the token from localStorage).
  await first.page.reload();
  await first.page.waitForFunction(() => document.getElementById("likes").textContent === "3");
  check(await first.page.evaluate(() => localStorage.getItem("tally-session")) !== null, "after a reload the likes read 3");

  // 5. The second visitor leaves: the first badge goes back to 1.
  await second.context.close();
  await first.page.waitForFunction(() => document.getElementById("viewers").textContent === "1");
  check(true, "a visitor who leaves is gone from the badge");

  await first.page.screenshot({ path: need("TALLY_SCREENSHOT") });
  check(problems.length === 0, "no page errors, console errors or foreign requests", problems.join("\n  "));
} catch (e) {
  // What the pages said before the failure, to tell a page error from a slow edge.
  console.error(`problems so far:\n  ${problems.join("\n  ") || "(none)"}`);
  for (const [name, opened] of Object.entries(pages)) {
    const shows = await opened.page.evaluate(() => ["likes", "viewers", "status"]
      .map((id) => `#${id} "${document.getElementById(id)?.textContent ?? ""}"`).join(", "))
      .catch((err) => `(not readable: ${err.message})`);
    console.error(`the ${name} visitor's page shows ${shows}; the edge answered it:`);
    for (const line of opened.answers) console.error(`  ${line}`);
  }
  const likes = `${pageId}:likes`;
  const now = await fetch(`${edge}/${likes}/counter`, { signal: AbortSignal.timeout(5000) })
    .then(async (r) => `${r.status} ${JSON.stringify(Object.fromEntries(r.headers))} ${await r.text()}`)
    .catch((err) => `(no answer: ${err.message})`);
  console.error(`the edge answers ${likes} now: ${now}`);
  console.error(`the merger counts ${await mergerCount(likes).catch((err) => `(no answer: ${err.message})`)}`);
  throw e;
} finally {
  await browser.close();
  server.close();
}
