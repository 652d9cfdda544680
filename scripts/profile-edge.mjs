// Profiles the edge's hit path under `wrangler dev` (the real workerd runtime), side by side
// with the JavaScript Durable Object counter (bench/js-counter), with V8's CPU profiler over
// the DevTools protocol. A diagnostic tool, not part of the tests or the benchmarks.
//
// For each worker (tally with PARTITIONS=1 SPREAD=1, the P5 shape; then the JS counter) it:
//   1. starts wrangler's dev server (as tests/wrangler-dev.mjs does: clients talk to the
//      runtime itself, not wrangler's ProxyWorker) with workerd's inspector on a loopback port,
//      and keeps wrangler's own InspectorProxyWorker detached from it (it would enable
//      `Network.*` events and relay every one to Node: the cost tests/wrangler-dev.mjs avoids);
//   2. warms up (one PUT with the write key, then a few seconds of wrk), then measures hits/s
//      with wrk (bench/wrk/put.lua, no headers: public hits, as P5 sends them);
//   3. attaches to each user isolate's inspector, starts the sampling profiler, runs wrk again,
//      stops it, writes the .cpuprofile and a summary (self time by function, by category:
//      idle / program / GC / Wasm / JS glue / other JS / natives; and by entry frame);
//   4. measures hits/s once more with the profiler detached.
//
// Usage (from the repository root, after `bash scripts/bootstrap.sh` and a release merger):
//   TALLY_EDGE_NAMES=1 bash scripts/build-edge.sh --out-dir ../target/prof-worker
//   node scripts/profile-edge.mjs --worker-build target/prof-worker \
//     --merger target/release/tally-merger [--seconds 10] [--interval-us 100] \
//     [--connections 1] [--out DIR] [--only tally|js] [--top 30] [--keep]
//   node scripts/profile-edge.mjs --summarize FILE.cpuprofile [--hits N] [--bundle DIR] [--top 30]
//   --no-inspector: hits/s and workerd CPU per hit only, inspector off (as the benchmark runs).
//   --targets REGEX: the inspector targets to profile (default ^core:user:, the worker's
//   isolate, which holds its Durable Objects too; core:entry is miniflare's entry worker).
// Reading the summary: V8 records a sample only while the isolate is entered, so samples x
// the sampler's tick / hits is the time per hit spent in the isolate; workerd's CPU per hit
// (from /proc, printed with each wrk run) minus that is what workerd spent outside it. Compare
// shares within one profile: absolute times move with the machine's load.
// TALLY_EDGE_NAMES=1 keeps the Wasm `name` section, so Rust functions are named in the profile.
// Everything listens on 127.0.0.1 only. Prints its report on stdout; the profiles go to --out
// (default: a temp dir, printed).

import { spawn, execFile } from "node:child_process";
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(path.join(root, "package.json"));
const WebSocket = require("ws");

// The tests' secrets (tests/src/lib.rs).
const TOKEN = "e2e-sync-token-0123456789";
const WRITE_KEY = "e2e-write-key-0123456789";
const UNIQUE_SALT = "e2e-unique-salt-0123456789";
const SESSION_KEY = "e2e-session-key-0123456789";

const opts = parseArgs(process.argv.slice(2));

if (opts.summarize) {
  const profile = JSON.parse(await readFile(opts.summarize, "utf8"));
  const bundle = opts.bundle ?? path.join(path.dirname(opts.summarize), `bundle-${path.basename(opts.summarize).split("-")[0]}`);
  console.log(summarize(profile, opts.top, await readSources(bundle), opts.hits ?? 0).text);
  process.exit(0);
}

const out = opts.out ?? (await mkdtemp(path.join(tmpdir(), "tally-profile-")));
await mkdir(out, { recursive: true });
const work = await mkdtemp(path.join(tmpdir(), "tally-profile-work-"));
const children = [];
let stopping = false;
process.on("SIGINT", () => cleanup(130));
process.on("SIGTERM", () => cleanup(143));

