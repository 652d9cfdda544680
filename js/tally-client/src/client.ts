/**
 * The browser-safe client of tally's edge: counters (`hit`, `read`, `readMany`), gauges
 * (reads only), unique visitors (`unique`, `readUnique`) and live viewers (`presence`). It
 * holds no key: writes that need the application's write key are in the server entry
 * (`tally-client/server`), which this module never imports.
 *
 * @module
 */

import { TallyError } from "./errors.js";
import { PresenceSubscription, type PresenceOptions } from "./presence.js";
import { sessionStore, type SessionOption } from "./session.js";
import { Transport, type CallOptions, type TransportOptions } from "./transport.js";
import type { BatchBody, CountBody, PresenceBody, UniqueBody, WireCount } from "./wire.js";

/** A count: a number below 2^53 in magnitude, a bigint beyond (exact either way). */
export type Count = number | bigint;

/** The options of a client. */
export interface ClientOptions extends TransportOptions {
  /** Where the session token lives: `"memory"` (default), `"localStorage"`, or a store. */
  session?: SessionOption;
  /** The `localStorage` key of the token (default `tally-session`). */
  storageKey?: string;
  /** The WebSocket constructor for `presence` (default: the platform's). */
  WebSocket?: PresenceOptions["WebSocket"];
}

/** The options of one call. */
export interface RequestOptions {
  /** Aborts the call (and its retries). */
  signal?: AbortSignal;
}

/** A counter or gauge as read. */
export interface CountResult {
  /** The id. */
  id: string;
  /** The count. */
  count: Count;
  /** The newest change known (RFC 3339), or null for a counter nobody has hit. */
  updatedAt: string | null;
  /** `"partial"` when no global value was heard yet (`Tally-Estimate`), else null. */
  estimate: "partial" | null;
  /** Seconds since the global part was heard, when the edge says it is old (`Age`). */
  ageSeconds: number | null;
}

/** A milestone's verdict on a hit near it (docs/milestones.md). */
export interface MilestoneVerdict {
  /** `won`: this hit was the N-th; `lost`: committed, won nothing; `pending`: not known yet. */
  verdict: "won" | "lost" | "pending";
  /** The milestone won (`won` only). */
  n: Count | null;
  /** Its label (`won` only, null without one). */
  label: string | null;
}

/** A counted hit. */
export interface HitResult extends CountResult {
  /** The hit's receipt (`Tally-Receipt`): look it up at the merger to learn what it won. */
  receipt: string | null;
  /** The milestone verdict, when the hit took the exact path near a milestone. */
  milestone: MilestoneVerdict | null;
  /** Attempts it took (more than 1 only after a refusal that stored nothing). */
  attempts: number;
}

/** One id of a batch read: its count, or the error of that id alone. */
export type ReadManyItem =
  | { id: string; count: Count; updatedAt: string | null; error?: undefined }
  | { id: string; error: TallyError };

/** Unique visitors as estimated. */
export interface UniqueResult {
  /** The id. */
  id: string;
  /** Estimated distinct visitors. */
  count: number;
  /** The relative standard error of the estimate (0.01625). */
  error: number;
  /** The newest change known, or null. */
  updatedAt: string | null;
  /** The UTC day of a daily count (`YYYY-MM-DD`), null for the all-time one. */
  day: string | null;
}

/** What a `unique` call counts. */
export interface UniqueOptions extends RequestOptions {
  /**
   * The application's visitor key (1 to 256 bytes): counted all-time and today. Without it
   * the edge derives one from the address and user agent, counted today only (the edge
   * needs `UNIQUE_SALT` for that).
   */
  visitor?: string;
}

/** The edge's batch routes take at most this many ids per request. */
export const MAX_IDS_PER_READ = 100;

/** A client of the edge at `options.baseUrl`. */
export function createClient(options: ClientOptions): TallyClient {
  return new TallyClient(options);
}

