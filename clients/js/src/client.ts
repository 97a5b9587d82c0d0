// One manager per credential: one @microsoft/signalr connection per hub it needs, reconnect with
// capped exponential backoff and jitter, the cursor kept per hub and sent back as `?cursor=` on
// every (re)connect, so that the server replays what was missed before anything live
// (docs/protocol.md, "Cursors and resume"), and a bounded set of recent event ids so that an
// application never sees one event twice.
import * as signalR from "@microsoft/signalr";
import { EVENT_NAMES, type EventMap, type EventName, type ResumeGap } from "./events.js";

export type HubName = "spend" | "tasks" | "notifications" | "events" | "admin";
export type TransportName = "WebSockets" | "ServerSentEvents" | "LongPolling";
export type ConnectionStatus = "idle" | "connecting" | "connected" | "reconnecting" | "disconnected";

/** Where cursors survive a page reload: `localStorage`, `sessionStorage` or anything alike. */
export interface CursorStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem?(key: string): void;
}

export interface ReconnectPolicy {
  /** First delay, ms (default 250). */
  initialDelayMs?: number;
  /** Cap of the delay, ms (default 15000). */
  maxDelayMs?: number;
  /** Growth per attempt (default 2). */
  factor?: number;
  /** Random share of each delay, 0..1 (default 0.3): clients spread out after a node loss. */
  jitter?: number;
  /** Attempts before giving up (default: never give up). */
  maxAttempts?: number;
}

export interface HeraldClientOptions {
  /** Base URL of a gateway node or load balancer, e.g. `http://localhost:8080`. */
  url: string;
  /** A virtual key, an admin key or the master key (or a function returning one). */
  key: string | (() => string | Promise<string>);
  /** Hubs to connect to (default `["events"]`: everything the key may see). */
  hubs?: HubName[];
  /** Keeps each hub's cursor and the recent event ids across page reloads. Default: memory. */
  storage?: CursorStorage;
  /** Prefix of the storage entries (default `herald`); the key's fingerprint is appended. */
  storageKey?: string;
  /** Transports to try, in this order. Default: the client's own order (WebSockets, SSE, long polling). */
  transports?: TransportName[];
  reconnect?: ReconnectPolicy;
  /** Event ids remembered for deduplication (default 2000). */
  dedupeWindow?: number;
  /** @microsoft/signalr log level (default: none). */
  logLevel?: signalR.LogLevel;
  /** Start from this cursor per hub (overrides storage). */
  cursors?: Partial<Record<HubName, string>>;
}

export interface StatusChange {
  status: ConnectionStatus;
  hub: HubName;
  /** Why the connection ended or an attempt failed. */
  error?: string;
  /** The transport in use once connected. */
  transport?: string;
  attempt?: number;
}

type Handler<T> = (event: T, hub: HubName) => void;
type AnyHandler = (name: EventName, event: EventMap[EventName], hub: HubName) => void;

const HUB_PATH: Record<HubName, string> = {
  spend: "/hubs/spend",
  tasks: "/hubs/tasks",
  notifications: "/hubs/notifications",
  events: "/hubs/events",
  admin: "/hubs/admin",
};

const TRANSPORT: Record<TransportName, signalR.HttpTransportType> = {
  WebSockets: signalR.HttpTransportType.WebSockets,
  ServerSentEvents: signalR.HttpTransportType.ServerSentEvents,
  LongPolling: signalR.HttpTransportType.LongPolling,
};

/** The delay before reconnect attempt `attempt` (0-based): capped exponential with jitter. */
export function backoffDelay(attempt: number, policy: ReconnectPolicy = {}, random: () => number = Math.random): number {
  const initial = policy.initialDelayMs ?? 250;
  const max = policy.maxDelayMs ?? 15000;
  const factor = policy.factor ?? 2;
  const jitter = Math.min(Math.max(policy.jitter ?? 0.3, 0), 1);
  const base = Math.min(max, initial * Math.pow(factor, Math.min(attempt, 30)));
  return Math.round(base * (1 - jitter + jitter * random()));
}

/** A short, non-secret name for a credential, so two keys on one page keep separate cursors. */
export function fingerprint(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0).toString(16).padStart(8, "0");
}

