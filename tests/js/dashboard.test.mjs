// The built-in dashboard (served by `herald serve` with HERALD_DASHBOARD=on, embedded in the
// binary) in Debian's chromium, on the real RabbitMQ, Redis and PostgreSQL: events go through
// the bus (`herald publish` → consumer → Redis → the node), and the test checks what a person
// would look at: the budget bar's width and colour at 50/75/90/100 %, one toast per alert, a
// task from queued to completed with its percentage, a provider turning unhealthy, and the status
// indicator through a node restart with no event lost. Screenshots go to $HERALD_SCREENSHOTS
// (default target/browser-screenshots/), dashboard-*.png.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { Fixture, ROOT, MASTER_KEY, createKey, publish, sleep } from "./helpers.mjs";

const CHROMIUM = process.env.HERALD_CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = process.env.HERALD_SCREENSHOTS ?? join(ROOT, "target", "browser-screenshots");

// The colours of dashboard.css (--herald-ok, -warning, -critical, -exceeded).
const COLOURS = {
  ok: "rgb(47, 158, 91)",
  warning: "rgb(229, 161, 0)",
  critical: "rgb(217, 72, 15)",
  exceeded: "rgb(179, 19, 43)",
};

/** Polls `fn` in the page until it returns something truthy (bounded); returns it. */
async function waitIn(page, what, fn, arg, ms = 20000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await page.evaluate(fn, arg);
    if (last) return last;
    await sleep(100);
  }
  assert.fail(`timed out waiting for ${what}`);
}