/** The browser-safe client: counters, gauge reads, unique visitors and live viewers. */
export class TallyClient {
  /** The HTTP side (shared with the server entry, which extends this class). */
  protected readonly transport: Transport;
  private readonly WebSocketImpl: PresenceOptions["WebSocket"];

  /** A client with `options` (see {@link ClientOptions}). */
  constructor(options: ClientOptions) {
    this.transport = new Transport(options, sessionStore(options.session, options.storageKey));
    this.WebSocketImpl = options.WebSocket;
  }

  /** The session token the client holds now (sent with every counter and gauge call). */
  get sessionToken(): string | null {
    return this.transport.session.get();
  }

  /**
   * Counts one hit on counter `id`. Retried only when nothing was stored (429
   * `too_many_new_ids` or `too_many_hits`, a connection never made); any other failure after it was sent is a
   * `TallyError` with code `outcome_unknown`. `visitor` is kept with the hit if it wins a
   * milestone.
   */
  async hit(id: string, options: RequestOptions & { visitor?: string } = {}): Promise<HitResult> {
    const body = options.visitor === undefined ? undefined : { visitor: options.visitor };
    return this.put("counter", id, body, { signal: options.signal });
  }

  /** Reads counter `id` (retried on 429, 503 and timeouts). */
  async read(id: string, options: RequestOptions = {}): Promise<CountResult> {
    return this.get("counter", id, options);
  }

  /**
   * Reads many counters, one request per 100 ids (the edge's `GET /counter?ids=` batch
   * route), answering in the order asked; an id the edge could not read carries its error.
   */
  async readMany(ids: readonly string[], options: RequestOptions = {}): Promise<ReadManyItem[]> {
    return this.batch("counter", ids, options);
  }

  /** Reads gauge `id` (viewers, unread notifications: counts that go down too). */
  async readGauge(id: string, options: RequestOptions = {}): Promise<CountResult> {
    return this.get("gauge", id, options);
  }

  /** Reads many gauges, as {@link readMany} does counters. */
  async readGauges(ids: readonly string[], options: RequestOptions = {}): Promise<ReadManyItem[]> {
    return this.batch("gauge", ids, options);
  }

  /**
   * Counts a visitor of `id` and answers the estimate after it: all-time with `visitor`,
   * today's without (the edge derives the key). A write: retried only as a hit is.
   */
  async unique(id: string, options: UniqueOptions = {}): Promise<UniqueResult> {
    const body = options.visitor === undefined ? undefined : { visitor: options.visitor };
    const answer = await this.transport.call<UniqueBody>("PUT", `/${path(id)}/unique`, {
      kind: "write",
      body,
      signal: options.signal,
    });
    return uniqueResult(id, answer.body);
  }

  /** Reads the distinct visitors of `id`: all-time, or of `day` (`today` or `YYYY-MM-DD`). */
  async readUnique(id: string, options: RequestOptions & { day?: string } = {}): Promise<UniqueResult> {
    const query = options.day === undefined ? "" : `?day=${encodeURIComponent(options.day)}`;
    const answer = await this.transport.call<UniqueBody>("GET", `/${path(id)}/unique${query}`, {
      kind: "read",
      signal: options.signal,
    });
    return uniqueResult(id, answer.body);
  }

  /** Reads the viewers now of `id` without joining. */
  async readPresence(id: string, options: RequestOptions = {}): Promise<{ count: number; updatedAt: string | null }> {
    const answer = await this.transport.call<PresenceBody>("GET", `/${path(id)}/presence`, {
      kind: "read",
      signal: options.signal,
    });
    return { count: answer.body.count, updatedAt: answer.body.updated_at };
  }

  /**
   * Joins `id`'s viewers over a WebSocket and follows the count live until `close()`; the
   * socket reconnects (a new session) with backoff after any loss.
   */
  presence(id: string, options: PresenceOptions = {}): PresenceSubscription {
    const url = `${this.transport.baseUrl.replace(/^http/, "ws")}/${path(id)}/presence`;
    return new PresenceSubscription(url, id, { WebSocket: this.WebSocketImpl, ...options });
  }

