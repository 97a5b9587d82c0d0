// Small state helpers over the event stream, like the hooks of the UI Herald replaces: a spend
// summary per key (last N transactions, trend), active tasks with progress, ETA and cleanup, a
// provider health map with its history, the model discovery feed and the alert list. Each is a
// plain store: `apply(name, event)` folds an event in, `snapshot()` returns an immutable view
// that changes identity only when something changed (what React's useSyncExternalStore needs),
// `subscribe(listener)` tells when.
import type {
  BudgetAlert,
  EventMap,
  EventName,
  HealthStatus,
  ModelsDiscovered,
  ProviderHealthChanged,
  Severity,
  SpendUpdate,
  TaskEvent,
  TaskStatus,
  Trend,
} from "./events.js";
import { TASK_EVENTS } from "./events.js";
import type { HeraldClient } from "./client.js";

type Listener = () => void;

/** Snapshot, subscribe and batched change notification shared by every store. */
abstract class Store<S> {
  private listeners = new Set<Listener>();
  private cached: S | null = null;
  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  snapshot(): S {
    return (this.cached ??= this.build());
  }
  protected abstract build(): S;
  protected changed() {
    this.cached = null;
    for (const l of this.listeners) l();
  }
}

const time = (ts: string | undefined, fallback: number) => {
  const t = ts ? Date.parse(ts) : NaN;
  return Number.isFinite(t) ? t : fallback;
};

// ---- Spend ---------------------------------------------------------------------------------

export interface Transaction {
  eventId: string;
  amount: number;
  totalSpend: number;
  model?: string;
  provider?: string;
  at: number;
}

export interface SpendSummary {
  virtualKeyId: number;
  totalSpend: number;
  budget?: number;
  /** 0–∞ (over 100 when the budget is exceeded). */
  percentage?: number;
  remaining?: number;
  /** Newest first, at most `recent`. */
  transactions: Transaction[];
  trend: Trend;
  /** From the server when it sends one. */
  burnRatePerHour?: number;
  /** The highest alert severity of the current period seen so far. */
  severity?: Severity;
  updatedAt: number;
}

export interface SpendOptions {
  /** Transactions kept per key (default 10). */
  recent?: number;
  /** Window the trend looks at, ms (default 1 h). */
  trendWindowMs?: number;
  /** Relative change between the older and newer half that counts as a trend (default 0.1). */
  trendThreshold?: number;
}

/**
 * Trend of spend over a window: the transactions in `window` ms before the newest are split in
 * an older and a newer half (by count); the newer half's average amount against the older's.
 * Fewer than 2 transactions: stable.
 */
export function spendTrend(transactions: readonly Transaction[], windowMs = 3_600_000, threshold = 0.1): Trend {
  if (transactions.length < 2) return "stable";
  const sorted = [...transactions].sort((a, b) => a.at - b.at);
  const newest = sorted[sorted.length - 1].at;
  const inWindow = sorted.filter((t) => t.at >= newest - windowMs);
  if (inWindow.length < 2) return "stable";
  const half = Math.floor(inWindow.length / 2);
  const avg = (xs: Transaction[]) => xs.reduce((s, t) => s + t.amount, 0) / xs.length;
  const older = avg(inWindow.slice(0, half));
  const newer = avg(inWindow.slice(inWindow.length - half));
  if (older === 0) return newer > 0 ? "up" : "stable";
  const change = (newer - older) / older;
  if (change > threshold) return "up";
  if (change < -threshold) return "down";
  return "stable";
}

const SEVERITY_RANK: Record<Severity, number> = { info: 0, warning: 1, critical: 2 };

export class SpendTracker extends Store<ReadonlyMap<number, SpendSummary>> {
  private keys = new Map<number, SpendSummary & { all: Transaction[] }>();
  constructor(private options: SpendOptions = {}) {
    super();
  }

  apply(name: EventName, event: any): boolean {
    if (name === "SpendUpdate") return this.spend(event as SpendUpdate);
    if (name === "BudgetAlert") return this.alert(event as BudgetAlert);
    return false;
  }

  get(keyId: number): SpendSummary | undefined {
    return this.snapshot().get(keyId);
  }

  private entry(id: number) {
    let e = this.keys.get(id);
    if (!e) {
      e = { virtualKeyId: id, totalSpend: 0, transactions: [], all: [], trend: "stable", updatedAt: 0 };
      this.keys.set(id, e);
    }
    return e;
  }

