// The built-in dashboard (docs/clients.md): the SDK and its state helpers, rendered once per
// animation frame whatever the event rate. With a virtual key it connects to /hubs/events (its
// key and global events); with the master key or an admin key, to /hubs/admin (every key).
import "./dashboard.css";
import { HeraldAuthError, HeraldClient, fingerprint, type ConnectionStatus } from "../src/client.js";
import type { BudgetAlert, EventName } from "../src/events.js";
import { HeraldState, type SpendSummary, type TaskState, type ProviderState } from "../src/state.js";

const KEY_ITEM = "herald.dashboard.key";
/** The page's state and the cursor it corresponds to, per key: a reload starts from there. */
const stateItem = (key: string) => `herald.dashboard.state:${fingerprint(key)}`;
const SAVE_EVERY_MS = 2000;
const MAX_TOASTS = 5;
const INFO_TOAST_MS = 10_000;
const THRESHOLDS = [50, 75, 90, 100];

const $ = <T extends Element = HTMLElement>(sel: string, root: ParentNode = document) => root.querySelector(sel) as T;
const el = (tag: string, cls?: string, text?: string) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

const money = (n: number | undefined) =>
  n === undefined || !Number.isFinite(n) ? "–" : n.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 6 });
const pct = (n: number | undefined) => (n === undefined ? "–" : `${Math.round(n * 100) / 100}%`);
const duration = (ms: number) => {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
};
const clock = (t: number) => new Date(t).toISOString().slice(11, 19);

/** ok below 75 %, warning from 75, critical from 90, exceeded from 100 (the alert severities). */
export function level(percentage: number | undefined): "ok" | "warning" | "critical" | "exceeded" {
  const p = percentage ?? 0;
  if (p >= 100) return "exceeded";
  if (p >= 90) return "critical";
  if (p >= 75) return "warning";
  return "ok";
}

interface Dashboard {
  client: HeraldClient | null;
  state: HeraldState;
  /** Event ids received, in order (bounded), for tests and the console. */
  received: string[];
  status: ConnectionStatus;
  statusHistory: ConnectionStatus[];
  /** Alert ids a toast was shown for, in order (bounded). */
  toasts: string[];
  hub: string;
  /** The path every event takes (for load tests). */
  ingest: (name: EventName, event: unknown) => void;
}

const dash: Dashboard = { client: null, state: newState(), received: [], status: "idle", statusHistory: [], toasts: [], hub: "", ingest: (n, e) => ingest(n, e) };
(window as unknown as { heraldDashboard: Dashboard }).heraldDashboard = dash;

function newState() {
  return new HeraldState({ spend: { recent: 5 }, tasks: { cleanupAfterMs: 60_000 }, alerts: 200, models: 20 });
}

// ---- Rendering, batched per frame -------------------------------------------------------

const dirty = new Set<string>();
let frame = 0;
function invalidate(part: string) {
  dirty.add(part);
  if (!frame) frame = requestAnimationFrame(render);
}

function render() {
  frame = 0;
  if (dirty.has("spend")) renderBudgets();
  if (dirty.has("tasks")) renderTasks();
  if (dirty.has("providers")) renderProviders();
  if (dirty.has("models")) renderModels();
  if (dirty.has("alerts")) renderAlerts();
  if (dirty.has("status")) renderStatus();
  if (dirty.has("toasts")) renderToasts();
  dirty.clear();
}

function setEmpty(section: string, empty: boolean) {
  $(`#${section}`).classList.toggle("is-empty", empty);
}

const cards = new Map<number, HTMLElement>();
function renderBudgets() {
  const all = dash.state.spend.snapshot();
  setEmpty("budgets", all.size === 0);
  const root = $("#budgets .cards");
  for (const [id, s] of [...all].sort((a, b) => a[0] - b[0])) {
    let card = cards.get(id);
    if (!card) {
      card = budgetCard(id);
      cards.set(id, card);
      root.append(card);
    }
    fillCard(card, s);
  }
  for (const [id, card] of cards) {
    if (!all.has(id)) {
      card.remove();
      cards.delete(id);
    }
  }
}

