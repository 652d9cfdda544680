/**
 * Every HTTP call of the client: one `fetch` per attempt, each bounded by a timeout; the
 * session token sent and kept; errors turned into {@link TallyError}s; and the retry rules
 * that never count a write twice:
 *
 * - a **read** (it writes nothing) is tried again on 429, 503, a timeout and a failed
 *   connection, with exponential backoff and full jitter, honouring `Retry-After`;
 * - a **write** is tried again only when it is certain nothing was stored: a 429 with the code
 *   `too_many_new_ids` or `too_many_hits` (refused before anything was written), or a
 *   connection that could not be made (the request never left). Any other failure after the request may have
 *   left (no answer, a timeout, a 5xx or a non-API answer) is `outcome_unknown`.
 *
 * @module
 */

import { TallyError } from "./errors.js";
import type { ErrorResponse } from "./wire.js";
import type { SessionStore } from "./session.js";

/** How calls are retried. Every field is optional; the defaults are in {@link DEFAULT_RETRY}. */
export interface RetryOptions {
  /** Attempts of a read, the first included. */
  readAttempts?: number;
  /** Attempts of a write, the first included (only for the safe cases above). */
  writeAttempts?: number;
  /** The first backoff, in milliseconds; each next one doubles it. */
  baseDelayMs?: number;
  /**
   * The longest wait between two attempts, in milliseconds, `Retry-After` included: an
   * answer asking for longer is waited this long (trying a refused write sooner than asked
   * is harmless: nothing was stored, it is refused again).
   */
  maxDelayMs?: number;
}

/** The retry defaults: 4 read attempts, 3 write attempts, 200 ms doubling, at most 60 s. */
export const DEFAULT_RETRY: Required<RetryOptions> = {
  readAttempts: 4,
  writeAttempts: 3,
  baseDelayMs: 200,
  maxDelayMs: 60_000,
};

/** One retry about to happen, for `onRetry` (logging, metrics, tests). */
export interface RetryEvent {
  /** The method and path of the call. */
  call: string;
  /** The attempt that failed (1 for the first). */
  attempt: number;
  /** How long the client waits before the next one. */
  delayMs: number;
  /** Why: the error code or HTTP status of the failed attempt. */
  reason: string;
}

/** The settings a transport is made with (the client's options). */
export interface TransportOptions {
  /** The edge, e.g. `https://tally.example.com`. */
  baseUrl: string;
  /** The longest one attempt may take, in milliseconds (default 10 000). */
  timeoutMs?: number;
  /** Retry settings. */
  retry?: RetryOptions;
  /** The `fetch` to use (default: the platform's). */
  fetch?: typeof fetch;
  /** Called before each retry. */
  onRetry?: (event: RetryEvent) => void;
}

/** What a call carries besides its path. */
export interface CallOptions {
  /** `"read"` (safe to repeat) or `"write"` (counted when it arrives). */
  kind: "read" | "write";
  /** The JSON body, if any. */
  body?: unknown;
  /** An `Authorization: Bearer` key (the server entry's write key). */
  bearer?: string;
  /** Send and keep the session token (the counter and gauge routes). */
  session?: boolean;
  /** The caller's signal: aborts the call and its waits. */
  signal?: AbortSignal;
}

/** An answer that succeeded: its JSON body and headers. */
export interface Answer<T> {
  /** The parsed JSON body. */
  body: T;
  /** The answer's headers. */
  headers: Headers;
  /** Attempts it took. */
  attempts: number;
}

/** Network error codes that mean the connection was never made, so nothing was sent. */
const NOT_CONNECTED = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EADDRNOTAVAIL",
  "UND_ERR_CONNECT_TIMEOUT",
]);

/**
 * True when `error` (from `fetch`) says the connection could not be made. Node's fetch says
 * so in `cause.code`; browsers say nothing, so there a failed write is always unknown.
 */
