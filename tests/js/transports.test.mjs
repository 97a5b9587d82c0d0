// Server-Sent Events and long polling with the stock @microsoft/signalr client, through haproxy
// round-robin over two `herald serve` nodes (no sticky sessions) with a consumer on the real
// RabbitMQ, Redis and PostgreSQL. haproxy's log shows a connection's requests landing on both
// nodes; every event arrives once with its fields; a hub method's answer comes back; and when the
// node holding a connection is killed, the client reconnects by itself and Resume(cursor) brings
// every event once.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as signalR from "@microsoft/signalr";
import { Fixture, createKey, publish, until, sleep, resumeAfterReconnect } from "./helpers.mjs";

const TRANSPORTS = [
  ["LongPolling", signalR.HttpTransportType.LongPolling, "long_polling"],
  ["ServerSentEvents", signalR.HttpTransportType.ServerSentEvents, "server_sent_events"],
];

/** Two serve nodes, a consumer and haproxy; a short poll timeout so a dead holder shows soon. */
async function cluster(f, db) {
  const consumer = await f.herald("consume", f.env(db, { HERALD_NODE_ID: "consumer" }));
  const env = { HERALD_LONG_POLL_TIMEOUT: "3s", HERALD_DRAIN_WINDOW: "0" };
  const a = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-a", ...env }));
  const b = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-b", ...env }));
  for (const n of [consumer, a, b]) await f.ready(n.url);
  const lb = await f.haproxy([a.url, b.url].map((u) => u.replace("http://", "")));
  return { a, b, lb };
}