try {
  const repoConfig = await readFile(path.join(root, "wrangler.toml"), "utf8");
  const merger = await startMerger(path.join(work, "merger"));
  log(`merger on ${merger.url}`);
  const results = [];
  const vars = (partitions, spread) => ({
    MERGER_URL: merger.url,
    SYNC_TOKEN: TOKEN,
    PARTITIONS: String(partitions),
    SPREAD: String(spread),
    WRITE_KEY,
    UNIQUE_SALT,
    SESSION_KEY,
    // The benchmark's settings (bench/src/edge/mod.rs, `options`): the deployed defaults.
    SYNC_INTERVAL_MS: varOf(repoConfig, "SYNC_INTERVAL_MS") ?? "2000",
    ANTI_ENTROPY_MS: varOf(repoConfig, "ANTI_ENTROPY_MS") ?? "3600000",
    MAX_BACKOFF_MS: "60000",
    SYNC_TIMEOUT_MS: "5000",
    ALLOW_REGION_OVERRIDE: "true",
    ...opts.vars,
  });
  if (opts.only !== "js") {
    const dir = path.join(work, "tally");
    await cp(path.resolve(opts.workerBuild), path.join(dir, "build"), { recursive: true });
    const config = path.join(dir, "wrangler.toml");
    await writeFile(config, withoutBuild(repoConfig, "build/worker/shim.mjs"));
    results.push(await profileWorker("tally", config, vars(1, 1), path.join(work, "do-tally")));
  }
  if (opts.only !== "tally") {
    const dir = path.join(work, "js");
    await cp(path.join(root, "bench/js-counter"), dir, { recursive: true });
    results.push(
      await profileWorker("js", path.join(dir, "wrangler.toml"), {}, path.join(work, "do-js")),
    );
  }
  console.log(`\n# Summary (wrk -t1 -c${opts.connections} -d${opts.seconds}s, bench/wrk/put.lua)`);
  for (const r of results) {
    console.log(
      `${r.label}: ${r.rps.before.toFixed(0)} hits/s before (workerd CPU ${r.cpu.before.toFixed(0)} us/hit), ${r.rps.profiled.toFixed(0)} profiled (${opts.intervalUs} us sampling; ${r.cpu.profiled.toFixed(0)} us/hit), ${r.rps.after.toFixed(0)} after (${r.cpu.after.toFixed(0)} us/hit); profiles: ${r.files.join(", ")}`,
    );
  }
  if (results.length === 2) {
    const [t, j] = results;
    const us = (rps) => 1e6 / rps;
    console.log(
      `per hit: tally ${us(t.rps.before).toFixed(0)} us, js ${us(j.rps.before).toFixed(0)} us (difference ${(us(t.rps.before) - us(j.rps.before)).toFixed(0)} us); tally/js ${(t.rps.before / j.rps.before).toFixed(2)}`,
    );
  }
  console.log(`profiles and summaries in ${out}`);
  await cleanup(0);
} catch (e) {
  console.error(`profile-edge: ${e?.stack ?? e}`);
  await cleanup(1);
}

// ---------------------------------------------------------------------------------------------

