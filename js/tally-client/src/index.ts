/**
 * `tally-client`: the client of tally's edge for web pages and Node. Browser-safe: it holds
 * no key (gauge writes and large deltas are in `tally-client/server`).
 *
 * ```js
 * import { createClient } from "tally-client";
 * const tally = createClient({ baseUrl: "https://tally.example.com", session: "localStorage" });
 * const { count } = await tally.hit("post-42:likes");
 * ```
 *
 * @module
 */

export {
  createClient,
  MAX_IDS_PER_READ,
  TallyClient,
  toCount,
  type ClientOptions,
  type Count,
  type CountResult,
  type HitResult,
  type MilestoneVerdict,
  type ReadManyItem,
  type RequestOptions,
  type UniqueOptions,
  type UniqueResult,
} from "./client.js";
export { isTallyError, TallyError, type ApiErrorCode, type ClientErrorCode, type TallyErrorCode } from "./errors.js";
export {
  PresenceSubscription,
  type PresenceOptions,
  type PresenceSnapshot,
  type PresenceState,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./presence.js";
export {
  DEFAULT_STORAGE_KEY,
  MemorySessionStore,
  StorageSessionStore,
  type SessionOption,
  type SessionStore,
  type StorageLike,
} from "./session.js";
export { DEFAULT_RETRY, type RetryEvent, type RetryOptions } from "./transport.js";
export type * from "./wire.js";