/** `herald_transport_connections_total{transport=...}` of one node. */
async function opened(node, label) {
  const text = await (await fetch(`${node.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith("herald_transport_connections_total{") && l.includes(`transport="${label}"`));
  return line ? Number(line.split(" ").at(-1)) : 0;
}

for (const [name, transport, label] of TRANSPORTS) {
  test(`stock client over ${name}: requests on both nodes, events once with their fields, methods answered`, async (t) => {
    const f = new Fixture();
    t.after(() => f.cleanup());
    const db = f.database();
    const key = createKey(db, 21, { budget: "1000" });
    const { a, b, lb } = await cluster(f, db);

    const conn = f.track(new signalR.HubConnectionBuilder()
      .withUrl(`${lb.url}/hubs/spend`, { accessTokenFactory: () => key, transport })
      .configureLogging(signalR.LogLevel.None)
      .build());
    const received = [];
    conn.on("SpendUpdate", (e) => received.push(e));
    await conn.start();
    assert.equal((await opened(a, label)) + (await opened(b, label)), 1, `one ${name} connection was started`);

    for (let i = 1; i <= 5; i++) {
      publish(f, "SpendUpdated", { keyId: 21, amount: 2, newTotalSpend: 2 * i, model: "gpt-4o", provider: "openai" }, { id: `tr-${label}-${i}` });
    }
    await until(() => received.length >= 5, `5 SpendUpdate over ${name}`, 30000);
    await sleep(500); // a duplicate would show up now
    assert.deepEqual(received.map((e) => e.eventId), [1, 2, 3, 4, 5].map((i) => `tr-${label}-${i}`), "each event once, in order");
    assert.deepEqual(received.map((e) => e.totalSpend), [2, 4, 6, 8, 10]);
    assert.ok(received.every((e) => e.virtualKeyId === 21 && e.budget === 1000 && e.model === "gpt-4o" && typeof e.cursor === "string"),
      JSON.stringify(received[0]));

    // A method call: the invocation goes out in a POST, its completion comes back on the stream.
    const result = await conn.invoke("Resume", received.at(-1).cursor);
    assert.deepEqual(result, { replayed: 0 });
    await conn.stop();

    // No sticky sessions: this one connection's requests were spread over both nodes.
    const requests = lb.log.filter((l) => /(GET|POST|DELETE) \/hubs\/spend\b/.test(l) && !/negotiate/.test(l));
    const nodes = new Set(requests.map((l) => l.match(/ gateways\/(node\d) /)?.[1]).filter(Boolean));
    assert.deepEqual([...nodes].sort(), ["node0", "node1"], `requests on both nodes:\n${requests.join("\n")}`);
  });

  test(`stock client over ${name}: the node holding the connection is killed; reconnect + Resume loses nothing`, async (t) => {
    const f = new Fixture();
    t.after(() => f.cleanup());
    const db = f.database();
    const key = createKey(db, 22, { budget: "1000000" });
    const { a, b, lb } = await cluster(f, db);

    const conn = f.track(new signalR.HubConnectionBuilder()
      .withUrl(`${lb.url}/hubs/spend`, { accessTokenFactory: () => key, transport })
      .withAutomaticReconnect([0, 200, 500, 1000, 1000, 1000, 2000, 2000, 2000, 2000, 2000, 2000])
      .configureLogging(signalR.LogLevel.None)
      .build());
    const { received, resumes } = resumeAfterReconnect(conn);
    await conn.start();

    const sent = [];
    const send = (n) => {
      for (let i = 0; i < n; i++) {
        const id = `kill-${label}-${sent.length + 1}`;
        publish(f, "SpendUpdated", { keyId: 22, amount: 1, newTotalSpend: sent.length + 1 }, { id });
        sent.push(id);
      }
    };
    send(5);
    await until(() => received.length >= 5, "the first 5 events", 30000);

    // The holder is the node that started the connection.
    const holder = (await opened(a, label)) === 1 ? a : b;
    assert.equal((await opened(holder, label)), 1, "one node holds the connection");
    holder.child.kill("SIGKILL");
    for (let i = 0; i < 5; i++) {
      send(1);
      await sleep(200);
    }
    await until(() => resumes.length >= 1, "onreconnected -> Resume", 60000);
    send(5);
    await until(() => new Set(received).size >= sent.length, `all ${sent.length} events; got ${received.join(",")}`, 30000);
    await sleep(1000);
    assert.deepEqual([...received].sort(), [...sent].sort(), "every event of the key");
    assert.equal(received.length, new Set(received).size, `no duplicates: ${received.join(",")}`);
    const survivor = holder === a ? b : a;
    // At least one: an attempt whose handshake POST still went to the dead node is retried.
    assert.ok((await opened(survivor, label)) >= 1, "the client reconnected over the same transport to the surviving node");
  });
}

test("revocation over Server-Sent Events and long polling: a disabled key's connections close, and it cannot start again", async (t) => {
  const f = new Fixture();
  t.after(() => f.cleanup());
  const db = f.database();
  const key = createKey(db, 23, { budget: "100" });
  const { lb } = await cluster(f, db);
  const closes = [];
  for (const [name, transport] of TRANSPORTS) {
    const conn = f.track(new signalR.HubConnectionBuilder()
      .withUrl(`${lb.url}/hubs/notifications`, { accessTokenFactory: () => key, transport })
      .configureLogging(signalR.LogLevel.None)
      .build());
    closes.push(new Promise((resolve) => conn.onclose((e) => resolve(`${name}: ${e}`))));
    await conn.start();
  }
  publish(f, "VirtualKeyUpdated", { keyId: 23, isEnabled: false, changedProperties: ["IsEnabled"] }, { id: "tr-revoke" });
  const reasons = await Promise.race([Promise.all(closes), sleep(30000).then(() => "timeout")]);
  assert.notEqual(reasons, "timeout", "both connections of the disabled key were closed");
  for (const r of reasons) assert.match(r, /disabled/, r);
  for (const [, transport] of TRANSPORTS) {
    const again = new signalR.HubConnectionBuilder()
      .withUrl(`${lb.url}/hubs/notifications`, { accessTokenFactory: () => key, transport })
      .configureLogging(signalR.LogLevel.None)
      .build();
    await assert.rejects(again.start(), /401|Unauthorized|disabled/);
  }
});
