// The MessagePack hub protocol with the stock client (@microsoft/signalr 8 and its
// @microsoft/signalr-protocol-msgpack) and Python's signalrcore (its MessagePackHubProtocol), through haproxy round-robin over two `herald serve` nodes
// and a consumer on the real RabbitMQ, Redis and PostgreSQL: bus events with their fields (money
// as exact decimal strings, the cursor), methods with results and errors, a cursor resumed on the
// other transport; and MessagePack over Server-Sent Events refused with a clear message
// (docs/protocol.md, "MessagePack"; docs/compatibility.md).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { existsSync } from "node:fs";
import { join } from "node:path";
import * as signalR from "@microsoft/signalr";
import { MessagePackHubProtocol } from "@microsoft/signalr-protocol-msgpack";
import { Fixture, ROOT, createKey, publish, until, sleep } from "./helpers.mjs";

const PYTHON = process.env.HERALD_PYTHON ?? join(ROOT, "target", "py-venv", "bin", "python");
const CLIENT = join(ROOT, "tests", "python", "client.py");

async function cluster(f, db) {
  const consumer = await f.herald("consume", f.env(db, { HERALD_NODE_ID: "consumer" }));
  const a = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-a" }));
  const b = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-b" }));
  for (const n of [consumer, a, b]) await f.ready(n.url);
  return f.haproxy([a.url, b.url].map((u) => u.replace("http://", "")));
}

function connect(f, url, key, transport) {
  return f.track(new signalR.HubConnectionBuilder()
    .withUrl(url, { accessTokenFactory: () => key, transport })
    .withHubProtocol(new MessagePackHubProtocol())
    .configureLogging(signalR.LogLevel.None)
    .build());
}

const TRANSPORTS = [
  ["WebSockets", signalR.HttpTransportType.WebSockets],
  ["LongPolling", signalR.HttpTransportType.LongPolling],
];

test("MessagePack over WebSockets and long polling: bus events with exact decimals and cursors, method results and errors", async (t) => {
  const f = new Fixture();
  t.after(() => f.cleanup());
  const db = f.database();
  const lb = await cluster(f, db);
  let keyId = 60;
  for (const [name, transport] of TRANSPORTS) {
    keyId += 1;
    const key = createKey(db, keyId, { budget: "100.00" });
    const conn = connect(f, `${lb.url}/hubs/spend`, key, transport);
    const events = [];
    conn.on("SpendUpdate", (e) => events.push(e));
    await conn.start();
    assert.equal(conn.connectionId !== null, true);
    // Exact digits on the bus: money arrives as the same digits, as strings.
    const totals = ["6.50", "13.00", "19.5"];
    totals.forEach((total, i) => publish(f, "SpendUpdated",
      `{"keyId":${keyId},"amount":0.000123,"newTotalSpend":${total},"model":"gpt-4o"}`,
      { id: `mp-${name}-${i + 1}` }));
    await until(() => events.length >= 3, `3 events over ${name}`, 30000);
    await sleep(300);
    assert.deepEqual(events.map((e) => e.eventId), [1, 2, 3].map((i) => `mp-${name}-${i}`), `${name}: each event once, in order`);
    assert.deepEqual(events.map((e) => e.totalSpend), totals, `${name}: totals as exact decimal strings`);
    assert.ok(events.every((e) => e.newSpend === "0.000123" && e.budget === "100.00"), JSON.stringify(events[0]));
    assert.deepEqual(events.map((e) => e.budgetPercentage), ["6.5", "13", "19.5"], "computed money: strings without trailing zeros");
    assert.ok(events.every((e) => e.virtualKeyId === keyId && e.model === "gpt-4o" && e.timestamp.endsWith("Z")), JSON.stringify(events[0]));
    assert.ok(events.every((e) => typeof e.cursor === "string" && e.cursor.length > 10), "every event has its cursor");
    // A method with a result, and one that fails (a Completion with an error).
    assert.deepEqual(await conn.invoke("Resume", events.at(-1).cursor), { replayed: 0 });
    await assert.rejects(conn.invoke("NoSuchMethod"), /Unknown hub method 'NoSuchMethod'/);
    await assert.rejects(conn.invoke("Resume", "not a cursor"), /invalid cursor/);

    // The cursor is protocol-independent: a JSON connection on the other transport resumes
    // from the first event's cursor and gets the other two, once.
    const other = TRANSPORTS.find(([n]) => n !== name)[1];
    const json = f.track(new signalR.HubConnectionBuilder()
      .withUrl(`${lb.url}/hubs/spend?cursor=${encodeURIComponent(events[0].cursor)}`, { accessTokenFactory: () => key, transport: other })
      .configureLogging(signalR.LogLevel.None)
      .build());
    const replayed = [];
    json.on("SpendUpdate", (e) => replayed.push(e));
    await json.start();
    await until(() => replayed.length >= 2, `replay after ${name}'s cursor`, 20000);
    await sleep(300);
    assert.deepEqual(replayed.map((e) => e.eventId), [`mp-${name}-2`, `mp-${name}-3`]);
    assert.deepEqual(replayed.map((e) => e.totalSpend), [13, 19.5], "JSON carries the same values as numbers");
    await json.stop();
    await conn.stop();
  }
});

