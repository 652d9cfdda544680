/**
 * The JSON the edge answers, exactly as docs/edge-openapi.json describes it (its
 * `components.schemas`). Nothing here is computed: these types say what arrives on the wire,
 * and `test/openapi.test.mjs` holds every one of them to the document (property names, which
 * are required, and their JSON types), so a change of the document fails the test until the
 * types follow it. The client turns these into its own results (`Count` values into
 * `number | bigint`, snake_case into camelCase).
 *
 * @module
 */

/** A count: a JSON integer when |count| < 2^53, a decimal string beyond (schema `Count`). */
export type WireCount = number | string;

/** An RFC 3339 UTC time with exactly three fractional digits (schema `Timestamp`). */
export type WireTimestamp = string;

/** The milestone a hit on the exact path won (`CountBody.milestone`). */
export interface WireMilestone {
  /** The milestone's N: this hit was the N-th. */
  n: WireCount;
  /** Its label, or null when it was registered without one. */
  label: string | null;
}

/** A counter's or gauge's answer (schema `CountBody`). */
export interface CountBody {
  /** The count after the hit, or as this replica knows it. */
  count: WireCount;
  /** The newest change known; null for a counter nobody has hit. */
  updated_at: WireTimestamp | null;
  /** Only on a hit that won a milestone (`Tally-Milestone: won`). */
  milestone?: WireMilestone;
}

/** The inner part of every error answer (schema `ErrorBody`). */
export interface ErrorBody {
  /** Stable, machine-readable: docs/protocol.md lists them. */
  code: string;
  /** For people. */
  message: string;
}

/** Every error answer of the edge (schema `ErrorResponse`). */
export interface ErrorResponse {
  /** What went wrong. */
  error: ErrorBody;
}

/** One counter of a batch read, answered (schema `BatchItem`, first form). */
export interface BatchCount {
  /** The id asked for. */
  id: string;
  /** Its count. */
  count: WireCount;
  /** Its newest change known, or null. */
  updated_at: WireTimestamp | null;
}

/** One counter of a batch read that could not be read (schema `BatchItem`, second form). */
export interface BatchError {
  /** The id asked for. */
  id: string;
  /** Why this id alone was not read (e.g. `merger_unreachable`). */
  error: ErrorBody;
}

/** One item of a batch read (schema `BatchItem`). */
export type BatchItem = BatchCount | BatchError;

/** The answer of `GET /counter?ids=` and `GET /gauge?ids=` (schema `BatchBody`). */
export interface BatchBody {
  /** One per id asked, in the order asked. */
  items: BatchItem[];
}

/** The answer of the presence routes (schema `PresenceBody`). */
export interface PresenceBody {
  /** Viewers now. */
  count: number;
  /** The newest change known, or null. */
  updated_at: WireTimestamp | null;
  /** After a join: the session joined or renewed. */
  session?: string;
  /** After a join: renew within this many milliseconds. */
  ttl_ms?: number;
}

/** The answer of the unique-visitor routes (schema `UniqueBody`). */
export interface UniqueBody {
  /** Estimated distinct visitors. */
  count: number;
  /** The estimate's relative standard error (0.01625). */
  error: number;
  /** The newest change known, or null. */
  updated_at: WireTimestamp | null;
  /** The UTC day of a daily sketch (`YYYY-MM-DD`), absent for the all-time one. */
  day?: string;
}

/**
 * A message the edge sends on a presence WebSocket (described in the text of the
 * `GET /{id}/presence` operation, not as a schema): the count on connect (with the socket's
 * session and lease), again whenever it changes, and `pong` to every client message.
 */
export type PresenceMessage =
  | {
      type: "count";
      id: string;
      count: number;
      updated_at: WireTimestamp | null;
      sent_at: WireTimestamp;
      session?: string;
      ttl_ms?: number;
    }
  | { type: "pong" };
