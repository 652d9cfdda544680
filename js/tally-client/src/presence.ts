/**
 * A live "viewers now" subscription over the edge's presence WebSocket
 * (`GET /{id}/presence` with `Upgrade: websocket`). The socket *is* a session: while it is
 * open this viewer counts, and closing it leaves. The edge sends the count on connect (with
 * the session and its lease, `ttl_ms`) and whenever it changes; any message from the client
 * renews the lease and is answered `pong`.
 *
 * The subscription pings every third of the lease, treats a ping unanswered for a third of
 * the lease as a dead connection, and after any loss (a closed or dead socket, a refused
 * handshake, the edge's close 4000 for a silent socket) connects again with exponential
 * backoff and full jitter: a new socket is a new session, so the viewer counts again.
 *
 * @module
 */

import type { PresenceMessage } from "./wire.js";

/** The part of the WebSocket API the subscription uses (browsers' and Node 22's have it). */
export interface WebSocketLike {
  /** Sends a text message. */
  send(data: string): void;
  /** Closes the socket. */
  close(code?: number, reason?: string): void;
  /** Called when the socket opened. */
  onopen: ((event: unknown) => void) | null;
  /** Called with each message. */
  onmessage: ((event: { data: unknown }) => void) | null;
  /** Called when the socket closed. */
  onclose: ((event: { code: number; reason: string }) => void) | null;
  /** Called on an error (a close follows). */
  onerror: ((event: unknown) => void) | null;
}

/** A WebSocket constructor: `globalThis.WebSocket`, or one from a library. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Where a subscription is: connecting, open, waiting to reconnect, or closed for good. */
export type PresenceState = "connecting" | "open" | "waiting" | "closed";

/** What a subscription knows now, given to its listeners on every change. */
export interface PresenceSnapshot {
  /** Viewers now, this one included; null until the first count arrives. */
  count: number | null;
  /** The edge's time of the newest change known, or null. */
  updatedAt: string | null;
  /** This viewer's session (the current socket's), or null before the first count. */
  session: string | null;
  /** The subscription's state. */
  state: PresenceState;
  /** Reconnections so far (0 while the first socket lives). */
  reconnects: number;
}

/** The settings of a subscription. */
export interface PresenceOptions {
  /** The WebSocket constructor (default: `globalThis.WebSocket`; Node 20 has none). */
  WebSocket?: WebSocketConstructor;
  /** The first reconnect delay, in milliseconds (default 500); each next one doubles it. */
  baseDelayMs?: number;
  /** The longest reconnect delay, in milliseconds (default 15 000). */
  maxDelayMs?: number;
  /** Called on every change of the snapshot. */
  onChange?: (snapshot: PresenceSnapshot) => void;
}

/** A lease the edge did not state (it always does): 30 s, the edge's default. */
const DEFAULT_TTL_MS = 30_000;

/** A live count of an id's viewers, this viewer included, until {@link close}. */
export class PresenceSubscription {
  private socket: WebSocketLike | null = null;
  private snapshot: PresenceSnapshot = {
    count: null,
    updatedAt: null,
    session: null,
    state: "connecting",
    reconnects: 0,
  };
  private readonly listeners = new Set<(snapshot: PresenceSnapshot) => void>();
  private failures = 0;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private lastHeard = 0;
  private readonly WebSocketImpl: WebSocketConstructor;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;

  /** Opens the first socket to `url` (`ws://…/{id}/presence`). */
  constructor(
    /** The socket's URL. */
    readonly url: string,
    /** The presence id. */
    readonly id: string,
    options: PresenceOptions = {},
  ) {
    const platform = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    const chosen = options.WebSocket ?? platform;
    if (chosen === undefined) {
      throw new TypeError(
        "no WebSocket on this platform (Node 20 has none): pass one as the WebSocket option",
      );
    }
    this.WebSocketImpl = chosen;
    this.baseDelayMs = options.baseDelayMs ?? 500;
    this.maxDelayMs = options.maxDelayMs ?? 15_000;
    if (options.onChange) this.listeners.add(options.onChange);
    this.connect();
  }

  /** What the subscription knows now. */
  get current(): PresenceSnapshot {
    return { ...this.snapshot };
  }