test("MessagePack on the task hub: SubscribeToTask's result, the object event and Conduit's positional method", async (t) => {
  const f = new Fixture();
  t.after(() => f.cleanup());
  const db = f.database();
  const lb = await cluster(f, db);
  const keyId = 71;
  const key = createKey(db, keyId);
  const conn = connect(f, `${lb.url}/hubs/tasks`, key, signalR.HttpTransportType.LongPolling);
  const objects = [];
  const positional = [];
  conn.on("VideoGenerationProgress", (e) => objects.push(e));
  conn.on("TaskProgress", (...args) => positional.push(args));
  await conn.start();
  publish(f, "VideoGenerationRequested", { requestId: "mp-vid-1", virtualKeyId: keyId, prompt: "a cat" }, { id: "mp-vid-1-r" });
  publish(f, "VideoGenerationProgress", { requestId: "mp-vid-1", progress: 40, message: "rendering" }, { id: "mp-vid-1-p" });
  await until(() => objects.length >= 1 && positional.length >= 1, "the task event in both forms", 30000);
  assert.equal(objects[0].taskId, "mp-vid-1");
  assert.equal(objects[0].progress, 40);
  assert.equal(typeof objects[0].cursor, "string");
  assert.deepEqual(positional[0], ["mp-vid-1", 40, "rendering"]);
  const state = await conn.invoke("SubscribeToTask", "mp-vid-1");
  assert.equal(state.taskId, "mp-vid-1");
  assert.equal(state.status, "running");
  assert.equal(state.progress, 40);
  assert.equal(state.virtualKeyId, keyId);
  await assert.rejects(conn.invoke("SubscribeToTask", "mp-nope"), /Task not found/);
  await conn.stop();
});

