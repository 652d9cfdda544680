/**
 * `tally-client/server`: the client for an application's own backend, holding the write key
 * (`WRITE_KEY`). It can do everything the browser client does, plus what the key allows:
 * hits of any delta (the public limit is `PUBLIC_MAX_DELTA`, 1 by default), gauge writes
 * (up and down), and visitors in bulk. Never ship this entry (or the key) to a browser: the
 * browser entry, `tally-client`, does not import it.
 *
 * ```js
 * import { createServerClient } from "tally-client/server";
 * const tally = createServerClient({ baseUrl: process.env.TALLY_URL, writeKey: process.env.TALLY_WRITE_KEY });
 * await tally.gauge("inbox:42:unread", +1);
 * ```
 *
 * Writes follow the browser client's rule: retried only when nothing was stored, else
 * `outcome_unknown`.
 *
 * @module
 */

import { path, TallyClient, type ClientOptions, type HitResult, type RequestOptions, type UniqueResult } from "./client.js";
import type { UniqueBody } from "./wire.js";

export * from "./index.js";

/** The options of a server client: a client's, and the write key. */
export interface ServerClientOptions extends ClientOptions {
  /** The application's write key (the edge's `WRITE_KEY` secret). */
  writeKey: string;
}

/** A server client of the edge at `options.baseUrl`, with `options.writeKey`. */
export function createServerClient(options: ServerClientOptions): TallyServerClient {
  return new TallyServerClient(options);
}

/** The client with the write key: deltas, gauges, visitors in bulk. */
export class TallyServerClient extends TallyClient {
  private readonly writeKey: string;

  /** A client with `options`, sending `options.writeKey` with its writes. */
  constructor(options: ServerClientOptions) {
    super(options);
    if (typeof options.writeKey !== "string" || options.writeKey === "") {
      throw new TypeError("writeKey: the application's write key is required");
    }
    this.writeKey = options.writeKey;
  }

  /** Adds `delta` (1 to 1,000,000) to counter `id`, with the write key. */
  async add(id: string, delta: number, options: RequestOptions & { visitor?: string } = {}): Promise<HitResult> {
    const body: Record<string, unknown> = { delta };
    if (options.visitor !== undefined) body.visitor = options.visitor;
    return this.put("counter", id, body, { bearer: this.writeKey, signal: options.signal });
  }

  /** Adds `delta` (-1,000,000 to 1,000,000, not 0) to gauge `id`, with the write key. */
  async gauge(id: string, delta: number, options: RequestOptions = {}): Promise<HitResult> {
    return this.put("gauge", id, { delta }, { bearer: this.writeKey, signal: options.signal });
  }

  /** Counts up to 100 visitor keys of `id` at once (all-time and today), with the write key. */
  async visitors(id: string, keys: readonly string[], options: RequestOptions = {}): Promise<UniqueResult> {
    const answer = await this.transport.call<UniqueBody>("PUT", `/${path(id)}/unique`, {
      kind: "write",
      body: { visitors: keys },
      bearer: this.writeKey,
      signal: options.signal,
    });
    const body = answer.body;
    return { id, count: body.count, error: body.error, updatedAt: body.updated_at, day: body.day ?? null };
  }
}
