// Two `herald serve` nodes and one `herald consume` behind haproxy (no sticky sessions): every
// client receives exactly its own key's events, each once, whichever node it landed on.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as signalR from "@microsoft/signalr";
import { Fixture, createKey, publish, collect, until, sleep } from "./helpers.mjs";

test("two gateway nodes and a consumer behind haproxy", async (t) => {
  const f = new Fixture();
  t.after(() => f.cleanup());
  const db = f.database();
  const keys = { 1: createKey(db, 1, { budget: "100" }), 2: createKey(db, 2, { budget: "100" }) };
  const consumer = await f.herald("consume", f.env(db, { HERALD_NODE_ID: "consumer" }));
  const a = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-a" }));
  const b = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-b" }));
  for (const n of [consumer, a, b]) await f.ready(n.url);
  const { url: lb, log } = await f.haproxy([a.url, b.url].map((u) => u.replace("http://", "")));

  // Per key: two clients through haproxy with negotiate (round robin sends the negotiate and the
  // WebSocket that follows to different nodes: the connection token must be accepted by the other
  // node), two through haproxy with skipNegotiation (round robin alternates their WebSockets over
  // the nodes), and one directly on each node.
  const skip = { skipNegotiation: true, transport: signalR.HttpTransportType.WebSockets };
  const routes = [[lb, {}], [lb, {}], [lb, skip], [lb, skip], [a.url, {}], [b.url, {}]];
  const clients = [];
  for (const id of [1, 2]) {
    for (const [base, options] of routes) {
      const conn = f.track(new signalR.HubConnectionBuilder()
        .withUrl(`${base}/hubs/spend`, { accessTokenFactory: () => keys[id], ...options })
        .configureLogging(signalR.LogLevel.None)
        .build());
      const events = collect(conn, ["SpendUpdate", "BudgetAlert"]);
      await conn.start();
      const via = `${base === lb ? "haproxy" : base}${options.skipNegotiation ? " (skipNegotiation)" : ""}`;
      clients.push({ id, via, events });
    }
  }
  // haproxy's own log says which node took each WebSocket upgrade (101) and each negotiate.
  const served = (pattern) => new Set(log.filter((l) => pattern.test(l)).map((l) => l.match(/ gateways\/(\S+) /)?.[1]));
  await until(() => served(/ 101 .* GET \/hubs\/spend$/).size === 2, `WebSockets through haproxy on both nodes; log:\n${log.join("\n")}`);
  assert.equal(log.filter((l) => / 101 .* GET \/hubs\/spend$/.test(l)).length, 8, `8 WebSockets through haproxy; log:\n${log.join("\n")}`);
  assert.equal(log.filter((l) => / 200 .* POST \/hubs\/spend\/negotiate$/.test(l)).length, 4, `4 negotiates through haproxy; log:\n${log.join("\n")}`);
  assert.ok(log.every((l) => !l.includes("condt_")), "haproxy's log must not carry keys");
  const sent = { 1: [], 2: [] };
  for (let i = 0; i < 5; i++) {
    for (const id of [1, 2]) {
      const eventId = `mn-${id}-${i}`;
      publish(f, "SpendUpdated", { keyId: id, amount: 1, newTotalSpend: i + 1 }, { id: eventId });
      sent[id].push(eventId);
    }
  }
  for (const c of clients) {
    await until(() => c.events.filter((e) => e.name === "SpendUpdate").length >= 5, `key ${c.id} via ${c.via}`);
  }
  await sleep(1000); // anything extra would show up now
  for (const c of clients) {
    const spends = c.events.filter((e) => e.name === "SpendUpdate");
    assert.deepEqual(spends.map((e) => e.arg.eventId), sent[c.id], `key ${c.id} via ${c.via}: its own events, once, in order`);
    assert.ok(c.events.every((e) => e.arg.virtualKeyId === c.id), `key ${c.id} got another key's event`);
  }
});