function budgetCard(id: number) {
  const card = el("div", "card");
  card.dataset.key = String(id);
  const head = el("div", "card-head");
  head.append(el("span", "key", `Key ${id}`), el("span", "trend"));
  const bar = el("div", "bar");
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.append(el("div", "fill"));
  for (const t of THRESHOLDS) {
    const m = el("span", "mark");
    m.style.left = `${t}%`;
    m.dataset.label = `${t}%`;
    bar.append(m);
  }
  card.append(head, el("div", "amount"), bar, el("ol", "tx"));
  return card;
}

const ARROW = { up: "▲", down: "▼", stable: "▬" };
function fillCard(card: HTMLElement, s: SpendSummary) {
  const trend = $(".trend", card);
  trend.className = `trend trend-${s.trend}`;
  trend.textContent = `${ARROW[s.trend]} ${s.trend}`;
  const amount = $(".amount", card);
  amount.replaceChildren(el("strong", "", money(s.totalSpend)), document.createTextNode(s.budget !== undefined ? ` of ${money(s.budget)} · ${pct(s.percentage)}` : " (no budget)"));
  const p = s.percentage ?? 0;
  const fill = $(".fill", card);
  const lv = level(p);
  fill.className = `fill level-${lv}`;
  fill.style.width = `${Math.min(100, Math.max(0, p))}%`;
  card.dataset.level = lv;
  $(".bar", card).setAttribute("aria-valuenow", String(Math.round(p)));
  const tx = $(".tx", card);
  tx.replaceChildren(
    ...s.transactions.map((t) => {
      const li = el("li");
      li.append(el("span", "", `+${money(t.amount)}${t.model ? ` · ${t.model}` : ""}`), el("span", "", clock(t.at)));
      return li;
    }),
  );
}

const taskRows = new Map<string, HTMLElement>();
function renderTasks() {
  const tasks = dash.state.tasks.snapshot();
  setEmpty("tasks", tasks.length === 0);
  const root = $("#tasks .list");
  const live = new Set(tasks.map((t) => t.taskId));
  for (const t of tasks) {
    let row = taskRows.get(t.taskId);
    if (!row) {
      row = el("div", "row task");
      row.dataset.task = t.taskId;
      const bar = el("div", "progress");
      bar.append(el("div"));
      row.append(el("span", "name"), el("span", "badge"), bar, el("span", "meta"), el("span", "meta pct"));
      taskRows.set(t.taskId, row);
      root.append(row);
    }
    fillTask(row, t);
  }
  for (const [id, row] of taskRows) {
    if (!live.has(id)) {
      row.remove();
      taskRows.delete(id);
    }
  }
}

function fillTask(row: HTMLElement, t: TaskState) {
  $(".name", row).textContent = `${t.taskId} · ${t.taskType}`;
  const badge = $(".badge", row);
  badge.dataset.status = t.status;
  badge.textContent = t.status;
  row.dataset.status = t.status;
  ($(".progress > div", row) as HTMLElement).style.width = `${t.progress}%`;
  const eta = t.status === "completed" ? "done" : t.etaMs !== undefined && t.status === "running" ? `ETA ${duration(t.etaMs)}` : t.error ?? t.message ?? "";
  row.querySelectorAll(".meta")[0].textContent = eta;
  $(".pct", row).textContent = `${Math.round(t.progress)}%`;
}

const providerRows = new Map<number, HTMLElement>();
function renderProviders() {
  const all = dash.state.providers.snapshot();
  setEmpty("providers", all.size === 0);
  const root = $("#providers .list");
  for (const [id, p] of all) {
    let row = providerRows.get(id);
    if (!row) {
      row = el("div", "row provider");
      row.dataset.provider = String(id);
      row.append(el("span", "name"), el("span", "badge"), el("span", "meta"), el("span", "meta history"));
      providerRows.set(id, row);
      root.append(row);
    }
    fillProvider(row, p);
  }
}

function fillProvider(row: HTMLElement, p: ProviderState) {
  $(".name", row).textContent = p.providerName ?? `provider ${p.providerId}`;
  const badge = $(".badge", row);
  badge.dataset.status = p.status;
  badge.textContent = p.status;
  row.dataset.status = p.status;
  row.querySelectorAll(".meta")[0].textContent = [p.latencyMs !== undefined ? `${p.latencyMs} ms` : "", p.error ?? ""].filter(Boolean).join(" · ");
  $(".history", row).textContent = p.history.length ? `was ${p.history.map((h) => h.status).slice(0, 3).join(" ← ")}` : "";
}

