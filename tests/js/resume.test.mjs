// The stock @microsoft/signalr client resuming after withAutomaticReconnect (issue 4): the node it
// is on drains (SIGTERM: Close with allowReconnect), the client reconnects through haproxy to the
// other node and, from onreconnected, invokes Resume with the cursor it had when the connection dropped. Every event of its key arrives
// exactly once, including those published while it was away (docs/protocol.md, cursors and resume:
// live events that arrive before the Resume call stay ahead of the replay).
import { test } from "node:test";
import assert from "node:assert/strict";
import * as signalR from "@microsoft/signalr";
import { Fixture, createKey, publish, until, sleep, resumeAfterReconnect } from "./helpers.mjs";

test("stock client: automatic reconnect to another node, then Resume(cursor) loses nothing", async (t) => {
  const f = new Fixture();
  t.after(() => f.cleanup());
  const db = f.database();
  const key = createKey(db, 7, { budget: "1000000" });
  const consumer = await f.herald("consume", f.env(db, { HERALD_NODE_ID: "consumer" }));
  const drain = { HERALD_DRAIN_WINDOW: "1s" };
  const a = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-a", ...drain }));
  const b = await f.herald("serve", f.env(db, { HERALD_NODE_ID: "gateway-b", ...drain }));
  for (const n of [consumer, a, b]) await f.ready(n.url);
  const { url: lb, log } = await f.haproxy([a.url, b.url].map((u) => u.replace("http://", "")));

  const conn = f.track(new signalR.HubConnectionBuilder()
    .withUrl(`${lb}/hubs/spend`, { accessTokenFactory: () => key })
    .withAutomaticReconnect([0, 200, 500, 1000, 1000, 1000, 2000, 2000, 2000, 2000])
    .configureLogging(signalR.LogLevel.None)
    .build());
  const seen = resumeAfterReconnect(conn);
  const { received, resumes } = seen;
  await conn.start();

  const sent = [];
  const send = (n) => {
    for (let i = 0; i < n; i++) {
      const id = `rs-${sent.length + 1}`;
      publish(f, "SpendUpdated", { keyId: 7, amount: 1, newTotalSpend: sent.length + 1 }, { id });
      sent.push(id);
    }
  };
  send(5);
  await until(() => received.length >= 5, "the first 5 events");
  assert.ok(seen.lastCursor, "events carry a cursor");

  // The node holding the WebSocket (haproxy's log names it) drains.
  // Connections that started: a WebSocket upgrade (101), or, when a WebSocket attempt failed while
  // the node went down, the fallback transport's first GET (200) that the client moved on to.
  const upgrades = () => log.filter((l) => / (101|200) .* GET \/hubs\/spend\b/.test(l));
  const first = upgrades().at(-1)?.match(/ gateways\/(node\d) /)?.[1];
  assert.ok(first, `haproxy logged the upgrade:\n${log.join("\n")}`);
  const draining = first === "node0" ? a : b;
  draining.child.kill("SIGTERM");
  // Published while the client is being closed, away, and reconnecting.
  for (let i = 0; i < 10; i++) {
    send(1);
    await sleep(100);
  }
  await until(() => resumes.length >= 1, "onreconnected -> Resume", 30000);
  send(5);
  await until(() => new Set(received).size >= sent.length, `all ${sent.length} events; got ${received.join(",")}`, 30000);
  await sleep(1000); // a duplicate would show up now

  assert.deepEqual([...received].sort(), [...sent].sort(), "every event of the key");
  assert.equal(received.length, new Set(received).size, `no duplicates: ${received.join(",")}`);
  const second = upgrades().at(-1)?.match(/ gateways\/(node\d) /)?.[1];
  assert.notEqual(second, first, `reconnected through haproxy to the other node:\n${log.join("\n")}`);
  assert.ok(resumes[0] && typeof resumes[0].replayed === "number", `Resume answered ${JSON.stringify(resumes[0])}`);
  await new Promise((r) => (draining.child.exitCode !== null ? r() : draining.child.once("exit", r)));
  assert.equal(draining.child.exitCode, 0, "the drained node exits 0");
});