async function profileWorker(label, config, vars, persist) {
  log(`${label}: starting wrangler dev (${config})`);
  const dev = await startDev(config, vars, persist);
  try {
    log(`${label}: runtime ${dev.url}, inspector ${dev.inspector}`);
    const id = `prof-${label}`;
    const url = `${dev.url}/${id}/counter`;
    const first = await fetch(url, {
      method: "PUT",
      headers: { Authorization: `Bearer ${WRITE_KEY}` },
    });
    const firstBody = await first.text();
    if (!first.ok) throw new Error(`PUT ${url}: ${first.status} ${firstBody}`);
    log(`${label}: first PUT answered ${first.status} ${firstBody.slice(0, 200)}`);
    await wrk(url, opts.warmup);
    const before = await wrk(url, opts.seconds);
    log(`${label}: ${before.rps.toFixed(0)} hits/s (no profiler)`);
    if (opts.noInspector) {
      const again = await wrk(url, opts.seconds);
      return {
        label,
        rps: { before: before.rps, profiled: NaN, after: again.rps },
        cpu: { before: before.workerdUsPerHit, profiled: NaN, after: again.workerdUsPerHit },
        files: [],
      };
    }

    const targets = await (await fetch(`http://${dev.inspectorHost}/json`)).json();
    log(`${label}: inspector targets: ${targets.map((t) => t.id).join(", ")}`);
    const users = targets.filter((t) => opts.targets.test(t.id));
    const sessions = [];
    for (const t of users) {
      const ws = await cdp(`ws://${dev.inspectorHost}/${t.id}`);
      await ws.send("Profiler.enable");
      await ws.send("Profiler.setSamplingInterval", { interval: opts.intervalUs });
      sessions.push({ id: t.id, ws });
    }
    for (const s of sessions) await s.ws.send("Profiler.start");
    const profiled = await wrk(url, opts.seconds);
    // wrangler's bundle of the worker (line:column of the JS frames point into it).
    const bundle = path.join(out, `bundle-${label}`);
    await cp(path.join(path.dirname(config), ".wrangler/tmp"), bundle, { recursive: true }).catch(() => {});
    await cp(path.join(path.dirname(config), "index.js"), path.join(bundle, "src/index.js")).catch(() => {});
    const sources = await readSources(bundle);
    const files = [];
    for (const s of sessions) {
      const { profile } = await s.ws.send("Profiler.stop");
      await s.ws.send("Profiler.disable");
      s.ws.close();
      const name = `${label}-${s.id.replace(/[^A-Za-z0-9_-]+/g, "_")}`;
      const file = path.join(out, `${name}.cpuprofile`);
      await writeFile(file, JSON.stringify(profile));
      const summary = summarize(profile, opts.top, sources, profiled.requests);
      await writeFile(path.join(out, `${name}.txt`), summary.text);
      files.push(file);
      console.log(`\n# ${label}, isolate ${s.id}: ${profiled.rps.toFixed(0)} hits/s profiled, ${profiled.requests} hits`);
      console.log(summary.text);
    }
    await sleep(1000);
    const after = await wrk(url, opts.seconds);
    log(`${label}: ${after.rps.toFixed(0)} hits/s (profiler detached)`);
    return {
      label,
      rps: { before: before.rps, profiled: profiled.rps, after: after.rps },
      cpu: { before: before.workerdUsPerHit, profiled: profiled.workerdUsPerHit, after: after.workerdUsPerHit },
      files,
    };
  } finally {
    await dev.stop();
  }
}