function renderModels() {
  const feed = dash.state.models.snapshot();
  setEmpty("models", feed.length === 0);
  $("#models .list").replaceChildren(
    ...feed.map((m) => {
      const li = el("li");
      li.append(el("strong", "", `${m.providerName ?? `provider ${m.providerId ?? "?"}`}: `), document.createTextNode(m.models.join(", ")));
      return li;
    }),
  );
}

function renderAlerts() {
  const alerts = dash.state.alerts.snapshot();
  setEmpty("alerts", alerts.length === 0);
  $("#alerts .count").textContent = alerts.length ? `(${alerts.length})` : "";
  // At most 50 rows: a key with thousands of alerts in its history must not freeze the page.
  $("#alerts .list").replaceChildren(
    ...alerts.slice(0, 50).map((a) => {
      const li = el("li");
      li.append(el("span", `sev sev-${a.severity}`, a.severity), el("span", "", a.message));
      return li;
    }),
  );
}

const STATUS_TEXT: Record<ConnectionStatus, string> = {
  idle: "not connected",
  connecting: "connecting…",
  connected: "connected",
  reconnecting: "reconnecting…",
  disconnected: "disconnected",
};
function renderStatus() {
  const s = $("#status");
  s.dataset.status = dash.status;
  const err = dash.client?.hubStatus(dash.hub as "events")?.error;
  $(".text", s).textContent = STATUS_TEXT[dash.status];
  s.title = err ?? "";
  ($("#connect-btn") as HTMLButtonElement).disabled = dash.status === "connected" || dash.status === "connecting";
  ($("#disconnect-btn") as HTMLButtonElement).disabled = !dash.client;
  $("#view").textContent = dash.hub === "admin" ? "admin view: every key" : dash.hub ? "key view" : "";
}

// ---- Toasts ------------------------------------------------------------------------------

// Alerts wait here for the next frame; a burst (a replay of many alerts) shows its newest few.
let pendingToasts: BudgetAlert[] = [];
function toast(a: BudgetAlert) {
  pendingToasts.push(a);
  if (pendingToasts.length > MAX_TOASTS) pendingToasts = pendingToasts.slice(-MAX_TOASTS);
  invalidate("toasts");
}

function renderToasts() {
  const batch = pendingToasts;
  pendingToasts = [];
  for (const a of batch) showToast(a);
}

function showToast(a: BudgetAlert) {
  const root = $("#toasts");
  dash.toasts.push(a.eventId);
  if (dash.toasts.length > 1200) dash.toasts.splice(0, dash.toasts.length - 1000);
  const t = el("div", `toast sev-${a.severity}`);
  t.dataset.alert = a.eventId;
  t.setAttribute("role", "alert");
  const msg = el("div", "msg");
  msg.append(el("div", "title", `${a.severity === "critical" ? "Critical" : a.severity === "warning" ? "Warning" : "Budget"} · key ${a.virtualKeyId} at ${a.threshold}%`), el("div", "", a.message));
  const close = el("button", "", "×");
  close.setAttribute("aria-label", "dismiss");
  close.addEventListener("click", () => {
    t.remove();
    dash.state.alerts.dismiss(a.eventId);
  });
  t.append(msg, close);
  // Info toasts go away by themselves; warnings and critical ones stay until dismissed (every
  // alert stays in the alert list either way).
  if (a.severity === "info") setTimeout(() => t.remove(), INFO_TOAST_MS);
  root.prepend(t);
  while (root.children.length > MAX_TOASTS) root.lastElementChild?.remove();
}

// ---- Connecting --------------------------------------------------------------------------

/** One event into the page: what every event of the client goes through. */
function ingest(name: EventName, event: unknown) {
  const id = (event as { eventId?: string }).eventId;
  if (id) {
    dash.received.push(id);
    // Trimmed in steps, not per event (a splice per event would cost O(n) each).
    if (dash.received.length > 12_000) dash.received.splice(0, dash.received.length - 10_000);
  }
  dash.state.apply(name, event as never);
  if (name === "BudgetAlert") toast(event as BudgetAlert);
}