class MemoryStorage implements CursorStorage {
  private map = new Map<string, string>();
  getItem(k: string) {
    return this.map.get(k) ?? null;
  }
  setItem(k: string, v: string) {
    this.map.set(k, v);
  }
  removeItem(k: string) {
    this.map.delete(k);
  }
}

/** Ids seen recently, oldest forgotten first. */
class RecentIds {
  private set = new Set<string>();
  constructor(private capacity: number, initial: string[] = []) {
    for (const id of initial.slice(-capacity)) this.set.add(id);
  }
  /** True when `id` is new (and remembers it). */
  add(id: string): boolean {
    if (this.set.has(id)) return false;
    this.set.add(id);
    if (this.set.size > this.capacity) {
      const oldest = this.set.values().next().value;
      if (oldest !== undefined) this.set.delete(oldest);
    }
    return true;
  }
  list(limit: number): string[] {
    return [...this.set].slice(-limit);
  }
}

interface HubState {
  hub: HubName;
  connection: signalR.HubConnection | null;
  status: ConnectionStatus;
  cursor: string | null;
  attempt: number;
  timer: ReturnType<typeof setTimeout> | null;
  /** Set by the reconnect policy hook: the server allowed this close to be reconnected. */
  reconnectAllowed: boolean;
  transport?: string;
  error?: string;
}

/**
 * The HTTP status of a refused connect: @microsoft/signalr wraps a refused negotiate in an error
 * whose text ends in `Status code '401'`, without the code as a field.
 */
function refusalStatus(e: unknown): number | undefined {
  const direct = (e as { statusCode?: unknown })?.statusCode;
  if (typeof direct === "number") return direct;
  const m = /Status code '(\d{3})'/.exec(String((e as Error)?.message ?? e));
  return m ? Number(m[1]) : undefined;
}

/** Thrown for refusals that retrying cannot fix (bad credential, wrong hub for the key). */
export class HeraldAuthError extends Error {}

/**
 * One credential's connections. Events arrive once each, in order per hub, across reconnects,
 * node losses and (with `storage`) page reloads.
 */
export class HeraldClient {
  readonly options: HeraldClientOptions;
  private hubs: Map<HubName, HubState>;
  private storage: CursorStorage;
  private prefix = "";
  private seen: RecentIds;
  private handlers = new Map<string, Set<Handler<any>>>();
  private anyHandlers = new Set<AnyHandler>();
  private statusHandlers = new Set<(change: StatusChange) => void>();
  private gapHandlers = new Set<Handler<ResumeGap>>();
  private flushQueued = false;
  private stopped = true;

  constructor(options: HeraldClientOptions) {
    if (!options.url) throw new Error("HeraldClient: `url` is required (e.g. http://localhost:8080)");
    if (!options.key) throw new Error("HeraldClient: `key` is required (a virtual key, an admin key or the master key)");
    this.options = options;
    this.storage = options.storage ?? new MemoryStorage();
    const hubs = options.hubs?.length ? options.hubs : (["events"] as HubName[]);
    this.hubs = new Map(
      hubs.map((hub) => [
        hub,
        { hub, connection: null, status: "idle", cursor: null, attempt: 0, timer: null, reconnectAllowed: false } as HubState,
      ]),
    );
    this.seen = new RecentIds(options.dedupeWindow ?? 2000);
  }

  /** Connects every hub. Resolves once each is connected; rejects on a refused credential. */
  async start(): Promise<void> {
    this.stopped = false;
    const key = await this.credential();
    this.prefix = `${this.options.storageKey ?? "herald"}:${fingerprint(key)}`;
    const stored = this.storage.getItem(`${this.prefix}:seen`);
    if (stored) {
      try {
        for (const id of JSON.parse(stored) as string[]) this.seen.add(id);
      } catch {
        /* a damaged entry: start without it */
      }
    }
    for (const state of this.hubs.values()) {
      state.cursor = this.options.cursors?.[state.hub] ?? this.storage.getItem(`${this.prefix}:cursor:${state.hub}`);
    }
    await Promise.all([...this.hubs.values()].map((s) => this.connect(s, true)));
  }