// Self time by function and by category, inclusive time by entry frame, by async task and
// by the innermost tally frame. `sources`: bundle file name -> its lines, to name the
// anonymous functions of wrangler's bundle (`__name(function(...){...}, "__wbg_...")`).
function summarize(profile, top, sources = new Map(), hits = 0) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const { samples, timeDeltas } = profile;
  const total = samples.length;
  const totalMs = (profile.endTime - profile.startTime) / 1000;
  const special = ["(idle)", "(program)", "(garbage collector)", "(root)"];
  const category = (f) => {
    if (special.includes(f.functionName)) return f.functionName;
    if (f.url.startsWith("wasm://")) return /^(js-to-wasm|wasm-to-js)/.test(f.functionName) ? "wasm<->js trampolines" : "wasm";
    if (f.url) return `JS (${path.basename(f.url)})`;
    if (f.functionName === "wasm-to-js") return "wasm<->js trampolines";
    return "native / builtin (workerd, V8)";
  };
  const jsName = (f) => {
    if (f.functionName) return f.functionName;
    const lines = sources.get(path.basename(f.url));
    const line = lines?.[f.lineNumber]?.slice(0, f.columnNumber);
    const m = line?.match(/([\w$]+)\s*[:=]\s*(?:\/\*[^*]*\*\/\s*)?(?:__name\()?\s*(?:async\s*)?[\w$]*$/);
    return m ? `${m[1]}` : "(anonymous)";
  };
  const key = (f) => {
    if (!f.url) return f.functionName || "(anonymous)";
    if (f.url.startsWith("wasm://")) return f.functionName;
    return `${jsName(f)} ${path.basename(f.url)}:${f.lineNumber + 1}`;
  };
  const chainOf = new Map();
  const chain = (id) => {
    let c = chainOf.get(id);
    if (c) return c;
    c = [];
    for (let at = id; at !== undefined; at = parent.get(at)) {
      const f = byId.get(at).callFrame;
      if (f.functionName !== "(root)") c.push(f);
    }
    chainOf.set(id, c);
    return c;
  };
  const add = (map, k, dt) => {
    const e = map.get(k) ?? { n: 0, ms: 0 };
    e.n += 1;
    e.ms += dt;
    map.set(k, e);
  };
  const fns = new Map(), cats = new Map(), entries = new Map(), tasks = new Map(),
    owners = new Map(), crates = new Map(), taskFrames = new Map(), rustOwners = new Map();
  let busyMs = 0;
  for (let i = 0; i < total; i++) {
    // The time until the next sample is this sample's.
    const dt = (i + 1 < timeDeltas.length ? timeDeltas[i + 1] : 0) / 1000;
    const c = chain(samples[i]);
    const leaf = c[0] ?? byId.get(samples[i]).callFrame;
    const cat = category(leaf);
    add(fns, `[${cat}] ${key(leaf)}`, dt);
    add(cats, cat, dt);
    if (cat !== "(idle)") busyMs += dt;
    add(entries, c.length ? key(c[c.length - 1]) : "(root)", dt);
    // The async task: the outermost future_to_promise closure (one per kind of future: the
    // Worker's fetch, the object's fetch, its alarm...), else the outermost JS frame.
    const task = [...c].reverse().find((f) => /future_to_promise::\{\{closure\}\}::\{\{closure\}\}/.test(f.functionName));
    const taskKey = task ? task.functionName.replace(/^.*::(h[0-9a-f]+)$/, "future $1") : "no Rust future: " + (c.length ? key(c[c.length - 1]) : leaf.functionName);
    add(tasks, taskKey, dt);
    // The innermost tally frame (what tally code the time is spent for, callees included).
    const owner = c.find((f) => /^tally_(edge|shared)::/.test(f.functionName) && !/\{\{closure\}\}$/.test(f.functionName.replace(/::h[0-9a-f]+$/, "")))
      ?? c.find((f) => /^tally_(edge|shared)::/.test(f.functionName));
    const ownerKey = owner ? owner.functionName.replace(/::h[0-9a-f]{16}$/, "") : `(no tally frame) ${cat}`;
    add(owners, ownerKey, dt);
    if (task) {
      const tf = taskFrames.get(taskKey) ?? new Map();
      if (owner) add(tf, ownerKey, dt);
      taskFrames.set(taskKey, tf);
    }
    // The innermost Rust frame outside the runtime plumbing (who asked for the glue/native).
    const plumbing = /^(core|alloc|dlmalloc|js_sys|wasm_bindgen|__rustc|std|hashbrown|js-to-wasm|wasm-to-js|__wbindgen|__externref)/;
    const rust = c.find((f) => f.url.startsWith("wasm://") && !plumbing.test(f.functionName.replace(/^(<|&mut |&)+/, "")));
    add(rustOwners, rust ? rust.functionName.replace(/::h[0-9a-f]{16}$/, "") : `(no Rust frame) ${cat}`, dt);
    if (leaf.url.startsWith("wasm://") && !/^(js-to-wasm|wasm-to-js)/.test(leaf.functionName)) {
      const name = leaf.functionName.replace(/^(<|&mut |&)+/, "");
      const crate = name.match(/^([A-Za-z_][\w]*)/)?.[1] ?? name;
      add(crates, crate, dt);
    }
  }
  const busyN = total - (cats.get("(idle)")?.n ?? 0);
  // V8 records a sample only while the isolate is entered, at the sampler's tick: the
  // tick (the commonest gap between samples) times the samples is the time spent in the
  // isolate; the gaps add the time outside it (other isolates, workerd's own I/O and
  // plumbing, the SQLite commit, descheduling), so the "ms" column overstates whatever
  // runs last before the isolate is left.
  const buckets = new Map();
  for (const d of timeDeltas.slice(1)) {
    const b = Math.round(d / 10) * 10;
    if (b > 0) buckets.set(b, (buckets.get(b) ?? 0) + 1);
  }
  const tick = [...buckets].sort((a, b) => b[1] - a[1])[0]?.[0] ?? 100;
  const perHit = (n) => (hits ? ((n * tick) / hits).toFixed(1).padStart(6) + " us/hit" : "");
  const pct = (n, of = total) => ((100 * n) / of).toFixed(1).padStart(5);
  const table = (title, map, n = top, of = total) => {
    lines.push(`\n## ${title}`);
    for (const [k, e] of [...map].sort((a, b) => b[1].n - a[1].n).slice(0, n)) {
      lines.push(`${pct(e.n, of)}%  ${perHit(e.n)}  ${e.ms.toFixed(1).padStart(8)} ms  ${k}`);
    }
  };
  const lines = [];
  lines.push(`${total} samples over ${totalMs.toFixed(0)} ms (mean interval ${((totalMs * 1000) / total).toFixed(0)} us, commonest ${tick} us); not idle: ${busyN} samples, ${busyMs.toFixed(0)} ms`);
  if (hits) lines.push(`${hits} hits: ${(total / hits).toFixed(2)} samples per hit, so about ${((total * tick) / hits).toFixed(0)} us per hit in the isolate (${((busyN * tick) / hits).toFixed(0)} not idle)`);
  lines.push(`(% = share of samples; us/hit = samples x tick / hits; ms = time to the next sample, summed)`);
  table("by category (self)", cats);
  table("by category, share of the non-idle samples", new Map([...cats].filter(([c]) => c !== "(idle)")), top, busyN);
  table(`top ${top} functions by self time`, fns);
  table("self time of Wasm functions by crate (first path segment)", crates);
  table("by async task (outermost future_to_promise closure, or outermost JS frame)", tasks);
  for (const [t, tf] of [...taskFrames].sort((a, b) => (tasks.get(b[0]).n - tasks.get(a[0]).n)).slice(0, 6)) {
    lines.push(`  ${t}: ${[...tf].sort((a, b) => b[1].n - a[1].n).slice(0, 5).map(([k, e]) => `${k.replace(/^tally_edge::/, "")} (${e.n})`).join("; ")}`);
  }
  table("inclusive time by innermost tally frame (its callees: glue, natives, crates)", owners);
  table("inclusive time by innermost Rust frame outside core/alloc/js_sys/wasm_bindgen (callees included)", rustOwners);
  table("inclusive time by entry frame (outermost frame under (root))", entries, 15);
  return { text: lines.join("\n"), samples: total, busyMs };
}

