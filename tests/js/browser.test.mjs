// A real browser (Debian's chromium, driven by playwright-core) on a page served from its own
// origin, with the stock @microsoft/signalr browser bundle, through haproxy round-robin over two
// `herald serve` nodes and a consumer on the real RabbitMQ, Redis and PostgreSQL. Cases: default
// negotiate (WebSockets), each transport forced, WebSockets denied by the proxy so the client
// falls back by itself, a page on an origin that is not allowed, and every node killed in turn
// while clients on each transport are connected, after which Resume brings every event once.
// Screenshots of the page go to target/browser-screenshots/ (HERALD_SCREENSHOTS overrides).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { readFileSync, mkdirSync, existsSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { Fixture, ROOT, createKey, publish, until, sleep } from "./helpers.mjs";

const CHROMIUM = process.env.HERALD_CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = process.env.HERALD_SCREENSHOTS ?? join(ROOT, "target", "browser-screenshots");
const PAGE = readFileSync(join(ROOT, "tests", "js", "browser", "page.html"));
const BUNDLE = readFileSync(join(ROOT, "tests", "js", "node_modules", "@microsoft", "signalr", "dist", "browser", "signalr.js"));

/** Serves the test page and the stock bundle on a port of its own: an origin Herald is not on. */
async function pageServer() {
  const server = createServer((req, res) => {
    if (req.url === "/signalr.js") {
      res.writeHead(200, { "content-type": "text/javascript" });
      res.end(BUNDLE);
    } else {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
      res.end(PAGE);
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

async function metric(node, name, label) {
  try {
    const text = await (await fetch(`${node.url}/metrics`)).text();
    const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes(label));
    return line ? Number(line.split(" ").at(-1)) : 0;
  } catch {
    return 0; // a killed node
  }
}

test("chromium on another origin: every transport, fallback, a refused origin, nodes killed", async (t) => {
  if (!existsSync(CHROMIUM)) {
    assert.fail(`${CHROMIUM} is missing: scripts/test installs Debian's chromium (apt-get install chromium)`);
  }
  const f = new Fixture();
  const allowed = await pageServer();
  const refused = await pageServer();
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  t.after(async () => {
    await browser.close().catch(() => {});
    allowed.server.close();
    refused.server.close();
    await f.cleanup();
  });
  mkdirSync(SHOTS, { recursive: true });

  const db = f.database();
  const key = createKey(db, 31, { budget: "1000" });
  const consumer = await f.herald("consume", f.env(db, { HERALD_NODE_ID: "consumer" }));
  const env = { HERALD_ALLOWED_ORIGINS: allowed.origin, HERALD_LONG_POLL_TIMEOUT: "3s", HERALD_DRAIN_WINDOW: "0" };
  const nodes = [
    await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-a", ...env })),
    await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-b", ...env })),
  ];
  for (const n of [consumer, ...nodes]) await f.ready(n.url);
  const addresses = nodes.map((n) => n.url.replace("http://", ""));
  const lb = await f.haproxy(addresses);
  const noWs = await f.haproxy(addresses, { denyWebSockets: true });

  const page = await browser.newPage({ viewport: { width: 1400, height: 640 } });
  const consoleLines = [];
  page.on("console", (m) => consoleLines.push(m.text()));
  await page.goto(allowed.origin);

  const cases = [
    ["default", lb.url, undefined, "WebSocketTransport"],
    ["websockets", lb.url, "WebSockets", "WebSocketTransport"],
    ["sse", lb.url, "ServerSentEvents", "ServerSentEventsTransport"],
    ["longpolling", lb.url, "LongPolling", "LongPollingTransport"],
    // The proxy answers every WebSocket upgrade 403: the client moves on by itself.
    ["fallback", noWs.url, undefined, "ServerSentEventsTransport"],
  ];
  for (const [name, url, asked, expected] of cases) {
    const r = await page.evaluate(([n, u, k, a]) => window.startClient(n, `${u}/hubs/spend`, k, a), [name, url, key, asked]);
    assert.equal(r.status, "connected", `${name}: ${JSON.stringify(r)}\n${consoleLines.join("\n")}`);
    assert.equal(r.transport, expected, `${name} uses ${expected}`);
  }
  const deniedUpgrades = noWs.log.filter((l) => / 403 .*GET \/hubs\/spend\b/.test(l));
  assert.ok(deniedUpgrades.length >= 1, `the proxy denied the WebSocket attempt:\n${noWs.log.join("\n")}`);

  // A page on an origin not in HERALD_ALLOWED_ORIGINS: refused with the reason, not a hang.
  const other = await browser.newPage({ viewport: { width: 1400, height: 300 } });
  await other.goto(refused.origin);
  const r = await other.evaluate(([u, k]) => window.startClient("refused-origin", `${u}/hubs/spend`, k), [lb.url, key]);
  assert.equal(r.status, "failed");
  assert.match(r.error, /403/, r.error);
  assert.match(r.error, /HERALD_ALLOWED_ORIGINS/, r.error);
  await other.screenshot({ path: join(SHOTS, "refused-origin.png") });

  const sent = [];
  const send = (n) => {
    for (let i = 0; i < n; i++) {
      const id = `br-${sent.length + 1}`;
      publish(f, "SpendUpdated", { keyId: 31, amount: 1, newTotalSpend: sent.length + 1, model: "gpt-4o" }, { id });
      sent.push(id);
    }
  };
  const names = cases.map(([n]) => n);
  const summary = () => page.evaluate(() => window.summary());
  const everyoneHasAll = async () => {
    const s = await summary();
    return names.every((n) => new Set(s[n].events.map((e) => e.eventId)).size >= sent.length);
  };
  const waitAll = async (what) => {
    const deadline = Date.now() + 90000;
    while (Date.now() < deadline) {
      if (await everyoneHasAll()) return;
      await sleep(250);
    }
    assert.fail(`${what}: ${JSON.stringify(await summary(), null, 1)}\n${consoleLines.slice(-30).join("\n")}`);
  };

  send(5);
  await waitAll("the first 5 events on every client");
  let s = await summary();
  for (const n of names) {
    assert.deepEqual(s[n].events.map((e) => e.eventId), sent, `${n}: each event once, in order`);
    assert.ok(s[n].events.every((e, i) => e.totalSpend === i + 1 && e.virtualKeyId === 31 && e.budget === 1000 && e.model === "gpt-4o" && e.cursor === "string"),
      `${n}: fields ${JSON.stringify(s[n].events[0])}`);
  }
  await page.screenshot({ path: join(SHOTS, "connected.png") });

  // Kill each node in turn (bringing the first back on its address first), so that every
  // client, whatever its transport and node, loses its connection at least once.
  for (const victim of [0, 1]) {
    const node = nodes[victim];
    node.child.kill("SIGKILL");
    for (let i = 0; i < 5; i++) {
      send(1);
      await sleep(200);
    }
    await waitAll(`every event after killing node ${victim}`);
    if (victim === 0) {
      const port = node.url.split(":").at(-1);
      nodes[0] = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-a2", HERALD_LISTEN: `127.0.0.1:${port}`, ...env }));
      await f.ready(nodes[0].url);
      await sleep(1500); // haproxy's health check (every 500 ms) sees it back
    }
  }
  send(5);
  await waitAll("the last 5 events");
  await sleep(1000); // a duplicate would show up now
  s = await summary();
  for (const n of names) {
    const ids = s[n].events.map((e) => e.eventId);
    assert.deepEqual([...ids].sort(), [...sent].sort(), `${n}: every event`);
    assert.equal(ids.length, new Set(ids).size, `${n}: no duplicates: ${ids.join(",")}`);
    assert.ok(s[n].resumes.length >= 1 && s[n].resumes.every((r) => typeof r.replayed === "number"),
      `${n}: reconnected and resumed: ${JSON.stringify(s[n].resumes)}`);
    assert.equal(s[n].status, "connected", `${n}: connected at the end`);
  }
  const started = { sse: 0, lp: 0 };
  for (const n of nodes) {
    started.sse += await metric(n, "herald_transport_connections_total", 'transport="server_sent_events"');
    started.lp += await metric(n, "herald_transport_connections_total", 'transport="long_polling"');
  }
  assert.ok(started.sse >= 1 && started.lp >= 1, `the surviving nodes served both fallback transports: ${JSON.stringify(started)}`);
  await page.screenshot({ path: join(SHOTS, "after-node-kills.png") });
});