test("dashboard in chromium: budget bar, toasts, task, provider, status through a node restart", async (t) => {
  if (!existsSync(CHROMIUM)) {
    assert.fail(`${CHROMIUM} is missing: scripts/test installs Debian's chromium (apt-get install chromium)`);
  }
  const f = new Fixture();
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  t.after(async () => {
    await browser.close().catch(() => {});
    await f.cleanup();
  });
  mkdirSync(SHOTS, { recursive: true });

  const db = f.database();
  const key = createKey(db, 51, { budget: "10.00" });
  const consumer = await f.herald("consume", f.env(db, { HERALD_NODE_ID: "consumer" }));
  const serveEnv = { HERALD_DASHBOARD: "on", HERALD_DRAIN_WINDOW: "0" };
  let node = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-a", ...serveEnv }));
  const plain = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-b" }));
  for (const n of [consumer, node, plain]) await f.ready(n.url);

  // `serve` serves no page unless HERALD_DASHBOARD says so.
  assert.equal((await fetch(`${plain.url}/`)).status, 404, "serve without HERALD_DASHBOARD: no dashboard");
  const index = await fetch(`${node.url}/`);
  assert.equal(index.status, 200);
  assert.match(index.headers.get("content-security-policy") ?? "", /script-src 'self'/);
  assert.ok(node.banner.some((l) => l === `dashboard: http://localhost:${node.url.split(":").at(-1)}/`), node.banner.join(" | "));

  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const consoleLines = [];
  page.on("console", (m) => consoleLines.push(m.text()));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
  await page.goto(`${node.url}/#key=${key}`);
  await waitIn(page, "connected", () => document.querySelector("#status")?.dataset.status === "connected");
  assert.equal(await page.evaluate(() => location.hash), "", "the key is taken out of the address bar");
  assert.equal(await page.evaluate(() => document.querySelector("#view").textContent), "key view");

  let spent = 0;
  let n = 0;
  const spend = (amount) => {
    spent = Math.round((spent + amount) * 100) / 100;
    n++;
    publish(f, "SpendUpdated", { keyId: 51, amount, newTotalSpend: spent, model: "gpt-4o", provider: "openai" }, { id: `db-spend-${n}` });
    return `db-spend-${n}`;
  };

  // The bar at 50, 75, 90 and 100 %: width (rendered, after its transition) and colour.
  for (const [amount, pct, level] of [[5, 50, "ok"], [2.5, 75, "warning"], [1.5, 90, "critical"], [1, 100, "exceeded"]]) {
    spend(amount);
    const bar = await waitIn(page, `the bar at ${pct} %`, (p) => {
      const card = document.querySelector('.card[data-key="51"]');
      const fill = card?.querySelector(".fill");
      if (!fill || card.querySelector(".bar").getAttribute("aria-valuenow") !== String(p)) return null;
      const w = fill.getBoundingClientRect().width / card.querySelector(".bar").getBoundingClientRect().width;
      // Wait out the width and colour transitions.
      if (fill.getAnimations().length > 0) return null;
      return { ratio: w, colour: getComputedStyle(fill).backgroundColor, level: card.dataset.level, text: card.querySelector(".amount").textContent };
    }, pct);
    assert.equal(bar.level, level, `level at ${pct} %`);
    assert.equal(bar.colour, COLOURS[level], `colour at ${pct} % (${level})`);
    assert.ok(Math.abs(bar.ratio - pct / 100) <= 0.01, `width ${bar.ratio} at ${pct} %`);
    assert.match(bar.text, new RegExp(`of 10\\.00 · ${pct}%`), bar.text);
    await sleep(400); // let the toast slide in before the picture
    await page.screenshot({ path: join(SHOTS, `dashboard-budget-${pct}.png`) });
  }

  // One toast per alert (50 info, 75 warning, 90 and 100 critical), also after a redelivery.
  publish(f, "SpendUpdated", { keyId: 51, amount: 1, newTotalSpend: 10 }, { id: `db-spend-${n}` }); // the same id again
  await sleep(1500);
  const shown = await page.evaluate(() => window.heraldDashboard.toasts);
  assert.equal(shown.length, 4, `toasts shown: ${shown.join(", ")}`);
  assert.equal(new Set(shown).size, 4, "four different alerts");
  // Info toasts leave after 10 s; warning and critical ones stay until dismissed.
  const toasts = await page.evaluate(() => [...document.querySelectorAll("#toasts .toast")].map((e) => ({ id: e.dataset.alert, cls: e.className, colour: getComputedStyle(e).backgroundColor })));
  assert.deepEqual(toasts.slice(0, 3).map((x) => x.cls.replace("toast ", "")), ["sev-critical", "sev-critical", "sev-warning"], "newest first, severity colours");
  assert.deepEqual(toasts.map((x) => x.id), [...shown].reverse().slice(0, toasts.length), "the toasts on screen are the alerts, once each");
  assert.equal(toasts[0].colour, COLOURS.exceeded);
  assert.equal(toasts[2].colour, COLOURS.warning);
  assert.equal(await page.evaluate(() => document.querySelectorAll("#alerts li").length), 4);

  // A task from queued to completed, with its percentage.
  const taskRow = (want) => waitIn(page, `task ${JSON.stringify(want)}`, (w) => {
    const row = document.querySelector('.task[data-task="vid-51"]');
    if (!row || row.dataset.status !== w.status || row.querySelector(".pct").textContent !== w.pct) return null;
    return { badge: row.querySelector(".badge").textContent, meta: row.querySelector(".meta").textContent, width: row.querySelector(".progress > div").style.width };
  }, want);
  publish(f, "VideoGenerationRequested", { RequestId: "vid-51", VirtualKeyId: 51, Model: "veo-3", Prompt: "a cat surfing" }, { id: "db-task-1", envelope: "masstransit" });
  let row = await taskRow({ status: "pending", pct: "0%" });
  assert.equal(row.badge, "pending");
  publish(f, "VideoGenerationProgress", { RequestId: "vid-51", Progress: 40, Message: "rendering frames" }, { id: "db-task-2", envelope: "masstransit" });
  row = await taskRow({ status: "running", pct: "40%" });
  assert.equal(row.width, "40%");
  await page.screenshot({ path: join(SHOTS, "dashboard-task-running.png") });
  publish(f, "VideoGenerationCompleted", { RequestId: "vid-51", VideoUrl: "https://cdn.example/v.mp4" }, { id: "db-task-3", envelope: "masstransit" });
  row = await taskRow({ status: "completed", pct: "100%" });
  assert.equal(row.meta, "done");

  // A provider turning unhealthy.
  publish(f, "ProviderHealthChanged", { providerId: 7, providerName: "anthropic", status: "Healthy", latencyMs: 140 }, { id: "db-ph-1" });
  await waitIn(page, "provider healthy", () => document.querySelector('.provider[data-provider="7"]')?.dataset.status === "healthy");
  publish(f, "ProviderHealthChanged", { providerId: 7, providerName: "anthropic", status: "Unhealthy", error: "connection refused" }, { id: "db-ph-2" });
  const provider = await waitIn(page, "provider unhealthy", () => {
    const r = document.querySelector('.provider[data-provider="7"]');
    return r?.dataset.status === "unhealthy" && { text: r.textContent, colour: getComputedStyle(r.querySelector(".badge")).backgroundColor };
  });
  assert.match(provider.text, /connection refused/);
  assert.match(provider.text, /was healthy/);
  assert.equal(provider.colour, COLOURS.exceeded);
  publish(f, "ModelsDiscovered", { providerId: 7, providerName: "anthropic", models: ["claude-4", { id: "claude-4-mini" }] }, { id: "db-md-1" });
  await waitIn(page, "models", () => document.querySelector("#models li")?.textContent.includes("claude-4-mini"));
  await page.screenshot({ path: join(SHOTS, "dashboard-overview.png") });

  // The node restarts: the indicator shows it, events sent meanwhile arrive once after it.
  const port = node.url.split(":").at(-1);
  node.child.kill("SIGKILL");
  await waitIn(page, "reconnecting", () => document.querySelector("#status").dataset.status === "reconnecting");
  await page.screenshot({ path: join(SHOTS, "dashboard-reconnecting.png") });
  const whileDown = [];
  for (let i = 0; i < 5; i++) whileDown.push(spend(0.1));
  node = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-a2", HERALD_LISTEN: `127.0.0.1:${port}`, ...serveEnv }));
  await f.ready(node.url);
  await waitIn(page, "connected again", () => document.querySelector("#status").dataset.status === "connected", undefined, 30000);
  const after = spend(0.1);
  const received = await waitIn(page, "every event", (ids) => {
    const r = window.heraldDashboard.received;
    return ids.every((id) => r.includes(id)) && r;
  }, [...whileDown, after]);
  await sleep(1000); // a repeat would show now
  const final = await page.evaluate(() => ({ received: window.heraldDashboard.received, history: window.heraldDashboard.statusHistory, amount: document.querySelector('.card[data-key="51"] .amount').textContent }));
  const spends = final.received.filter((id) => id.startsWith("db-spend-"));
  assert.deepEqual(spends, Array.from({ length: n }, (_, i) => `db-spend-${i + 1}`), "every spend event once, in order");
  assert.equal(final.received.length, new Set(final.received).size, "no event twice");
  assert.ok(received.length >= n);
  assert.deepEqual(final.history, ["connecting", "connected", "reconnecting", "connected"], "the status indicator's states");
  assert.match(final.amount, /^10\.60 of 10\.00 · 106%$/);
  await page.screenshot({ path: join(SHOTS, "dashboard-after-restart.png") });

  // The page goes away and comes back in the same tab (as a reload): it comes back with its
  // state (saved in sessionStorage with its cursor), resumes after that cursor, and the event
  // sent while it was gone arrives once.
  await page.goto("about:blank");
  const duringReload = spend(0.1);
  await page.goto(`${node.url}/`);
  await waitIn(page, "connected after the reload", () => document.querySelector("#status").dataset.status === "connected");
  const reloaded = await waitIn(page, "the event sent during the reload", (id) => window.heraldDashboard.received.includes(id) && {
    received: window.heraldDashboard.received,
    amount: document.querySelector('.card[data-key="51"] .amount').textContent,
    tasks: document.querySelectorAll(".task").length,
    providers: document.querySelector('.provider[data-provider="7"]')?.dataset.status,
    alerts: document.querySelectorAll("#alerts li").length,
  }, duringReload);
  await sleep(1000);
  const afterReload = await page.evaluate(() => window.heraldDashboard.received);
  assert.ok(!afterReload.some((id) => final.received.includes(id) && id !== duringReload), `nothing from before the reload again: ${afterReload.join(",")}`);
  assert.equal(afterReload.filter((id) => id === duringReload).length, 1);
  assert.match(reloaded.amount, /^10\.70 of 10\.00 · 107%$/);
  assert.equal(reloaded.alerts, 4, "the alert list is back");
  assert.equal(reloaded.providers, "unhealthy", "provider health is back");
  await page.screenshot({ path: join(SHOTS, "dashboard-after-reload.png") });
  assert.deepEqual(consoleLines.filter((l) => l.startsWith("pageerror")), [], consoleLines.join("\n"));

  // The master key, pasted into the field: the admin view, one bar per key.
  const other = createKey(db, 52, { budget: "20.00" });
  assert.ok(other);
  const admin = await browser.newPage({ viewport: { width: 1280, height: 700 } });
  await admin.goto(`${node.url}/`);
  await admin.fill("#key", MASTER_KEY);
  await admin.click("#connect-btn");
  await waitIn(admin, "admin connected", () => document.querySelector("#status").dataset.status === "connected");
  assert.equal(await admin.evaluate(() => document.querySelector("#view").textContent), "admin view: every key");
  spend(0.1);
  publish(f, "SpendUpdated", { keyId: 52, amount: 16, newTotalSpend: 16 }, { id: "db-other-1" });
  const bars = await waitIn(admin, "two keys' bars", () => {
    const cards = [...document.querySelectorAll(".card")].map((c) => [c.dataset.key, c.dataset.level]);
    return cards.length === 2 && cards;
  });
  assert.deepEqual(bars, [["51", "exceeded"], ["52", "warning"]]);
  await admin.screenshot({ path: join(SHOTS, "dashboard-admin.png") });
});
