// Clients nobody here wrote, through haproxy round-robin over two `herald serve` nodes and a
// consumer on the real RabbitMQ, Redis and PostgreSQL: Python's signalrcore (every transport) and
// pysignalr (WebSockets), and the legacy @aspnet/signalr 1.x. Each receives real events from the
// bus with their fields and invokes a hub method with a result (docs/compatibility.md).
// The Python clients run in the virtual environment scripts/test creates (HERALD_PYTHON).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { createRequire } from "node:module";
import { Fixture, ROOT, createKey, publish, until, sleep } from "./helpers.mjs";

const PYTHON = process.env.HERALD_PYTHON ?? join(ROOT, "target", "py-venv", "bin", "python");
const CLIENT = join(ROOT, "tests", "python", "client.py");
const legacy = createRequire(import.meta.url)("@aspnet/signalr");

async function cluster(f, db) {
  const consumer = await f.herald("consume", f.env(db, { HERALD_NODE_ID: "consumer" }));
  const a = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-a" }));
  const b = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-b" }));
  for (const n of [consumer, a, b]) await f.ready(n.url);
  return f.haproxy([a.url, b.url].map((u) => u.replace("http://", "")));
}

/** Runs tests/python/client.py; resolves with its JSON lines once it exited. */
function python(f, args, onReady) {
  const child = spawn(PYTHON, [CLIENT, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  f.procs.push(child);
  const lines = [];
  let stderr = "";
  child.stderr.on("data", (d) => { stderr = (stderr + d).slice(-3000); });
  createInterface({ input: child.stdout }).on("line", (l) => {
    const v = JSON.parse(l);
    lines.push(v);
    if (v.ready) onReady();
  });
  return new Promise((resolve) => child.on("exit", (code) => resolve({ code, lines, stderr })));
}

const PY_CASES = [
  ["signalrcore", "WebSockets"],
  ["signalrcore", "ServerSentEvents"],
  ["signalrcore", "LongPolling"],
  ["pysignalr", "WebSockets"],
];

test("Python clients: signalrcore on every transport, pysignalr: bus events with their fields, a method's result", async (t) => {
  assert.ok(existsSync(PYTHON), `${PYTHON} is missing: scripts/test creates it (python3 -m venv, pip install -r tests/python/requirements.txt)`);
  const f = new Fixture();
  t.after(() => f.cleanup());
  const db = f.database();
  const lb = await cluster(f, db);
  let keyId = 40;
  for (const [client, transport] of PY_CASES) {
    keyId += 1;
    const key = createKey(db, keyId, { budget: "100" });
    let ready = false;
    const run = python(f, ["--client", client, "--url", lb.url, "--key", key, "--transport", transport, "--count", "3"], () => { ready = true; });
    await until(() => ready, `${client} over ${transport} connected`, 45000);
    for (let i = 1; i <= 3; i++) {
      publish(f, "SpendUpdated", { keyId, amount: 5, newTotalSpend: 5 * i, model: "gpt-4o" }, { id: `py-${client}-${transport}-${i}` });
    }
    const { code, lines, stderr } = await run;
    assert.equal(code, 0, `${client} over ${transport} exited ${code}: ${stderr}`);
    const events = lines.filter((l) => l.event).map((l) => l.event);
    assert.deepEqual(events.map((e) => e.eventId), [1, 2, 3].map((i) => `py-${client}-${transport}-${i}`), `${client}/${transport}: each event once, in order`);
    assert.deepEqual(events.map((e) => e.totalSpend), [5, 10, 15]);
    assert.ok(events.every((e) => e.virtualKeyId === keyId && e.budget === 100 && e.model === "gpt-4o" && typeof e.cursor === "string"), JSON.stringify(events[0]));
    assert.deepEqual(lines.find((l) => "invoked" in l)?.invoked, { replayed: 0 }, `${client}/${transport}: Resume answered`);
  }
});

test("legacy @aspnet/signalr 1.1.4: WebSockets and long polling, bus events and a method's result", async (t) => {
  const f = new Fixture();
  t.after(() => f.cleanup());
  const db = f.database();
  const lb = await cluster(f, db);
  const cases = [["WebSockets", legacy.HttpTransportType.WebSockets], ["LongPolling", legacy.HttpTransportType.LongPolling]];
  let keyId = 50;
  for (const [name, transport] of cases) {
    keyId += 1;
    const key = createKey(db, keyId, { budget: "100" });
    const conn = f.track(new legacy.HubConnectionBuilder()
      .withUrl(`${lb.url}/hubs/spend`, { accessTokenFactory: () => key, transport })
      .configureLogging(legacy.LogLevel.None)
      .build());
    const events = [];
    conn.on("SpendUpdate", (e) => events.push(e));
    await conn.start();
    for (let i = 1; i <= 3; i++) {
      publish(f, "SpendUpdated", { keyId, amount: 5, newTotalSpend: 5 * i }, { id: `legacy-${name}-${i}` });
    }
    await until(() => events.length >= 3, `3 events over ${name}`, 30000);
    await sleep(300);
    assert.deepEqual(events.map((e) => e.eventId), [1, 2, 3].map((i) => `legacy-${name}-${i}`));
    assert.ok(events.every((e) => e.virtualKeyId === keyId && typeof e.cursor === "string"));
    assert.deepEqual(await conn.invoke("Resume", events.at(-1).cursor), { replayed: 0 });
    await conn.stop();
  }
});
