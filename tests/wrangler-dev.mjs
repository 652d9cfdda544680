// Serves a built worker the way `wrangler dev` does, with wrangler's own dev server (its
// `DevEnv`, what the `wrangler dev` command and `unstable_startWorker` run: the same config
// reading, bundling, miniflare and workerd), with two differences, both for tests:
//
// - The DevTools inspector is off. Under `wrangler dev` it is always on, and its proxy worker
//   forwards every DevTools message of the runtime (a `Network.*` event for each subrequest:
//   the Worker's call to its Durable Object, the object's sync to the merger) to Node over
//   loopback HTTP, where wrangler formats it and appends it to its debug log file. Measured on
//   2 cores, 1,000 PUTs: Node 5.1 CPU-s and workerd 7.2 with the inspector, Node 0.0 and
//   workerd 4.5 without (README, "What the test command does").
// - Clients talk to the Worker's runtime itself, not through wrangler's ProxyWorker. That
//   proxy (it exists so that `wrangler dev` keeps one address across reloads; the tests never
//   reload) forwards each request over a kept-alive connection of its own, and when that
//   connection has just been closed it answers a non-`GET` request with
//   `503 "Your worker restarted mid-request"` (workers-sdk#14641): a PUT whose fate the client
//   cannot know, which the milestone race met in 2 of 5 fresh-clone runs. Production has no
//   such proxy. The runtime's own address is the one miniflare reports when it is ready
//   (wrangler's `reloadComplete` event, which carries it to the proxy); the runtime sets
//   `CF-Connecting-IP` from the client's address as the proxy did.
//
// Usage (the flags of `wrangler dev` the tests use, with the same meaning, and --url-file):
//   node tests/wrangler-dev.mjs --config wrangler.toml --ip 127.0.0.1 --persist-to DIR \
//     --url-file FILE [--log-level warn] [--var NAME:value ...]
// It prints nothing of its own. Once the worker is ready it writes the address clients use
// (`http://127.0.0.1:PORT`) to FILE, replacing it whole (write to a temporary name, then
// rename). SIGTERM or SIGINT stops the worker (and workerd) and exits 0; a failure to start
// exits 1.

import { rename, writeFile } from "node:fs/promises";

// The flags taking one value each, and the option each sets; `--var` may repeat.
const flags = {
  "--config": "config",
  "--ip": "ip",
  "--url-file": "urlFile",
  "--persist-to": "persist",
  "--log-level": "logLevel",
};
const required = ["--config", "--ip", "--persist-to", "--url-file"];
const args = process.argv.slice(2);
const options = { vars: {}, logLevel: "warn" };
for (let i = 0; i < args.length; i += 2) {
  const [flag, value] = [args[i], args[i + 1]];
  if (value === undefined) fail(`${flag} needs a value`);
  if (flag === "--var") {
    const at = value.indexOf(":");
    if (at < 1) fail(`--var ${value}: expected NAME:value`);
    options.vars[value.slice(0, at)] = { type: "plain_text", value: value.slice(at + 1) };
  } else if (flag in flags) {
    options[flags[flag]] = value;
  } else {
    fail(`unknown flag ${flag}`);
  }
}
for (const flag of required) {
  if (options[flags[flag]] === undefined) fail(`${flag} is required`);
}

// wrangler's logger reads its level from the environment when it loads.
process.env.WRANGLER_LOG ??= options.logLevel;
// miniflare would fetch a `Request.cf` sample from workers.cloudflare.com at each start (the
// tests run offline: a warning and a stack trace each time); its placeholder is what it falls
// back to anyway.
process.env.CLOUDFLARE_CF_FETCH_ENABLED ??= "false";
const { unstable_DevEnv: DevEnv } = await import("wrangler");

const devEnv = new DevEnv();
// The runtime's address, from the event that carries it to the proxy.
const runtimeUrl = new Promise((resolve) => {
  const onReloadComplete = devEnv.proxy.onReloadComplete.bind(devEnv.proxy);
  devEnv.proxy.onReloadComplete = (event) => {
    const { protocol, hostname, port } = event.proxyData.userWorkerUrl;
    resolve(`${protocol}//${hostname}:${port}`);
    return onReloadComplete(event);
  };
});

let worker;
try {
  worker = await devEnv.startWorker({
    config: options.config,
    bindings: options.vars,
    dev: {
      inspector: false,
      remote: false,
      watch: false,
      // The proxy still starts (wrangler's ready waits for it), on a port of its choosing;
      // nobody sends it anything.
      server: { hostname: options.ip, port: 0 },
      persist: options.persist,
      logLevel: options.logLevel,
    },
  });
  await worker.ready;
  const url = await runtimeUrl;
  await writeFile(`${options.urlFile}.tmp`, url);
  await rename(`${options.urlFile}.tmp`, options.urlFile);
} catch (e) {
  fail(`the worker did not start: ${e?.stack ?? e}`);
}

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  try {
    await worker.dispose();
  } finally {
    process.exit(0);
  }
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

function fail(message) {
  console.error(`wrangler-dev.mjs: ${message}`);
  process.exit(1);
}
