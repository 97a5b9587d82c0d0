// The SDK (dist/, built by `npm run build`) against real Herald processes: a standalone node for
// the state helpers, storage across a "page reload", dedupe and a close that must not be
// reconnected; two `herald serve` nodes behind haproxy with a consumer on the real RabbitMQ,
// Redis and PostgreSQL for reconnect and resume across a node loss. The process helpers are
// tests/js's (tests/js/helpers.mjs), so tests/js's modules must be installed (scripts/test does).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Fixture, createKey, publish, until, sleep } from "../../../tests/js/helpers.mjs";
import { HeraldClient, HeraldState, backoffDelay, spendTrend, estimateEta } from "../dist/src/index.js";

/** A standalone node with its generated demo key (id 1, budget 10.00) and master key. */
async function standalone(f) {
  const { url, banner } = await f.herald(null, {});
  const master = banner.find((l) => l.startsWith("master key: "))?.slice("master key: ".length);
  const demo = banner.find((l) => l.startsWith("demo virtual key"))?.split(": ")[1];
  assert.ok(master && demo, `banner: ${banner.join(" | ")}`);
  const post = async (type, id, data, time) => {
    const body = { specversion: "1.0", id, source: "/sdk-test", type, data };
    if (time) body.time = time;
    const res = await fetch(`${url}/v1/events`, {
      method: "POST",
      headers: { Authorization: `Bearer ${master}`, "Content-Type": "application/cloudevents+json" },
      body: JSON.stringify(body),
    });
    assert.equal(res.status, 202, `${type} ${id}: ${await res.text()}`);
  };
  return { url, master, demo, post };
}

/** localStorage's shape over a Map: what a page passes as `storage`. */
function memoryStorage() {
  const m = new Map();
  return { getItem: (k) => m.get(k) ?? null, setItem: (k, v) => m.set(k, String(v)), removeItem: (k) => m.delete(k), map: m };
}

function record(client) {
  const got = { ids: [], names: [], statuses: [], events: [] };
  client.onAny((name, e) => {
    got.names.push(name);
    got.events.push([name, e]);
    if (e.eventId) got.ids.push(e.eventId);
  });
  client.onStatus((c) => got.statuses.push(c.status));
  return got;
}

test("backoff: capped, exponential, jittered", () => {
  const p = { initialDelayMs: 100, maxDelayMs: 1000, factor: 2, jitter: 0.5 };
  assert.equal(backoffDelay(0, p, () => 1), 100);
  assert.equal(backoffDelay(3, p, () => 1), 800);
  assert.equal(backoffDelay(10, p, () => 1), 1000, "capped");
  assert.equal(backoffDelay(10, p, () => 0), 500, "jitter takes up to half off");
  assert.equal(spendTrend([{ amount: 1, at: 0 }, { amount: 1, at: 1 }, { amount: 3, at: 2 }, { amount: 3, at: 3 }]), "up");
  assert.equal(spendTrend([{ amount: 3, at: 0 }, { amount: 1, at: 1 }]), "down");
  assert.equal(spendTrend([{ amount: 2, at: 0 }, { amount: 2.1, at: 1 }]), "stable");
  assert.equal(spendTrend([{ amount: 1, at: 0 }, { amount: 5, at: 10_000 }], 5_000), "stable", "outside the window");
  assert.equal(estimateEta({ at: 0, progress: 10 }, { at: 10_000, progress: 50 }), 12_500);
});

