// Entry of the counting copy of the tally worker (see count.mjs): the worker unchanged, plus
// `GET /_crossings`, which answers the counts so far (`?reset` clears them after answering).
// The Worker and its Durable Objects share one isolate under `wrangler dev`, so the counts
// cover both. count.mjs is imported first so that it runs before the glue instantiates Wasm.
import { counts } from "./count.mjs";
import Worker from "./build/index.js";
export * from "./build/index.js";

export default class extends Worker {
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname !== "/_crossings") {
      return super.fetch(request);
    }
    const body = {};
    for (const [kind, map] of Object.entries(counts)) {
      body[kind] = Object.fromEntries(map);
    }
    if (url.searchParams.has("reset")) {
      for (const map of Object.values(counts)) map.clear();
    }
    return Response.json(body);
  }
}