  /** A `PUT` of a hit or delta to `/{id}/{kind}`, as a write. */
  protected async put(
    kind: "counter" | "gauge",
    id: string,
    body: Record<string, unknown> | undefined,
    extra: Pick<CallOptions, "bearer" | "signal">,
  ): Promise<HitResult> {
    const answer = await this.transport.call<CountBody>("PUT", `/${path(id)}/${kind}`, {
      kind: "write",
      body,
      session: true,
      ...extra,
    });
    const verdict = answer.headers.get("Tally-Milestone");
    const won = answer.body.milestone;
    return {
      ...countResult(id, answer.body, answer.headers),
      receipt: answer.headers.get("Tally-Receipt"),
      milestone:
        verdict === "won" || verdict === "lost" || verdict === "pending"
          ? { verdict, n: won ? toCount(won.n) : null, label: won ? won.label : null }
          : null,
      attempts: answer.attempts,
    };
  }

  private async get(kind: "counter" | "gauge", id: string, options: RequestOptions): Promise<CountResult> {
    const answer = await this.transport.call<CountBody>("GET", `/${path(id)}/${kind}`, {
      kind: "read",
      session: true,
      signal: options.signal,
    });
    return countResult(id, answer.body, answer.headers);
  }

  private async batch(kind: "counter" | "gauge", ids: readonly string[], options: RequestOptions): Promise<ReadManyItem[]> {
    const unique = [...new Set(ids)];
    const found = new Map<string, ReadManyItem>();
    for (let from = 0; from < unique.length; from += MAX_IDS_PER_READ) {
      const chunk = unique.slice(from, from + MAX_IDS_PER_READ);
      const query = chunk.map(path).join(",");
      const answer = await this.transport.call<BatchBody>("GET", `/${kind}?ids=${query}`, {
        kind: "read",
        session: true,
        signal: options.signal,
      });
      if (!Array.isArray(answer.body.items)) {
        throw new TallyError({ code: "bad_answer", message: `GET /${kind}: no items in the answer` });
      }
      for (const item of answer.body.items) {
        found.set(
          item.id,
          "error" in item
            ? { id: item.id, error: new TallyError({ code: item.error.code, message: item.error.message }) }
            : { id: item.id, count: toCount(item.count), updatedAt: item.updated_at },
        );
      }
    }
    return ids.map(
      (id) =>
        found.get(id) ?? {
          id,
          error: new TallyError({ code: "bad_answer", message: `the batch answer left out ${id}` }),
        },
    );
  }
}

/** A wire count as a number (below 2^53) or a bigint (beyond). */
export function toCount(wire: WireCount): Count {
  if (typeof wire === "number") return wire;
  const big = BigInt(wire);
  return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
}

/** The edge's id rule: 1-128 of `A-Z a-z 0-9 - _ . :`, starting with a letter or digit. */
const ID_RULE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/**
 * `id` as a path segment or query value: as it is when it keeps the id rule (such an id is
 * URL-safe, and the edge takes no percent-escapes in ids: `a%3Ab` is refused), else escaped
 * (the edge then answers the id's error, e.g. `id_bad_char`).
 */
export function path(id: string): string {
  return ID_RULE.test(id) ? id : encodeURIComponent(id);
}

function countResult(id: string, body: CountBody, headers: Headers): CountResult {
  const age = headers.get("Age");
  return {
    id,
    count: toCount(body.count),
    updatedAt: body.updated_at,
    estimate: headers.get("Tally-Estimate") === "partial" ? "partial" : null,
    ageSeconds: age === null ? null : Number(age),
  };
}

function uniqueResult(id: string, body: UniqueBody): UniqueResult {
  return { id, count: body.count, error: body.error, updatedAt: body.updated_at, day: body.day ?? null };
}