  private spend(e: SpendUpdate): boolean {
    if (typeof e.virtualKeyId !== "number") return false;
    const s = this.entry(e.virtualKeyId);
    const at = time(e.timestamp, Date.now());
    s.totalSpend = Number(e.totalSpend);
    if (e.budget !== undefined) s.budget = Number(e.budget);
    if (e.budgetPercentage !== undefined) s.percentage = Number(e.budgetPercentage);
    else if (s.budget) s.percentage = (s.totalSpend / s.budget) * 100;
    if (e.budgetRemaining !== undefined) s.remaining = Number(e.budgetRemaining);
    const window = this.options.trendWindowMs ?? 3_600_000;
    const tx: Transaction = { eventId: e.eventId, amount: Number(e.newSpend ?? 0), totalSpend: s.totalSpend, model: e.model, provider: e.provider, at };
    s.all.push(tx);
    // Bounded: what the trend window needs, never more than 1000 per key.
    while (s.all.length > 1000 || (s.all.length > 1 && s.all[0].at < at - window)) s.all.shift();
    const recent = this.options.recent ?? 10;
    s.transactions = [tx, ...s.transactions].slice(0, recent);
    s.trend = e.trend ?? spendTrend(s.all, window, this.options.trendThreshold);
    if (e.burnRatePerHour !== undefined) s.burnRatePerHour = Number(e.burnRatePerHour);
    s.updatedAt = at;
    this.changed();
    return true;
  }

  private alert(e: BudgetAlert): boolean {
    if (typeof e.virtualKeyId !== "number") return false;
    const s = this.entry(e.virtualKeyId);
    if (!s.severity || SEVERITY_RANK[e.severity] > SEVERITY_RANK[s.severity]) s.severity = e.severity;
    if (s.budget === undefined && e.budget !== undefined) s.budget = Number(e.budget);
    // A key known only from its alerts (no SpendUpdate seen yet): the alert's figures.
    if (s.updatedAt === 0) {
      s.totalSpend = Number(e.currentSpend);
      s.percentage = Number(e.percentage);
      s.remaining = Number(e.remaining);
    }
    this.changed();
    return true;
  }

  /** Restores summaries saved from `snapshot()` (e.g. across a page reload). */
  restore(saved: Iterable<[number, SpendSummary]>) {
    for (const [id, s] of saved) this.keys.set(Number(id), { ...s, transactions: [...s.transactions], all: [...s.transactions].reverse() });
    this.changed();
  }

  protected build(): ReadonlyMap<number, SpendSummary> {
    const out = new Map<number, SpendSummary>();
    for (const [id, { all: _all, ...s }] of this.keys) out.set(id, { ...s, transactions: [...s.transactions] });
    return out;
  }
}

// ---- Alerts --------------------------------------------------------------------------------

export interface AlertEntry extends BudgetAlert {
  receivedAt: number;
  dismissed: boolean;
}

export class AlertList extends Store<readonly AlertEntry[]> {
  private alerts: AlertEntry[] = [];
  private ids = new Set<string>();
  /** `max`: alerts kept, newest first (default 100); older ones are dropped. */
  constructor(private max = 100) {
    super();
  }
  apply(name: EventName, event: any): boolean {
    if (name !== "BudgetAlert" || this.ids.has(event.eventId)) return false;
    this.ids.add(event.eventId);
    this.alerts.unshift({ ...(event as BudgetAlert), receivedAt: Date.now(), dismissed: false });
    while (this.alerts.length > this.max) {
      const dropped = this.alerts.pop();
      if (dropped) this.ids.delete(dropped.eventId);
    }
    this.changed();
    return true;
  }
  dismiss(eventId: string) {
    const a = this.alerts.find((x) => x.eventId === eventId);
    if (a && !a.dismissed) {
      a.dismissed = true;
      this.changed();
    }
  }
  clear() {
    this.alerts = [];
    this.ids.clear();
    this.changed();
  }
  restore(saved: readonly AlertEntry[]) {
    for (const a of [...saved].reverse()) {
      if (this.ids.has(a.eventId)) continue;
      this.ids.add(a.eventId);
      this.alerts.unshift({ ...a });
    }
    this.alerts = this.alerts.slice(0, this.max);
    this.changed();
  }
  protected build(): readonly AlertEntry[] {
    return this.alerts.map((a) => ({ ...a }));
  }
}

// ---- Tasks ---------------------------------------------------------------------------------

export interface TaskState {
  taskId: string;
  taskType: string;
  status: TaskStatus;
  progress: number;
  message?: string;
  error?: string;
  virtualKeyId?: number;
  startedAt: number;
  updatedAt: number;
  /** Estimated ms until 100 %, from the progress rate so far; undefined until it can be told. */
  etaMs?: number;
  finishedAt?: number;
}

