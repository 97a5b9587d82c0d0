// The stock @microsoft/signalr client against herald standalone: first with no configuration
// at all (the README's run command), then on the real RabbitMQ, Redis and PostgreSQL.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as signalR from "@microsoft/signalr";
import { Fixture, createKey, publish, collect, until, sleep, rawSpendClient, MASTER_KEY } from "./helpers.mjs";

function connection(url, hub, key, options = {}) {
  return new signalR.HubConnectionBuilder()
    .withUrl(`${url}${hub}`, { accessTokenFactory: () => key, ...options })
    .configureLogging(signalR.LogLevel.None)
    .build();
}

test("no configuration: the banner's demo key receives an event posted over HTTP", async (t) => {
  const f = new Fixture();
  t.after(() => f.cleanup());
  const { url, banner } = await f.herald(null, {});
  const master = banner.find((l) => l.startsWith("master key: "))?.slice("master key: ".length);
  const demo = banner.find((l) => l.startsWith("demo virtual key"))?.split(": ")[1];
  assert.ok(master && demo, `banner: ${banner.join(" | ")}`);
  const conn = f.track(connection(url, "/hubs/spend", demo));
  const events = collect(conn, ["SpendUpdate", "BudgetAlert"]);
  await conn.start();
  const res = await fetch(`${url}/v1/events`, {
    method: "POST",
    headers: { Authorization: `Bearer ${master}`, "Content-Type": "application/cloudevents+json" },
    body: JSON.stringify({ specversion: "1.0", id: "readme-1", source: "/billing", type: "SpendUpdated", data: { keyId: 1, amount: 6.25, newTotalSpend: 6.25 } }),
  });
  assert.equal(res.status, 202);
  await until(() => events.length >= 2, "SpendUpdate and BudgetAlert");
  assert.equal(events[0].name, "SpendUpdate");
  assert.equal(events[0].arg.totalSpend, 6.25);
  assert.equal(events[0].arg.budgetPercentage, 62.5);
  assert.equal(events[1].name, "BudgetAlert");
  assert.equal(events[1].arg.alertType, "budget_50_percent");
});

for (const skipNegotiation of [false, true]) {
  test(`real components, ${skipNegotiation ? "skipNegotiation" : "negotiate"}: SpendUpdate and one BudgetAlert from RabbitMQ`, async (t) => {
    const f = new Fixture();
    t.after(() => f.cleanup());
    const db = f.database();
    const key = createKey(db, 42, { budget: "10.00" });
    assert.match(key, /^condt_[A-Za-z0-9]{32}$/);
    const { url } = await f.herald("standalone", f.env(db));
    await f.ready(url);
    const options = skipNegotiation ? { skipNegotiation: true, transport: signalR.HttpTransportType.WebSockets } : {};
    const conn = f.track(connection(url, "/hubs/spend", key, options));
    const events = collect(conn, ["SpendUpdate", "BudgetAlert"]);
    await conn.start();
    assert.equal(conn.state, signalR.HubConnectionState.Connected);

    publish(f, "SpendUpdated", { keyId: 42, amount: 6.125, newTotalSpend: 6.125, model: "gpt-4o" }, { id: "js-spend-1", envelope: "masstransit" });
    await until(() => events.length >= 2, "SpendUpdate and BudgetAlert");
    const [spend, alert] = events;
    assert.equal(spend.name, "SpendUpdate");
    assert.equal(spend.arg.eventId, "js-spend-1");
    assert.equal(spend.arg.newSpend, 6.125);
    assert.equal(spend.arg.totalSpend, 6.125);
    assert.equal(spend.arg.budget, 10);
    assert.equal(spend.arg.virtualKeyId, 42);
    assert.equal(typeof spend.arg.cursor, "string");
    assert.equal(alert.name, "BudgetAlert");
    assert.equal(alert.arg.alertType, "budget_50_percent");
    assert.equal(alert.arg.severity, "info");
    assert.equal(alert.arg.sourceEventId, "js-spend-1");

    // The same event again (a redelivery), then a new one below the next threshold.
    publish(f, "SpendUpdated", { keyId: 42, amount: 6.125, newTotalSpend: 6.125 }, { id: "js-spend-1" });
    publish(f, "SpendUpdated", { keyId: 42, amount: 0.5, newTotalSpend: 6.625 }, { id: "js-spend-2" });
    await until(() => events.length >= 3, "the second SpendUpdate");
    await sleep(1000);
    assert.deepEqual(events.map((e) => [e.name, e.arg.eventId]), [
      ["SpendUpdate", "js-spend-1"],
      ["BudgetAlert", alert.arg.eventId],
      ["SpendUpdate", "js-spend-2"],
    ]);
  });
}

test("a wrong key is refused at start()", async (t) => {
  const f = new Fixture();
  t.after(() => f.cleanup());
  const { url } = await f.herald(null, { HERALD_MASTER_KEY: MASTER_KEY });
  const conn = connection(url, "/hubs/spend", "condt_notakey");
  await assert.rejects(conn.start(), /401|Unauthorized/);
});

test("real components: the wire keeps the input's digits; a wrong key is refused on both transports", async (t) => {
  const f = new Fixture();
  t.after(() => f.cleanup());
  const db = f.database();
  const key = createKey(db, 7, { budget: "10.00" });
  const { url } = await f.herald("standalone", f.env(db));
  await f.ready(url);

  await assert.rejects(rawSpendClient(url, "condt_wrongwrongwrongwrongwrongwrong0"), /401/);
  const wrong = connection(url, "/hubs/spend", "condt_wrongwrongwrongwrongwrongwrong0",
    { skipNegotiation: true, transport: signalR.HttpTransportType.WebSockets });
  await assert.rejects(wrong.start());

  const raw = f.track(await rawSpendClient(url, key));
  const conn = f.track(connection(url, "/hubs/spend", key));
  const events = collect(conn, ["SpendUpdate", "BudgetAlert"]);
  await conn.start();
  // Written by hand: JSON.stringify would turn 5.50 into 5.5.
  publish(f, "SpendUpdated", '{"keyId":7,"amount":0.000123,"newTotalSpend":5.50,"requestId":"req-1"}', { id: "js-digits-1" });
  const invocations = () => raw.records.map((r) => JSON.parse(r)).filter((m) => m.type === 1);
  await until(() => invocations().length >= 2 && events.length >= 2, "SpendUpdate and BudgetAlert on both clients");

  const spendText = raw.records.find((r) => /"target":"SpendUpdate"/i.test(r));
  assert.ok(spendText, `raw records: ${raw.records.join(" | ")}`);
  assert.match(spendText, /"newSpend":0\.000123[,}]/);
  assert.match(spendText, /"totalSpend":5\.50[,}]/);
  assert.match(spendText, /"budgetPercentage":55[,}]/);
  const [spend, alert] = events;
  assert.equal(spend.name, "SpendUpdate");
  assert.equal(spend.arg.newSpend, 0.000123);
  assert.equal(spend.arg.totalSpend, 5.5);
  assert.equal(spend.arg.requestId, "req-1");
  assert.equal(alert.name, "BudgetAlert");
  assert.equal(alert.arg.alertType, "budget_50_percent");
  assert.equal(alert.arg.percentage, 55);
  assert.equal(alert.arg.remaining, 4.5);
});