async function readSources(dir) {
  const sources = new Map();
  const { readdir } = await import("node:fs/promises");
  const walk = async (d) => {
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (/\.(m?js)$/.test(e.name)) sources.set(e.name, (await readFile(p, "utf8")).split("\n"));
    }
  };
  await walk(dir);
  return sources;
}

// A minimal DevTools protocol client: send(method, params) -> result.
function cdp(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    let next = 1;
    const waiting = new Map();
    ws.on("message", (data) => {
      const msg = JSON.parse(data.toString());
      if (msg.id !== undefined && waiting.has(msg.id)) {
        const { ok, fail } = waiting.get(msg.id);
        waiting.delete(msg.id);
        msg.error ? fail(new Error(`${JSON.stringify(msg.error)}`)) : ok(msg.result);
      }
    });
    ws.on("error", reject);
    ws.on("open", () =>
      resolve({
        send(method, params = {}) {
          const id = next++;
          ws.send(JSON.stringify({ id, method, params }));
          return new Promise((ok, fail) => waiting.set(id, { ok, fail }));
        },
        close: () => ws.close(),
      }),
    );
  });
}

// wrangler's dev server in this process (its DevEnv), inspector on, clients served by the
// runtime; returns { url, inspector, inspectorHost, stop }.
async function startDev(config, vars, persist) {
  process.env.WRANGLER_LOG ??= "warn";
  process.env.WRANGLER_SEND_METRICS = "false";
  process.env.CLOUDFLARE_CF_FETCH_ENABLED ??= "false";
  process.env.WRANGLER_LOG_PATH ??= path.join(work, "wrangler-logs");
  const { unstable_DevEnv: DevEnv } = await import(require.resolve("wrangler"));
  const devEnv = new DevEnv();
  // Keep wrangler's InspectorProxyWorker off the runtime's inspector: it would enable
  // `Network.*` and relay each event to Node (tests/wrangler-dev.mjs: more CPU than the worker).
  if (!opts.noInspector) devEnv.proxy.sendMessageToInspectorProxyWorker = async () => {};
  const ready = new Promise((resolve) => {
    const onReloadComplete = devEnv.proxy.onReloadComplete.bind(devEnv.proxy);
    devEnv.proxy.onReloadComplete = (event) => {
      const { userWorkerUrl: u, userWorkerInspectorUrl: i } = event.proxyData;
      resolve({ url: `${u.protocol}//${u.hostname}:${u.port}`, inspector: i });
      return onReloadComplete(event);
    };
  });
  const bindings = Object.fromEntries(
    Object.entries(vars).map(([k, v]) => [k, { type: "plain_text", value: v }]),
  );
  const worker = await devEnv.startWorker({
    config,
    bindings,
    dev: {
      inspector: opts.noInspector ? false : { hostname: "127.0.0.1", port: 0 },
      remote: false,
      watch: false,
      server: { hostname: "127.0.0.1", port: 0 },
      persist,
      logLevel: "warn",
    },
  });
  await worker.ready;
  const { url, inspector } = await ready;
  if (opts.noInspector) return { url, inspector: "(off)", stop: () => worker.dispose().catch(() => {}) };
  if (!inspector) throw new Error("the runtime reported no inspector address");
  const host = inspector.hostname === "localhost" ? "127.0.0.1" : inspector.hostname;
  if (!["127.0.0.1", "::1", "[::1]"].includes(host)) throw new Error(`inspector not on loopback: ${host}`);
  const inspectorHost = `${host}:${inspector.port}`;
  return {
    url,
    inspector: `ws://${inspectorHost}`,
    inspectorHost,
    stop: () => worker.dispose().catch(() => {}),
  };
}