  /** Closes every connection; nothing reconnects until `start()` again. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.flush();
    await Promise.all(
      [...this.hubs.values()].map(async (s) => {
        if (s.timer) clearTimeout(s.timer);
        s.timer = null;
        const c = s.connection;
        s.connection = null;
        if (c) await c.stop().catch(() => undefined);
        this.setStatus(s, "disconnected");
      }),
    );
  }

  /** Subscribes to one event; returns the unsubscribe function. */
  on<N extends EventName>(name: N, handler: Handler<EventMap[N]>): () => void {
    if (name === "ResumeGap") return this.onGap(handler as Handler<ResumeGap>);
    let set = this.handlers.get(name);
    if (!set) this.handlers.set(name, (set = new Set()));
    set.add(handler);
    return () => set!.delete(handler);
  }

  /** Every event (after deduplication). */
  onAny(handler: AnyHandler): () => void {
    this.anyHandlers.add(handler);
    return () => this.anyHandlers.delete(handler);
  }

  /** Connection status changes, per hub. */
  onStatus(handler: (change: StatusChange) => void): () => void {
    this.statusHandlers.add(handler);
    return () => this.statusHandlers.delete(handler);
  }

  /** History did not reach back to the cursor: events were missed; reload state from its source. */
  onGap(handler: Handler<ResumeGap>): () => void {
    this.gapHandlers.add(handler);
    return () => this.gapHandlers.delete(handler);
  }

  /** The overall status: connected when every hub is, else the least connected one's. */
  get status(): ConnectionStatus {
    const order: ConnectionStatus[] = ["disconnected", "idle", "reconnecting", "connecting", "connected"];
    let worst: ConnectionStatus = "connected";
    for (const s of this.hubs.values()) if (order.indexOf(s.status) < order.indexOf(worst)) worst = s.status;
    return worst;
  }

  hubStatus(hub: HubName): StatusChange | undefined {
    const s = this.hubs.get(hub);
    return s && { hub, status: s.status, transport: s.transport, error: s.error, attempt: s.attempt };
  }

  /** The last cursor received on `hub`. */
  cursor(hub: HubName): string | null {
    return this.hubs.get(hub)?.cursor ?? null;
  }

  /** Calls a hub method (e.g. `SubscribeToTask`) on a connected hub. */
  async invoke<T = unknown>(hub: HubName, method: string, ...args: unknown[]): Promise<T> {
    const c = this.hubs.get(hub)?.connection;
    if (!c || c.state !== signalR.HubConnectionState.Connected) throw new Error(`hub ${hub} is not connected`);
    return c.invoke<T>(method, ...args);
  }

  /** The task's latest state, on the first connected hub that offers it (tasks, events, admin). */
  subscribeToTask(taskId: string): Promise<unknown> {
    const hub = (["tasks", "events", "admin"] as HubName[]).find((h) => this.hubs.get(h)?.status === "connected");
    if (!hub) return Promise.reject(new Error("no connected hub offers SubscribeToTask (tasks, events, admin)"));
    return this.invoke(hub, "SubscribeToTask", taskId);
  }

  private async credential(): Promise<string> {
    const k = this.options.key;
    return typeof k === "function" ? await k() : k;
  }

  private setStatus(s: HubState, status: ConnectionStatus, error?: string) {
    s.status = status;
    s.error = error;
    const change: StatusChange = { hub: s.hub, status, error, transport: s.transport, attempt: s.attempt };
    for (const h of this.statusHandlers) h(change);
  }

  private build(s: HubState, transport?: TransportName): signalR.HubConnection {
    let url = this.options.url.replace(/\/+$/, "") + HUB_PATH[s.hub];
    if (s.cursor) url += `?cursor=${encodeURIComponent(s.cursor)}`;
    const opts: signalR.IHttpConnectionOptions = { accessTokenFactory: () => this.credential() };
    if (transport) opts.transport = TRANSPORT[transport];
    const c = new signalR.HubConnectionBuilder()
      .withUrl(url, opts)
      // Never reconnects by itself (it would reuse the URL without the newest cursor); its policy
      // is only asked when the server allowed the close to be reconnected, which is what we need
      // to know (a Close with allowReconnect: false, e.g. a deleted key, must end for good).
      .withAutomaticReconnect({
        nextRetryDelayInMilliseconds: () => {
          s.reconnectAllowed = true;
          return null;
        },
      })
      .configureLogging(this.options.logLevel ?? signalR.LogLevel.None)
      .build();
    for (const name of EVENT_NAMES) {
      c.on(name, (event: any) => this.receive(s, c, name, event));
    }
    c.onclose((error) => this.closed(s, c, error));
    return c;
  }

