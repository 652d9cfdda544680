// P5 baseline: the smallest Durable Object counter that is durable per hit. PUT adds 1 and
// stores it before answering; GET reads. Same answer shape as the tally edge.
import { DurableObject } from "cloudflare:workers";

export class Counter extends DurableObject {
  async fetch(request) {
    let count = (await this.ctx.storage.get("count")) ?? 0;
    if (request.method === "PUT") {
      count += 1;
      await this.ctx.storage.put("count", count);
    }
    return Response.json({ count, updated_at: new Date().toISOString() });
  }
}

export default {
  async fetch(request, env) {
    const id = new URL(request.url).pathname.split("/")[1] || "default";
    return env.COUNTER.get(env.COUNTER.idFromName(id)).fetch(request);
  },
};