test("standalone: state helpers from real events (spend, trend, alerts, tasks, providers, models)", async (t) => {
  const f = new Fixture();
  t.after(() => f.cleanup());
  const { url, demo, post } = await standalone(f);
  const client = new HeraldClient({ url, key: demo });
  let now = Date.parse("2026-11-22T10:00:00Z");
  const state = new HeraldState({ spend: { recent: 4 }, tasks: { cleanupAfterMs: 1000, now: () => now } });
  state.attach(client);
  const got = record(client);
  t.after(() => client.stop());
  await client.start();
  assert.equal(client.status, "connected");

  // Amounts 1,1,1 then 3,3,3 against a budget of 10: totals 1,2,3,6,9,12.
  const amounts = [1, 1, 1, 3, 3, 3];
  let total = 0;
  for (const [i, a] of amounts.entries()) {
    total += a;
    await post("SpendUpdated", `sp-${i}`, { keyId: 1, amount: a, newTotalSpend: total, model: "gpt-4o" }, `2026-11-22T10:0${i}:00Z`);
  }
  await until(() => got.ids.filter((id) => id.startsWith("sp-")).length === 6, "6 SpendUpdates");
  await until(() => state.alerts.snapshot().length === 3, "3 alerts (50, 90 with 75 skipped, exceeded)");
  const s = state.spend.get(1);
  assert.equal(s.totalSpend, 12);
  assert.equal(s.budget, 10);
  assert.equal(s.percentage, 120);
  assert.deepEqual(s.transactions.map((x) => x.eventId), ["sp-5", "sp-4", "sp-3", "sp-2"], "the last 4, newest first");
  // Herald puts its own `trend` on every SpendUpdate (docs/events.md, spend intelligence; it
  // needs 5 events over 5 minutes before it says more than "stable"), and the SDK follows it; a
  // server without it gets the SDK's own: amounts 1,1,1 then 3,3,3 are "up".
  const lastSpend = got.events.filter(([n]) => n === "SpendUpdate").at(-1)[1];
  assert.ok(["up", "down", "stable"].includes(lastSpend.trend), `Herald's SpendUpdate carries a trend: ${JSON.stringify(lastSpend)}`);
  assert.equal(s.trend, lastSpend.trend, "the SDK follows the server's trend");
  const own = new HeraldState({ spend: { recent: 4 } });
  for (const [name, e] of got.events.filter(([n]) => n === "SpendUpdate")) {
    const { trend: _t, ...withoutTrend } = e;
    own.apply(name, withoutTrend);
  }
  assert.equal(own.spend.get(1).trend, "up", "without the server's trend the SDK computes its own");
  assert.equal(s.severity, "critical");
  const alerts = state.alerts.snapshot();
  assert.deepEqual(alerts.map((a) => a.threshold), [100, 90, 50], "newest first");
  assert.deepEqual(alerts.map((a) => a.severity), ["critical", "critical", "info"]);
  const before = state.alerts.snapshot();
  state.alerts.dismiss(alerts[0].eventId);
  assert.notEqual(state.alerts.snapshot(), before, "a new snapshot after a change");
  assert.equal(state.alerts.snapshot()[0].dismissed, true);

  // A task from queued to completed, with an ETA from its progress rate (source times).
  const task = (type, id, progress, time) => post(type, id, { taskId: "batch-1", virtualKeyId: 1, taskType: "batch", progress }, time);
  await task("TaskProgress", "tk-1", 10, "2026-11-22T10:00:00Z");
  await task("TaskProgress", "tk-2", 50, "2026-11-22T10:00:10Z");
  await until(() => state.tasks.snapshot()[0]?.progress === 50, "task at 50 %");
  let [tk] = state.tasks.snapshot();
  assert.equal(tk.status, "running");
  assert.equal(tk.etaMs, 12_500, "40 points in 10 s: 50 more take 12.5 s");
  await task("TaskCompleted", "tk-3", undefined, "2026-11-22T10:00:15Z");
  await until(() => state.tasks.snapshot()[0]?.status === "completed", "task completed");
  [tk] = state.tasks.snapshot();
  assert.equal(tk.progress, 100);
  assert.equal(state.tasks.sweep(now + 999), 0, "kept until cleanupAfterMs");
  assert.equal(state.tasks.sweep(now + 1000), 1, "cleaned up after it");
  assert.equal(state.tasks.snapshot().length, 0);

  // A provider turning unhealthy; models discovered.
  await post("ProviderHealthChanged", "ph-1", { providerId: 3, providerName: "openai", status: "Healthy", latencyMs: 120 });
  await post("ProviderHealthChanged", "ph-2", { providerId: 3, providerName: "openai", status: "Unhealthy", error: "timeouts" });
  await post("ModelsDiscovered", "md-1", { providerId: 3, providerName: "openai", models: ["gpt-4o", { id: "o3" }] });
  await until(() => state.providers.snapshot().get(3)?.status === "unhealthy" && state.models.snapshot().length === 1, "provider and models");
  const p = state.providers.snapshot().get(3);
  assert.equal(p.error, "timeouts");
  assert.deepEqual(p.history.map((h) => h.status), ["healthy"]);
  assert.deepEqual(state.models.snapshot()[0].models, ["gpt-4o", "o3"]);
  assert.equal(new Set(got.ids).size, got.ids.length, "no event twice");

  // save() and load() through JSON (what a page keeps across a reload) give the same state.
  const copy = new HeraldState();
  copy.load(JSON.parse(JSON.stringify(state.save())));
  const json = (x) => JSON.parse(JSON.stringify(x)); // fields set to undefined are not kept
  assert.deepEqual(json(copy.spend.get(1)), json(state.spend.get(1)));
  assert.deepEqual(json(copy.alerts.snapshot()), json(state.alerts.snapshot()));
  assert.deepEqual(json(copy.providers.snapshot().get(3)), json(state.providers.snapshot().get(3)));
  assert.deepEqual(json(copy.models.snapshot()), json(state.models.snapshot()));
  assert.ok(copy.spend.get(1).transactions.length === 4 && copy.alerts.snapshot().length === 3);
  copy.dispose();
  state.dispose();
});