export function connectionNeverMade(error: unknown): boolean {
  const cause = (error as { cause?: { code?: unknown; errors?: { code?: unknown }[] } })?.cause;
  if (cause === undefined || cause === null) return false;
  if (typeof cause.code === "string" && NOT_CONNECTED.has(cause.code)) return true;
  // Several addresses tried (happy eyeballs): never made only if none was made.
  const all = Array.isArray(cause.errors) ? cause.errors : [];
  return all.length > 0 && all.every((e) => typeof e.code === "string" && NOT_CONNECTED.has(e.code));
}

/** `Retry-After` in milliseconds (seconds or an HTTP date), or undefined. */
export function retryAfterMs(headers: Headers, now = Date.now()): number | undefined {
  const value = headers.get("Retry-After");
  if (value === null) return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** The backoff before attempt `attempt + 1`: full jitter over `base * 2^(attempt-1)`. */
export function backoffMs(attempt: number, retry: Required<RetryOptions>): number {
  const ceiling = Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** (attempt - 1));
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

/** Waits `ms`, or until `signal` aborts (then throws `aborted`). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(aborted(signal));
    const done = () => {
      signal?.removeEventListener("abort", stop);
      resolve();
    };
    const timer = setTimeout(done, ms);
    const stop = () => {
      clearTimeout(timer);
      reject(aborted(signal));
    };
    signal?.addEventListener("abort", stop, { once: true });
  });
}

function aborted(signal?: AbortSignal): TallyError {
  return new TallyError({ code: "aborted", message: "aborted by the caller", cause: signal?.reason });
}

/** How one attempt ended, before the retry rules look at it. */
type Attempt =
  | { ok: true; status: number; headers: Headers; body: unknown }
  | { ok: false; status: number; headers: Headers; error: TallyError }
  | { ok: false; status: 0; failure: "timeout" | "not_sent" | "network"; cause: unknown };

/** The HTTP side of a client: one per client, shared by its calls. */
export class Transport {
  /** The edge's URL, without a trailing slash. */
  readonly baseUrl: string;
  private readonly timeoutMs: number;
  private readonly retry: Required<RetryOptions>;
  private readonly fetchImpl: typeof fetch;
  private readonly onRetry: ((event: RetryEvent) => void) | undefined;

  /** A transport to `options.baseUrl` keeping its token in `session`. */
  constructor(
    options: TransportOptions,
    /** Where the session token lives. */
    readonly session: SessionStore,
  ) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    const platformFetch = (globalThis as { fetch?: typeof fetch }).fetch;
    const chosen = options.fetch ?? platformFetch;
    if (chosen === undefined) throw new TypeError("no fetch: pass one in the options");
    // Called unbound, a browser's fetch throws "Illegal invocation".
    this.fetchImpl = options.fetch ?? chosen.bind(globalThis);
    this.onRetry = options.onRetry;
  }

  /** `method path` with the retry rules of `options.kind`; the JSON body on success. */
  async call<T>(method: string, path: string, options: CallOptions): Promise<Answer<T>> {
    const write = options.kind === "write";
    const attempts = Math.max(1, write ? this.retry.writeAttempts : this.retry.readAttempts);
    const name = `${method} ${path}`;
    for (let attempt = 1; ; attempt++) {
      if (options.signal?.aborted) throw aborted(options.signal);
      const result = await this.attempt(method, path, options);
      if (result.ok) return { body: result.body as T, headers: result.headers, attempts: attempt };
      let retryable: boolean;
      let reason: string;
      let waitAtLeast = 0;
      let error: TallyError;
      if ("failure" in result) {
        reason = result.failure;
        if (write && result.failure !== "not_sent") {
          throw new TallyError({
            code: "outcome_unknown",
            message: `${name}: sent, and ${result.failure === "timeout" ? "no answer within " + this.timeoutMs + " ms" : "the connection failed before the answer"}; it may or may not have been counted`,
            attempts: attempt,
            cause: result.cause,
          });
        }
        retryable = true;
        const code = result.failure === "not_sent" ? "unreachable" : result.failure;
        error = new TallyError({
          code,
          message: `${name}: ${code === "unreachable" ? "the connection could not be made" : code === "timeout" ? `no answer within ${this.timeoutMs} ms` : "the connection failed"}`,
          attempts: attempt,
          cause: result.cause,
        });
      } else {
        error = result.error;
        reason = String(error.code);
        waitAtLeast = error.retryAfterMs ?? 0;
        if (write) {
          retryable =
            result.status === 429 &&
            (error.code === "too_many_new_ids" || error.code === "too_many_hits");
          // A write answered 5xx or 408 (by a proxy or a runtime in front of the edge; the
          // edge's write routes answer neither): whether it was counted is unknown.
          if (!retryable && (result.status >= 500 || result.status === 408)) {
            throw new TallyError({
              code: "outcome_unknown",
              message: `${name}: answered ${result.status} (${error.message}); it may or may not have been counted`,
              status: result.status,
              attempts: attempt,
              cause: error,
            });
          }
        } else {
          retryable = result.status === 429 || result.status === 503;
        }
      }
      if (!retryable || attempt >= attempts) {
        throw new TallyError({
          code: error.code,
          message: error.message,
          status: error.status,
          retryAfterMs: error.retryAfterMs,
          attempts: attempt,
          cause: error.cause,
        });
      }
      const delayMs = Math.min(this.retry.maxDelayMs, Math.max(waitAtLeast, backoffMs(attempt, this.retry)));
      this.onRetry?.({ call: name, attempt, delayMs, reason });
      await sleep(delayMs, options.signal);
    }
  }

  /** One attempt: the fetch and the whole body, within the timeout. */
  private async attempt(method: string, path: string, options: CallOptions): Promise<Attempt> {
    const headers: Record<string, string> = {};
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    if (options.bearer !== undefined) headers["Authorization"] = `Bearer ${options.bearer}`;
    const token = options.session ? this.session.get() : null;
    if (token !== null) headers["Tally-Session"] = token;
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.timeoutMs);
    const forward = () => controller.abort();
    options.signal?.addEventListener("abort", forward, { once: true });
    try {
      let response: Response;
      try {
        response = await this.fetchImpl(this.baseUrl + path, {
          method,
          headers,
          body: options.body === undefined ? undefined : JSON.stringify(options.body),
          signal: controller.signal,
        });
      } catch (cause) {
        if (options.signal?.aborted) throw aborted(options.signal);
        if (timedOut) return { ok: false, status: 0, failure: "timeout", cause };
        return { ok: false, status: 0, failure: connectionNeverMade(cause) ? "not_sent" : "network", cause };
      }
      let text: string;
      try {
        text = await response.text();
      } catch (cause) {
        if (options.signal?.aborted) throw aborted(options.signal);
        return { ok: false, status: 0, failure: timedOut ? "timeout" : "network", cause };
      }
      const received = response.headers.get("Tally-Session");
      if (options.session && received !== null && received !== "") this.session.set(received);
      let json: unknown = undefined;
      try {
        json = text === "" ? undefined : JSON.parse(text);
      } catch {
        json = undefined;
      }
      if (response.ok) {
        if (json === undefined || json === null || typeof json !== "object") {
          return {
            ok: false,
            status: response.status,
            headers: response.headers,
            error: new TallyError({
              code: "bad_answer",
              message: `${method} ${path}: answered ${response.status} without a JSON object`,
              status: response.status,
            }),
          };
        }
        return { ok: true, status: response.status, headers: response.headers, body: json };
      }
      const api = (json as Partial<ErrorResponse> | undefined)?.error;
      const fromApi = api !== undefined && typeof api?.code === "string";
      return {
        ok: false,
        status: response.status,
        headers: response.headers,
        error: new TallyError({
          code: fromApi ? api.code : `http_${response.status}`,
          message: fromApi ? String(api.message) : `${method} ${path}: answered ${response.status}: ${text.slice(0, 200)}`,
          status: response.status,
          retryAfterMs: retryAfterMs(response.headers),
        }),
      };
    } finally {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", forward);
    }
  }
}