test("MessagePack over Server-Sent Events is refused with a clear message; negotiate offers Binary only where it can be carried", async (t) => {
  const f = new Fixture();
  t.after(() => f.cleanup());
  const db = f.database();
  const lb = await cluster(f, db);
  const key = createKey(db, 81);
  const auth = { Authorization: `Bearer ${key}` };

  const negotiate = await (await fetch(`${lb.url}/hubs/spend/negotiate?negotiateVersion=1`, { method: "POST", headers: auth })).json();
  assert.deepEqual(Object.fromEntries(negotiate.availableTransports.map((t) => [t.transport, t.transferFormats])), {
    WebSockets: ["Text", "Binary"],
    ServerSentEvents: ["Text"],
    LongPolling: ["Text", "Binary"],
  });

  // The stock client itself never asks: negotiate says SSE carries text only.
  const conn = connect(f, `${lb.url}/hubs/spend`, key, signalR.HttpTransportType.ServerSentEvents);
  await assert.rejects(conn.start(), /ServerSentEvents' does not support Binary/);

  // A client that asks anyway gets the handshake error on the event stream, then its end.
  const token = encodeURIComponent(negotiate.connectionToken);
  const stream = await fetch(`${lb.url}/hubs/spend?id=${token}`, { headers: { ...auth, Accept: "text/event-stream" } });
  assert.equal(stream.status, 200);
  const sent = await fetch(`${lb.url}/hubs/spend?id=${token}`, {
    method: "POST", headers: auth, body: JSON.stringify({ protocol: "messagepack", version: 1 }) + "\x1e",
  });
  assert.equal(sent.status, 200);
  let text = "";
  const reader = stream.body.getReader();
  const deadline = Date.now() + 15000;
  for (;;) {
    const next = await Promise.race([reader.read(), sleep(Math.max(0, deadline - Date.now())).then(() => ({ timeout: true }))]);
    if (next.timeout) assert.fail(`the event stream neither refused nor ended: ${text}`);
    if (next.done) break;
    text += Buffer.from(next.value).toString("utf8");
  }
  const data = text.split("\r\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6));
  assert.equal(data.length, 1, text);
  const reply = JSON.parse(data[0].replace(/\x1e$/, ""));
  assert.match(reply.error, /Cannot use the 'messagepack' protocol on the current transport/);
  assert.match(reply.error, /MessagePack cannot be carried over Server-Sent Events/);
});

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

// signalrcore 1.0.2's MessagePack works over WebSockets only: its binary long-polling client
// cannot be constructed (`LongPollingBinaryClient.__init__` calls `super(LongPollingTextClient,
// self)`, a TypeError) and would split binary poll bodies at 0x1e; its Server-Sent Events client
// is text only. docs/compatibility.md lists this.
test("Python signalrcore with MessagePack over WebSockets: bus events with their fields, a method's result", async (t) => {
  assert.ok(existsSync(PYTHON), `${PYTHON} is missing: scripts/test creates it (python3 -m venv, pip install -r tests/python/requirements.txt)`);
  const f = new Fixture();
  t.after(() => f.cleanup());
  const db = f.database();
  const lb = await cluster(f, db);
  let keyId = 90;
  for (const transport of ["WebSockets"]) {
    keyId += 1;
    const key = createKey(db, keyId, { budget: "100" });
    let ready = false;
    const run = python(f, ["--client", "signalrcore", "--protocol", "messagepack", "--url", lb.url, "--key", key, "--transport", transport, "--count", "3"], () => { ready = true; });
    await until(() => ready, `signalrcore (MessagePack) over ${transport} connected`, 45000);
    for (let i = 1; i <= 3; i++) {
      publish(f, "SpendUpdated", `{"keyId":${keyId},"amount":5,"newTotalSpend":${5 * i}.50,"model":"gpt-4o"}`, { id: `pymp-${transport}-${i}` });
    }
    const { code, lines, stderr } = await run;
    assert.equal(code, 0, `signalrcore (MessagePack) over ${transport} exited ${code}: ${stderr}`);
    const events = lines.filter((l) => l.event).map((l) => l.event);
    assert.deepEqual(events.map((e) => e.eventId), [1, 2, 3].map((i) => `pymp-${transport}-${i}`), `${transport}: each event once, in order`);
    assert.deepEqual(events.map((e) => e.totalSpend), ["5.50", "10.50", "15.50"]);
    assert.ok(events.every((e) => e.virtualKeyId === keyId && e.budget === "100" && e.model === "gpt-4o" && typeof e.cursor === "string"), JSON.stringify(events[0]));
    assert.deepEqual(lines.find((l) => "invoked" in l)?.invoked, { replayed: 0 }, `${transport}: Resume answered`);
  }
});