async function startMerger(dir) {
  await mkdir(dir, { recursive: true });
  const child = spawn(
    path.resolve(opts.merger),
    [
      "--listen", "127.0.0.1:0",
      "--database-url", `sqlite://${path.join(dir, "tally.db")}`,
      "--sync-token", TOKEN,
      "--log", "warn",
      "--durability", "full",
    ],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  children.push(child);
  const url = await new Promise((resolve, reject) => {
    let buf = "";
    child.stdout.on("data", (d) => {
      buf += d;
      const m = buf.match(/listening on (\S+)/);
      if (m) resolve(m[1]);
    });
    child.on("exit", (code) => reject(new Error(`the merger exited (${code})`)));
  });
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(`${url}/readyz`)).ok) return { url };
    } catch {}
    await sleep(100);
  }
  throw new Error("the merger did not get ready");
}

// CPU time (ms) of every workerd process under this one, by thread name, from /proc.
async function workerdCpu() {
  const out = new Map();
  const { readdir } = await import("node:fs/promises");
  const hz = 100; // USER_HZ on Linux
  for (const pid of await readdir("/proc").catch(() => [])) {
    if (!/^\d+$/.test(pid)) continue;
    let comm;
    try { comm = (await readFile(`/proc/${pid}/comm`, "utf8")).trim(); } catch { continue; }
    if (comm !== "workerd") continue;
    // Only ours: an ancestor is this process.
    let at = pid, ours = false;
    for (let i = 0; i < 10 && at && at !== "1"; i++) {
      if (Number(at) === process.pid) { ours = true; break; }
      try { at = (await readFile(`/proc/${at}/stat`, "utf8")).split(") ")[1].split(" ")[1]; } catch { break; }
    }
    if (!ours) continue;
    for (const tid of await readdir(`/proc/${pid}/task`).catch(() => [])) {
      try {
        const stat = await readFile(`/proc/${pid}/task/${tid}/stat`, "utf8");
        const name = (await readFile(`/proc/${pid}/task/${tid}/comm`, "utf8")).trim();
        const f = stat.split(") ")[1].split(" ");
        const ms = ((Number(f[11]) + Number(f[12])) * 1000) / hz;
        out.set(`${pid}/${tid} ${name}`, ms);
      } catch {}
    }
  }
  return out;
}

function cpuDiff(before, after) {
  const threads = [];
  let total = 0;
  for (const [k, v] of after) {
    const d = v - (before.get(k) ?? 0);
    total += d;
    if (d > 0) threads.push([k, d]);
  }
  threads.sort((a, b) => b[1] - a[1]);
  return { total, threads };
}

async function wrk(url, seconds) {
  const cpuBefore = await workerdCpu();
  const nodeBefore = process.cpuUsage();
  const result = await runWrk(url, seconds);
  const cpu = cpuDiff(cpuBefore, await workerdCpu());
  const node = process.cpuUsage(nodeBefore);
  result.workerdMs = cpu.total;
  result.workerdUsPerHit = (cpu.total * 1000) / result.requests;
  result.nodeUsPerHit = (node.user + node.system) / result.requests;
  log(`  workerd CPU ${cpu.total.toFixed(0)} ms = ${result.workerdUsPerHit.toFixed(0)} us/hit (threads: ${cpu.threads.slice(0, 4).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", ")}); this node process ${result.nodeUsPerHit.toFixed(0)} us/hit`);
  return result;
}

