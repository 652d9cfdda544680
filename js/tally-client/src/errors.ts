/**
 * The one error type of the client. Every failure is a `TallyError` whose `code` is either the
 * edge's own error code (`too_many_new_ids`, `write_key_required`, `id_bad_char`, … as
 * docs/protocol.md and docs/edge-openapi.json list them) or one of the client's:
 *
 * - `outcome_unknown`: a write (a hit, a gauge delta, a presence join, a visit) was sent and
 *   no answer came back (the connection dropped, the time ran out, a proxy answered 5xx).
 *   It may or may not have been counted; the client did not retry it, so it is never
 *   counted twice.
 * - `unreachable`: the connection could not be made, every attempt: nothing was sent.
 * - `timeout`: a read got no answer in time, every attempt.
 * - `network`: a read's connection failed, every attempt.
 * - `aborted`: the caller's `AbortSignal` fired.
 * - `bad_answer`: an answer that is not the JSON the API describes.
 * - `http_<status>`: an error status without the API's JSON error body.
 *
 * @module
 */

/** The codes the client itself gives (the edge's codes are documented in docs/protocol.md). */
export type ClientErrorCode =
  | "outcome_unknown"
  | "unreachable"
  | "timeout"
  | "network"
  | "aborted"
  | "bad_answer";

/**
 * Error codes of the edge's public API that a caller may want to branch on (the list in
 * docs/edge-openapi.json is longer; any code the edge sends arrives as it is).
 */
export type ApiErrorCode =
  | "too_many_new_ids"
  | "too_many_hits"
  | "too_many_sessions"
  | "origin_not_allowed"
  | "write_key_required"
  | "invalid_write_key"
  | "invalid_delta"
  | "invalid_body"
  | "invalid_visitor"
  | "visitor_required"
  | "invalid_query"
  | "invalid_day"
  | "invalid_session_id"
  | "empty_id"
  | "id_too_long"
  | "id_bad_char"
  | "body_too_large"
  | "slot_overflow"
  | "merger_unreachable";

/** Any error code: the client's, the API's, or one this version does not know yet. */
export type TallyErrorCode = ClientErrorCode | ApiErrorCode | (string & {});

/** What a `TallyError` is made of. */
export interface TallyErrorInit {
  /** The error code. */
  code: TallyErrorCode;
  /** For people. */
  message: string;
  /** The HTTP status, when an answer came. */
  status?: number;
  /** The answer's `Retry-After`, in milliseconds, when it had one. */
  retryAfterMs?: number;
  /** Attempts made (1 when it was not retried). */
  attempts?: number;
  /** The underlying failure (a network error), when there was one. */
  cause?: unknown;
}

/** A failed call of the client: `code` says what failed, `status` the HTTP status if any. */
export class TallyError extends Error {
  /** The error code: the edge's, or one of {@link ClientErrorCode}. */
  readonly code: TallyErrorCode;
  /** The HTTP status, when an answer came. */
  readonly status: number | undefined;
  /** The answer's `Retry-After` in milliseconds, when it had one. */
  readonly retryAfterMs: number | undefined;
  /** How many attempts were made. */
  readonly attempts: number;

  /** An error with `init`'s code and message. */
  constructor(init: TallyErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "TallyError";
    this.code = init.code;
    this.status = init.status;
    this.retryAfterMs = init.retryAfterMs;
    this.attempts = init.attempts ?? 1;
  }

  /** True when the write may or may not have been counted (`outcome_unknown`). */
  get outcomeUnknown(): boolean {
    return this.code === "outcome_unknown";
  }
}

/** True when `error` is a {@link TallyError}, with `code` when one is given. */
export function isTallyError(error: unknown, code?: TallyErrorCode): error is TallyError {
  return error instanceof TallyError && (code === undefined || error.code === code);
}