  /** Viewers now, or null until the first count. */
  get count(): number | null {
    return this.snapshot.count;
  }

  /** Calls `listener` on every change; returns the function that stops it. */
  subscribe(listener: (snapshot: PresenceSnapshot) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Resolves with the first snapshot `predicate` accepts (the current one included), or
   * rejects after `timeoutMs` (default 10 s) or once the subscription is closed.
   */
  waitFor(predicate: (snapshot: PresenceSnapshot) => boolean, timeoutMs = 10_000): Promise<PresenceSnapshot> {
    return new Promise((resolve, reject) => {
      if (predicate(this.current)) return resolve(this.current);
      const timer = setTimeout(() => {
        stop();
        reject(new Error(`presence ${this.id}: not reached within ${timeoutMs} ms (now ${JSON.stringify(this.snapshot)})`));
      }, timeoutMs);
      const stop = this.subscribe((snapshot) => {
        if (predicate(snapshot)) {
          clearTimeout(timer);
          stop();
          resolve({ ...snapshot });
        } else if (snapshot.state === "closed") {
          clearTimeout(timer);
          stop();
          reject(new Error(`presence ${this.id}: closed`));
        }
      });
    });
  }

  /** Leaves: closes the socket (the edge ends the session at once) and stops reconnecting. */
  close(): void {
    if (this.snapshot.state === "closed") return;
    clearTimeout(this.reconnectTimer);
    this.drop(1000, "closed by the client");
    this.update({ state: "closed" });
    this.listeners.clear();
  }

  private connect(): void {
    this.update({ state: "connecting" });
    let socket: WebSocketLike;
    try {
      socket = new this.WebSocketImpl(this.url);
    } catch {
      this.lost();
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      this.lastHeard = Date.now();
    };
    socket.onmessage = (event) => {
      if (this.socket !== socket) return;
      this.lastHeard = Date.now();
      let message: PresenceMessage;
      try {
        message = JSON.parse(String(event.data)) as PresenceMessage;
      } catch {
        return;
      }
      if (message.type !== "count") return;
      if (message.session !== undefined) {
        // The first count of a socket: its session and lease. The socket counts from now.
        this.failures = 0;
        this.startPings(message.ttl_ms ?? DEFAULT_TTL_MS);
      }
      this.update({
        count: message.count,
        updatedAt: message.updated_at,
        session: message.session ?? this.snapshot.session,
        state: "open",
      });
    };
    socket.onerror = () => {
      // A close event follows; the reconnect is decided there.
    };
    socket.onclose = () => {
      if (this.socket === socket) this.lost();
    };
  }

  /** Pings every third of the lease; a ping unanswered for a third of it drops the socket. */
  private startPings(ttlMs: number): void {
    clearInterval(this.pingTimer);
    const every = Math.max(250, Math.floor(ttlMs / 3));
    this.pingTimer = setInterval(() => {
      const socket = this.socket;
      if (socket === null) return;
      if (Date.now() - this.lastHeard > 2 * every) {
        // Nothing heard, not even the last ping's pong: the connection is dead.
        this.lost();
        return;
      }
      try {
        socket.send("ping");
      } catch {
        this.lost();
      }
    }, every);
  }

  /** The socket is gone: forget it and connect again after a backoff. */
  private lost(): void {
    if (this.snapshot.state === "closed") return;
    this.drop(4001, "reconnecting");
    this.failures += 1;
    const ceiling = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** (this.failures - 1));
    const delay = Math.round(Math.random() * ceiling);
    this.update({ state: "waiting" });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.update({ reconnects: this.snapshot.reconnects + 1 });
      this.connect();
    }, delay);
  }

  /** Detaches and closes the current socket, if any. */
  private drop(code: number, reason: string): void {
    clearInterval(this.pingTimer);
    this.pingTimer = undefined;
    const socket = this.socket;
    this.socket = null;
    if (socket === null) return;
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    try {
      socket.close(code, reason);
    } catch {
      // Already closed.
    }
  }

  private update(change: Partial<PresenceSnapshot>): void {
    this.snapshot = { ...this.snapshot, ...change };
    const snapshot = this.current;
    for (const listener of [...this.listeners]) listener(snapshot);
  }
}