function runWrk(url, seconds) {
  const args = [
    "-t1", `-c${opts.connections}`, `-d${seconds}s`, "--timeout", "30s", "--latency",
    "-s", path.join(root, "bench/wrk/put.lua"), url,
  ];
  return new Promise((resolve, reject) => {
    execFile("wrk", args, (err, stdout, stderr) => {
      if (err) return reject(new Error(`wrk: ${err.message} ${stderr}`));
      const rps = Number(stdout.match(/Requests\/sec:\s+([\d.]+)/)?.[1]);
      const requests = Number(stdout.match(/(\d+) requests in/)?.[1]);
      const non2xx = Number(stdout.match(/Non-2xx or 3xx responses: (\d+)/)?.[1] ?? 0);
      const p50 = stdout.match(/50%\s+(\S+)/)?.[1];
      const p99 = stdout.match(/99%\s+(\S+)/)?.[1];
      if (non2xx) log(`wrk: ${non2xx} non-2xx answers`);
      log(`wrk ${seconds}s: ${rps} req/s, ${requests} requests, p50 ${p50}, p99 ${p99}`);
      resolve({ rps, requests, non2xx, p50, p99 });
    });
  });
}

// The repository's wrangler.toml without its [build] step, `main` pointing at the copy
// (tests/src/lib.rs, `without_build`).
function withoutBuild(config, main) {
  let inBuild = false;
  const out = [];
  for (const line of config.split("\n")) {
    const t = line.trim();
    if (t.startsWith("[")) inBuild = t === "[build]";
    if (inBuild) continue;
    out.push(t.startsWith("main ") || t.startsWith("main=") ? `main = "${main}"` : line);
  }
  return out.join("\n");
}

function varOf(config, name) {
  let inVars = false;
  for (const line of config.split("\n")) {
    const t = line.trim();
    if (t.startsWith("[")) inVars = t === "[vars]";
    else if (inVars && t.startsWith(`${name} `)) return t.split("=")[1].trim().replace(/"/g, "");
  }
  return undefined;
}

function parseArgs(args) {
  const o = {
    seconds: 10, warmup: 3, intervalUs: 100, connections: 1, top: 30, vars: {}, only: undefined,
    targets: /^core:user:/,
  };
  for (let i = 0; i < args.length; i++) {
    const [flag, value] = [args[i], args[i + 1]];
    const num = () => { i++; return Number(value); };
    switch (flag) {
      case "--worker-build": o.workerBuild = value; i++; break;
      case "--merger": o.merger = value; i++; break;
      case "--seconds": o.seconds = num(); break;
      case "--warmup": o.warmup = num(); break;
      case "--interval-us": o.intervalUs = num(); break;
      case "--connections": o.connections = num(); break;
      case "--top": o.top = num(); break;
      case "--out": o.out = value; i++; break;
      case "--only": o.only = value; i++; break;
      case "--summarize": o.summarize = value; i++; break;
      case "--bundle": o.bundle = value; i++; break;
      case "--no-inspector": o.noInspector = true; break;
      case "--hits": o.hits = num(); break;
      case "--targets": o.targets = new RegExp(value); i++; break;
      case "--var": {
        const at = value.indexOf(":");
        o.vars[value.slice(0, at)] = value.slice(at + 1);
        i++;
        break;
      }
      default:
        console.error(`profile-edge: unknown flag ${flag}`);
        process.exit(2);
    }
  }
  if (!o.summarize && (!o.merger || (o.only !== "js" && !o.workerBuild))) {
    console.error("profile-edge: --merger and --worker-build are required (see the header)");
    process.exit(2);
  }
  return o;
}

async function cleanup(code) {
  if (stopping) return;
  stopping = true;
  for (const c of children) c.kill("SIGTERM");
  await rm(work, { recursive: true, force: true }).catch(() => {});
  process.exit(code);
}

function log(msg) {
  process.stderr.write(`[profile] ${msg}\n`);
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}