export interface TaskOptions {
  /** Finished tasks (completed, failed, cancelled) are removed this long after they finished (default 30 s; 0 keeps them). */
  cleanupAfterMs?: number;
  /** Clock for cleanup (default Date.now). */
  now?: () => number;
}

const FINISHED: ReadonlySet<TaskStatus> = new Set(["completed", "failed", "cancelled"]);
const TASK_NAMES: ReadonlySet<string> = new Set(TASK_EVENTS);

/** ETA from the first and the latest observation: (100 − p) / rate. */
export function estimateEta(first: { at: number; progress: number }, latest: { at: number; progress: number }): number | undefined {
  const dp = latest.progress - first.progress;
  const dt = latest.at - first.at;
  if (dp <= 0 || dt <= 0 || latest.progress >= 100) return latest.progress >= 100 ? 0 : undefined;
  return Math.round(((100 - latest.progress) * dt) / dp);
}

export class TaskTracker extends Store<readonly TaskState[]> {
  private tasks = new Map<string, TaskState & { first: { at: number; progress: number } }>();
  private timer: ReturnType<typeof setInterval> | null = null;
  constructor(private options: TaskOptions = {}) {
    super();
  }

  apply(name: EventName, event: any): boolean {
    if (!TASK_NAMES.has(name)) return false;
    const e = event as TaskEvent;
    if (typeof e.taskId !== "string") return false;
    const at = time(e.timestamp, this.now());
    const progress = Math.max(0, Math.min(100, Number(e.progress ?? 0)));
    let t = this.tasks.get(e.taskId);
    if (!t) {
      t = { taskId: e.taskId, taskType: e.taskType, status: e.status, progress, startedAt: at, updatedAt: at, first: { at, progress } };
      this.tasks.set(e.taskId, t);
    } else if (FINISHED.has(t.status)) {
      return false; // a late non-terminal event cannot undo a terminal state
    }
    t.status = e.status;
    t.progress = Math.max(t.progress, progress);
    t.message = (e.message as string | undefined) ?? t.message;
    t.error = (e.error as string | undefined) ?? t.error;
    t.virtualKeyId = e.virtualKeyId ?? t.virtualKeyId;
    t.updatedAt = at;
    if (FINISHED.has(t.status)) {
      t.finishedAt = this.now();
      t.etaMs = t.status === "completed" ? 0 : undefined;
      this.scheduleSweep();
    } else {
      t.etaMs = estimateEta(t.first, { at, progress: t.progress });
    }
    this.changed();
    return true;
  }

  restore(saved: readonly TaskState[]) {
    for (const t of saved) {
      this.tasks.set(t.taskId, { ...t, first: { at: t.startedAt, progress: 0 } });
      if (t.finishedAt !== undefined) this.scheduleSweep();
    }
    this.changed();
  }

  /** Removes finished tasks older than `cleanupAfterMs`; returns how many. */
  sweep(now = this.now()): number {
    const after = this.options.cleanupAfterMs ?? 30_000;
    if (after <= 0) return 0;
    let n = 0;
    for (const [id, t] of this.tasks) {
      if (t.finishedAt !== undefined && now - t.finishedAt >= after) {
        this.tasks.delete(id);
        n++;
      }
    }
    if (n) this.changed();
    if (![...this.tasks.values()].some((t) => t.finishedAt !== undefined) && this.timer) {
      clearInterval(this.timer);
      this.timer = null;
    }
    return n;
  }

  /** Stops the cleanup timer. */
  dispose() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private scheduleSweep() {
    const after = this.options.cleanupAfterMs ?? 30_000;
    if (after <= 0 || this.timer) return;
    this.timer = setInterval(() => this.sweep(), Math.max(250, Math.min(after, 5000)));
    (this.timer as { unref?: () => void }).unref?.();
  }

  private now() {
    return (this.options.now ?? Date.now)();
  }

  protected build(): readonly TaskState[] {
    return [...this.tasks.values()].map(({ first: _f, ...t }) => ({ ...t })).sort((a, b) => a.startedAt - b.startedAt);
  }
}

// ---- Providers and models ------------------------------------------------------------------

export interface ProviderState {
  providerId: number;
  providerName?: string;
  status: HealthStatus;
  latencyMs?: number;
  error?: string;
  updatedAt: number;
  /** Earlier states, newest first (at most `history`). */
  history: { status: HealthStatus; at: number; error?: string }[];
}