test("standalone: a page reload with storage resumes where it stopped, nothing lost or repeated", async (t) => {
  const f = new Fixture();
  t.after(() => f.cleanup());
  const { url, demo, post } = await standalone(f);
  const storage = memoryStorage();
  const spend = (i) => post("SpendUpdated", `rl-${i}`, { keyId: 1, amount: 0.01, newTotalSpend: i / 100 });

  // The first page: 3 events, then it goes away.
  const first = new HeraldClient({ url, key: demo, storage });
  const a = record(first);
  await first.start();
  for (let i = 1; i <= 3; i++) await spend(i);
  await until(() => a.ids.length === 3, "3 events on the first page");
  const cursorAfter3 = first.cursor("events");
  await first.stop();
  assert.ok([...storage.map.keys()].some((k) => k.includes(":cursor:events")), "cursor stored");

  // Sent while no page is open.
  for (let i = 4; i <= 6; i++) await spend(i);

  // The reloaded page: the stored cursor brings exactly the 3 it missed, then live ones.
  const second = new HeraldClient({ url, key: demo, storage });
  const b = record(second);
  await second.start();
  await spend(7);
  await until(() => b.ids.length >= 4, "missed and live events on the second page");
  await sleep(500);
  assert.deepEqual(b.ids, ["rl-4", "rl-5", "rl-6", "rl-7"]);
  await second.stop();

  // A page whose stored cursor is older than its stored ids (written at different moments, or
  // the cursor of another tab): the replay repeats events it already had; the SDK drops them.
  const third = new HeraldClient({ url, key: demo, storage, cursors: { events: cursorAfter3 } });
  const c = record(third);
  await third.start();
  await spend(8);
  await until(() => c.ids.length >= 1, "the live event on the third page");
  await sleep(500);
  assert.deepEqual(c.ids, ["rl-8"], "rl-4..rl-7 were replayed by the server and dropped as seen");
  await third.stop();
});