function wire(client: HeraldClient) {
  client.onAny(ingest);
  client.onStatus(() => {
    if (dash.client !== client) return;
    dash.status = client.status;
    if (dash.statusHistory.at(-1) !== dash.status) dash.statusHistory.push(dash.status);
    invalidate("status");
  });
}

let currentKey = "";
let restored = false;

/**
 * Saves the state with the cursor it corresponds to, read at the same moment, so that a reload
 * resumes exactly after what the saved state holds (every 2 s and when the page goes away).
 */
function saveState() {
  const c = dash.client;
  const hub = dash.hub as "events" | "admin";
  const cursor = c && hub ? c.cursor(hub) : null;
  if (!currentKey || !cursor) return;
  try {
    sessionStorage.setItem(stateItem(currentKey), JSON.stringify({ hub, cursor, state: dash.state.save() }));
  } catch {
    /* storage full or refused: a reload then starts empty */
  }
}

/** The saved state of `key`, loaded once per page; the cursor to resume from, per hub. */
function restoreState(key: string): Partial<Record<"events" | "admin", string>> {
  if (restored) return {};
  restored = true;
  try {
    const saved = JSON.parse(sessionStorage.getItem(stateItem(key)) ?? "null");
    if (!saved?.cursor || !saved?.hub) return {};
    dash.state.load(saved.state);
    return { [saved.hub]: saved.cursor };
  } catch {
    return {};
  }
}

async function connect(key: string) {
  await disconnect();
  sessionStorage.setItem(KEY_ITEM, key);
  currentKey = key;
  const cursors = restoreState(key);
  const base = location.href.replace(/[#?].*$/, "").replace(/\/[^/]*$/, "");
  // A virtual key sees its own key and global events; the master and admin keys everything.
  // Virtual keys (admin keys too) start with condt_; anything else can only be the master key.
  const hubs = key.startsWith("condt_") ? (["events", "admin"] as const) : (["admin"] as const);
  for (const hub of hubs) {
    const client = new HeraldClient({ url: base, key, hubs: [hub], cursors, reconnect: { initialDelayMs: 250, maxDelayMs: 5000 } });
    dash.client = client;
    dash.hub = hub;
    wire(client);
    try {
      await client.start();
      return;
    } catch (e) {
      if (!(e instanceof HeraldAuthError) || hub === "admin") {
        dash.status = "disconnected";
        $("#status").title = (e as Error).message;
        invalidate("status");
        return;
      }
    }
  }
}

async function disconnect() {
  saveState();
  const c = dash.client;
  dash.client = null;
  dash.hub = "";
  if (c) await c.stop();
  dash.status = "idle";
  invalidate("status");
}

for (const [store, part] of [
  [dash.state.spend, "spend"],
  [dash.state.tasks, "tasks"],
  [dash.state.providers, "providers"],
  [dash.state.models, "models"],
  [dash.state.alerts, "alerts"],
] as const) {
  store.subscribe(() => invalidate(part));
}

function init() {
  const params = new URLSearchParams(location.hash.slice(1));
  const theme = params.get("theme");
  if (theme) document.documentElement.dataset.theme = theme;
  else if (matchMedia("(prefers-color-scheme: dark)").matches) document.documentElement.dataset.theme = "dark";
  // The key may come in the fragment (standalone prints such a link; a fragment never reaches
  // the server or its logs). It is moved to sessionStorage and taken out of the address bar.
  const fromHash = params.get("key");
  if (fromHash) {
    params.delete("key");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  }
  const key = fromHash ?? sessionStorage.getItem(KEY_ITEM) ?? "";
  const input = $("#key") as HTMLInputElement;
  input.value = key;
  $("#connect").addEventListener("submit", (e) => {
    e.preventDefault();
    if (input.value.trim()) void connect(input.value.trim());
  });
  $("#disconnect-btn").addEventListener("click", () => void disconnect());
  addEventListener("pagehide", saveState);
  setInterval(saveState, SAVE_EVERY_MS);
  for (const part of ["spend", "tasks", "providers", "models", "alerts", "status"]) invalidate(part);
  if (key) void connect(key);
}

init();