export class ProviderHealth extends Store<ReadonlyMap<number, ProviderState>> {
  private providers = new Map<number, ProviderState>();
  constructor(private historyLength = 20) {
    super();
  }
  apply(name: EventName, event: any): boolean {
    if (name !== "ProviderHealthChanged") return false;
    const e = event as ProviderHealthChanged;
    const at = time(e.timestamp, Date.now());
    const prev = this.providers.get(e.providerId);
    const history = prev ? [{ status: prev.status, at: prev.updatedAt, error: prev.error }, ...prev.history].slice(0, this.historyLength) : [];
    this.providers.set(e.providerId, {
      providerId: e.providerId,
      providerName: e.providerName ?? prev?.providerName,
      status: e.status,
      latencyMs: e.latencyMs,
      error: e.error,
      updatedAt: at,
      history,
    });
    this.changed();
    return true;
  }
  restore(saved: Iterable<[number, ProviderState]>) {
    for (const [id, p] of saved) this.providers.set(Number(id), { ...p });
    this.changed();
  }
  protected build(): ReadonlyMap<number, ProviderState> {
    return new Map(this.providers);
  }
}

export interface DiscoveredModels {
  eventId: string;
  providerId?: number;
  providerName?: string;
  models: string[];
  at: number;
}

export class ModelFeed extends Store<readonly DiscoveredModels[]> {
  private feed: DiscoveredModels[] = [];
  constructor(private max = 50) {
    super();
  }
  apply(name: EventName, event: any): boolean {
    if (name !== "ModelsDiscovered") return false;
    const e = event as ModelsDiscovered;
    const models = (e.models ?? []).map((m) => (typeof m === "string" ? m : String(m.id ?? JSON.stringify(m))));
    this.feed = [{ eventId: e.eventId, providerId: e.providerId, providerName: e.providerName, models, at: time(e.timestamp, Date.now()) }, ...this.feed].slice(0, this.max);
    this.changed();
    return true;
  }
  restore(saved: readonly DiscoveredModels[]) {
    this.feed = [...saved].slice(0, this.max);
    this.changed();
  }
  protected build(): readonly DiscoveredModels[] {
    return [...this.feed];
  }
}

// ---- All of them ---------------------------------------------------------------------------

export interface HeraldStateOptions {
  spend?: SpendOptions;
  tasks?: TaskOptions;
  alerts?: number;
  providerHistory?: number;
  models?: number;
}

export interface SavedState {
  version: 1;
  spend: [number, SpendSummary][];
  alerts: AlertEntry[];
  tasks: TaskState[];
  providers: [number, ProviderState][];
  models: DiscoveredModels[];
}

/** Every helper, fed from one client. */
export class HeraldState {
  readonly spend: SpendTracker;
  readonly alerts: AlertList;
  readonly tasks: TaskTracker;
  readonly providers: ProviderHealth;
  readonly models: ModelFeed;
  constructor(options: HeraldStateOptions = {}) {
    this.spend = new SpendTracker(options.spend);
    this.alerts = new AlertList(options.alerts);
    this.tasks = new TaskTracker(options.tasks);
    this.providers = new ProviderHealth(options.providerHistory);
    this.models = new ModelFeed(options.models);
  }
  /** Folds one event into every helper it concerns. */
  apply<N extends EventName>(name: N, event: EventMap[N]) {
    this.spend.apply(name, event);
    this.alerts.apply(name, event);
    this.tasks.apply(name, event);
    this.providers.apply(name, event);
    this.models.apply(name, event);
  }
  /**
   * Everything the helpers hold, as JSON-ready data. Saved together with the client's cursors
   * (the same moment: e.g. on `pagehide`, with `storage` set), it lets a reloaded page start
   * where it was and resume from there with nothing missing or counted twice.
   */
  save(): SavedState {
    return {
      version: 1,
      spend: [...this.spend.snapshot()],
      alerts: [...this.alerts.snapshot()],
      tasks: [...this.tasks.snapshot()],
      providers: [...this.providers.snapshot()],
      models: [...this.models.snapshot()],
    };
  }

  /** Loads what `save()` returned; anything unrecognised is ignored. */
  load(saved: unknown) {
    const s = saved as Partial<SavedState> | null;
    if (!s || s.version !== 1) return;
    if (Array.isArray(s.spend)) this.spend.restore(s.spend);
    if (Array.isArray(s.alerts)) this.alerts.restore(s.alerts);
    if (Array.isArray(s.tasks)) this.tasks.restore(s.tasks);
    if (Array.isArray(s.providers)) this.providers.restore(s.providers);
    if (Array.isArray(s.models)) this.models.restore(s.models);
  }

  /** Feeds every event of `client` in; returns the function that stops it. */
  attach(client: HeraldClient): () => void {
    return client.onAny((name, event) => this.apply(name, event as any));
  }
  dispose() {
    this.tasks.dispose();
  }
}