  private async connect(s: HubState, first: boolean): Promise<void> {
    s.timer = null;
    if (this.stopped) return;
    this.setStatus(s, first && s.attempt === 0 ? "connecting" : "reconnecting", s.error);
    const order: (TransportName | undefined)[] = this.options.transports?.length ? this.options.transports : [undefined];
    let lastError: unknown;
    for (const transport of order) {
      const c = this.build(s, transport);
      s.reconnectAllowed = false;
      s.connection = c;
      try {
        await c.start();
        if (this.stopped) {
          await c.stop().catch(() => undefined);
          return;
        }
        s.attempt = 0;
        s.transport = (c as any).connection?.transport?.constructor?.name ?? transport;
        this.setStatus(s, "connected");
        return;
      } catch (e) {
        lastError = e;
        if (s.connection === c) s.connection = null;
        const status = refusalStatus(e);
        if (status === 401 || status === 403 || status === 404 || status === 400) {
          const message = `${HUB_PATH[s.hub]} refused (${status}): ${(e as Error).message}`;
          this.setStatus(s, "disconnected", message);
          if (first) throw new HeraldAuthError(message);
          return;
        }
      }
    }
    const message = lastError instanceof Error ? lastError.message : String(lastError);
    this.retry(s, message);
    if (first) {
      // The first start keeps trying in the background; the caller learns of the attempts
      // through onStatus. Resolve once connected (or stopped, or given up).
      await new Promise<void>((resolve, reject) => {
        const off = this.onStatus((c) => {
          if (c.hub !== s.hub) return;
          if (c.status === "connected") {
            off();
            resolve();
          } else if (c.status === "disconnected") {
            off();
            reject(new Error(c.error ?? "disconnected"));
          }
        });
      });
    }
  }

  private retry(s: HubState, error?: string) {
    if (this.stopped) return;
    const max = this.options.reconnect?.maxAttempts;
    if (max !== undefined && s.attempt >= max) {
      this.setStatus(s, "disconnected", `gave up after ${s.attempt} attempts: ${error ?? ""}`);
      return;
    }
    const delay = backoffDelay(s.attempt, this.options.reconnect);
    s.attempt++;
    this.setStatus(s, "reconnecting", error);
    s.timer = setTimeout(() => void this.connect(s, false).catch(() => undefined), delay);
  }

  private closed(s: HubState, c: signalR.HubConnection, error?: Error) {
    if (s.connection !== c) return; // an attempt that was replaced, or stop()
    s.connection = null;
    this.flush();
    if (this.stopped) return;
    if (!s.reconnectAllowed) {
      this.setStatus(s, "disconnected", error?.message ?? "closed by the server");
      return;
    }
    this.retry(s, error?.message);
  }

  private receive(s: HubState, c: signalR.HubConnection, name: EventName, event: any) {
    if (s.connection !== c || !event || typeof event !== "object") return;
    if (typeof event.cursor === "string") {
      s.cursor = event.cursor;
      this.queueFlush();
    }
    if (name === "ResumeGap") {
      for (const h of this.gapHandlers) h(event as ResumeGap, s.hub);
      return;
    }
    if (typeof event.eventId === "string" && !this.seen.add(event.eventId)) return;
    this.queueFlush();
    const set = this.handlers.get(name);
    if (set) for (const h of set) h(event, s.hub);
    for (const h of this.anyHandlers) h(name, event, s.hub);
  }

  /** Writes cursors and recent ids once per task (events of one frame share one write). */
  private queueFlush() {
    if (this.flushQueued) return;
    this.flushQueued = true;
    queueMicrotask(() => this.flush());
  }

  private flush() {
    if (!this.prefix) return;
    this.flushQueued = false;
    try {
      for (const s of this.hubs.values()) {
        if (s.cursor) this.storage.setItem(`${this.prefix}:cursor:${s.hub}`, s.cursor);
      }
      this.storage.setItem(`${this.prefix}:seen`, JSON.stringify(this.seen.list(200)));
    } catch {
      /* storage full or refused: memory still holds them */
    }
  }
}
