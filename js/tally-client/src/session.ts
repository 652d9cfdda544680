/**
 * Where the client keeps the edge's session token (`Tally-Session`). Every counter and gauge
 * answer carries one; sent back on the next request it holds the answers to at least what
 * this client has seen (read-your-writes, monotonic reads). The token is opaque to the client:
 * it is stored as received and sent back as it is.
 *
 * @module
 */

/** A place for the token: in memory, in `localStorage`, or the caller's own. */
export interface SessionStore {
  /** The token last received, or null before the first answer. */
  get(): string | null;
  /** Keeps `token`, the newest received. */
  set(token: string): void;
}

/** How a client keeps its token: `"memory"` (default), `"localStorage"`, or a store. */
export type SessionOption = "memory" | "localStorage" | SessionStore;

/** The default `localStorage` key. */
export const DEFAULT_STORAGE_KEY = "tally-session";

/** The token in this object only: gone with the page or the process. */
export class MemorySessionStore implements SessionStore {
  private token: string | null = null;

  /** The token last kept. */
  get(): string | null {
    return this.token;
  }

  /** Keeps `token`. */
  set(token: string): void {
    this.token = token;
  }
}

/** The part of the Web Storage API the client uses (`localStorage` has it). */
export interface StorageLike {
  /** The value under `key`, or null. */
  getItem(key: string): string | null;
  /** Writes `value` under `key`. */
  setItem(key: string, value: string): void;
}

/**
 * The token in a Web Storage (`localStorage` by default), so it outlives a reload and is
 * shared by the origin's tabs. A storage that throws (quota, a private window) is left
 * alone: the token then lives in memory only.
 */
export class StorageSessionStore implements SessionStore {
  private readonly memory = new MemorySessionStore();

  /** A store in `storage` under `key`. */
  constructor(
    private readonly storage: StorageLike,
    private readonly key: string = DEFAULT_STORAGE_KEY,
  ) {}

  /** The stored token, else the one kept in memory. */
  get(): string | null {
    try {
      const stored = this.storage.getItem(this.key);
      if (stored !== null) return stored;
    } catch {
      // A storage that cannot be read: the token lives in memory only.
    }
    return this.memory.get();
  }

  /** Stores `token` (and keeps it in memory, should the storage refuse it). */
  set(token: string): void {
    this.memory.set(token);
    try {
      this.storage.setItem(this.key, token);
    } catch {
      // Full or forbidden: memory holds it.
    }
  }
}

/** The store `option` names; `"localStorage"` needs the platform's `localStorage`. */
export function sessionStore(option: SessionOption | undefined, key?: string): SessionStore {
  if (option === undefined || option === "memory") return new MemorySessionStore();
  if (option === "localStorage") {
    const storage = (globalThis as { localStorage?: StorageLike }).localStorage;
    if (storage === undefined) {
      throw new TypeError('session: "localStorage" needs a platform with localStorage');
    }
    return new StorageSessionStore(storage, key);
  }
  return option;
}