test("standalone: a close the server forbids reconnecting (key deleted) ends for good; a wrong key is refused", async (t) => {
  const f = new Fixture();
  t.after(() => f.cleanup());
  const { url, demo, post } = await standalone(f);
  const client = new HeraldClient({ url, key: demo, reconnect: { initialDelayMs: 50 } });
  const got = record(client);
  await client.start();
  await post("VirtualKeyDeleted", "kd-1", { keyId: 1 });
  await until(() => client.status === "disconnected", "disconnected");
  await sleep(1000);
  assert.equal(client.status, "disconnected", "no reconnect attempt");
  assert.ok(!got.statuses.includes("reconnecting"), `statuses: ${got.statuses.join(",")}`);
  assert.match(client.hubStatus("events").error ?? "", /deleted/);

  const wrong = new HeraldClient({ url, key: "condt_wrongwrongwrongwrongwrongwrong12" });
  await assert.rejects(wrong.start(), /401/);
  assert.equal(wrong.status, "disconnected");
});

test("two nodes behind haproxy: a node killed, the SDK reconnects to the other and resumes; every transport order", async (t) => {
  const f = new Fixture();
  t.after(() => f.cleanup());
  const db = f.database();
  const key = createKey(db, 9, { budget: "1000000" });
  const consumer = await f.herald("consume", f.env(db, { HERALD_NODE_ID: "consumer" }));
  const a = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-a", HERALD_LONG_POLL_TIMEOUT: "3s" }));
  const b = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-b", HERALD_LONG_POLL_TIMEOUT: "3s" }));
  for (const n of [consumer, a, b]) await f.ready(n.url);
  const { url: lb } = await f.haproxy([a.url, b.url].map((u) => u.replace("http://", "")));

  const clients = [
    ["default", undefined, "WebSocketTransport"],
    ["sse-first", ["ServerSentEvents", "LongPolling"], "ServerSentEventsTransport"],
    ["longpolling", ["LongPolling"], "LongPollingTransport"],
  ].map(([name, transports, expected]) => {
    const client = new HeraldClient({ url: lb, key, hubs: ["spend", "events"], transports, reconnect: { initialDelayMs: 100, maxDelayMs: 1000 } });
    t.after(() => client.stop());
    return { name, client, expected, got: record(client) };
  });
  for (const c of clients) {
    await c.client.start();
    assert.equal(c.client.hubStatus("spend").transport, c.expected, c.name);
  }

  const sent = [];
  const send = (n) => {
    for (let i = 0; i < n; i++) {
      const id = `nl-${sent.length + 1}`;
      publish(f, "SpendUpdated", { keyId: 9, amount: 1, newTotalSpend: sent.length + 1 }, { id });
      sent.push(id);
    }
  };
  const spendIds = (c) => c.got.ids.filter((id) => id.startsWith("nl-"));
  send(3);
  for (const c of clients) await until(() => spendIds(c).length >= 3, `${c.name}: first 3`);

  // Kill one node outright, send while clients are away, then the other node too (after the
  // first is back on its address), so that every connection is lost at least once.
  for (const victim of [0, 1]) {
    const node = victim === 0 ? a : b;
    node.child.kill("SIGKILL");
    for (let i = 0; i < 4; i++) {
      send(1);
      await sleep(150);
    }
    for (const c of clients) await until(() => new Set(spendIds(c)).size >= sent.length, `${c.name}: every event after killing node ${victim}`, 45000);
    if (victim === 0) {
      const port = a.url.split(":").at(-1);
      const back = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-a2", HERALD_LISTEN: `127.0.0.1:${port}`, HERALD_LONG_POLL_TIMEOUT: "3s" }));
      await f.ready(back.url);
      await sleep(1500); // haproxy's health check sees it back
    }
  }
  send(3);
  for (const c of clients) await until(() => new Set(spendIds(c)).size >= sent.length, `${c.name}: the last events`, 30000);
  await sleep(1000); // a repeat would show now
  for (const c of clients) {
    const ids = spendIds(c);
    assert.deepEqual(ids, sent, `${c.name}: every event once, in order (the spend and events hubs both deliver them; the SDK passes each once)`);
    assert.ok(c.got.statuses.includes("reconnecting"), `${c.name}: it reconnected: ${c.got.statuses.join(",")}`);
    assert.equal(c.client.status, "connected", c.name);
  }
});
