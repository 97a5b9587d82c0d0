// Every event family through RabbitMQ to the stock @microsoft/signalr client: tasks (object
// events, Conduit's positional methods, SubscribeToTask and its refusals, the admin bypass),
// notifications, the admin hub, and key revocation closing a live connection.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as signalR from "@microsoft/signalr";
import { Fixture, createKey, publish, collect, until, sleep, MASTER_KEY } from "./helpers.mjs";

const connect = (f, url, hub, key) =>
  f.track(new signalR.HubConnectionBuilder()
    .withUrl(`${url}${hub}`, { accessTokenFactory: () => key })
    .configureLogging(signalR.LogLevel.None)
    .build());

test("every family reaches the right hubs with the stock client", async (t) => {
  const f = new Fixture();
  t.after(() => f.cleanup());
  const db = f.database();
  const a = createKey(db, 1, { budget: "10" });
  const b = createKey(db, 2);
  const { url } = await f.herald("standalone", f.env(db));
  await f.ready(url);

  const tasks = connect(f, url, "/hubs/image-generation", a);
  const taskEvents = collect(tasks, ["VideoGenerationRequested", "VideoGenerationProgress", "ImageGenerationCompleted"]);
  const positional = [];
  tasks.on("TaskProgress", (taskId, progress, message) => positional.push(["TaskProgress", taskId, progress, message]));
  tasks.on("TaskCompleted", (taskId, result) => positional.push(["TaskCompleted", taskId, result]));
  tasks.on("TaskFailed", (taskId, error, isRetryable) => positional.push(["TaskFailed", taskId, error, isRetryable]));
  const notes = connect(f, url, "/hubs/notifications", a);
  const noteEvents = collect(notes, ["ProviderHealthChanged", "ModelsDiscovered", "NavigationStateUpdated", "VirtualKeyUpdated", "SpendUpdate"]);
  const other = connect(f, url, "/hubs/tasks", b);
  const otherEvents = collect(other, ["VideoGenerationProgress", "TaskProgress", "TaskCompleted"]);
  const admin = connect(f, url, "/hubs/admin", MASTER_KEY);
  const adminEvents = collect(admin, ["SpendUpdate", "BudgetAlert", "VideoGenerationProgress", "ProviderHealthChanged"]);
  const events = connect(f, url, "/hubs/events", a);
  const all = collect(events, ["SpendUpdate", "BudgetAlert", "VideoGenerationProgress", "TaskProgress", "ProviderHealthChanged"]);
  for (const c of [tasks, notes, other, admin, events]) await c.start();

  publish(f, "VideoGenerationRequested", { requestId: "vid-1", virtualKeyId: 1, prompt: "a cat" }, { id: "js-vr", envelope: "masstransit" });
  publish(f, "VideoGenerationProgress", { requestId: "vid-1", progress: 40, message: "rendering" }, { id: "js-vp" });
  publish(f, "TaskFailed", { taskId: "job-1", virtualKeyId: 1, taskType: "batch", error: "quota", isRetryable: true }, { id: "js-tf" });
  publish(f, "ImageGenerationCompleted", { taskId: "img-1", virtualKeyId: 1, images: ["https://cdn/i.png"] }, { id: "js-ic" });
  publish(f, "ProviderHealthChanged", { providerId: 3, providerName: "openai", status: "unhealthy", error: "timeouts" }, { id: "js-ph" });
  publish(f, "ModelsDiscovered", { providerId: 3, models: ["gpt-4o"] }, { id: "js-md" });
  publish(f, "ModelMappingChanged", { mappingId: 5, modelAlias: "fast", providerId: 3, isEnabled: true, changeType: "Updated" }, { id: "js-mm" });
  publish(f, "SpendUpdated", { keyId: 1, amount: 6, newTotalSpend: 6 }, { id: "js-su" });

  await until(() => positional.length >= 3 && taskEvents.length >= 3, "task events on /hubs/tasks");
  assert.deepEqual(taskEvents.map((e) => [e.name, e.arg.taskId, e.arg.status]), [
    ["VideoGenerationRequested", "vid-1", "pending"],
    ["VideoGenerationProgress", "vid-1", "running"],
    ["ImageGenerationCompleted", "img-1", "completed"],
  ]);
  assert.deepEqual(positional, [
    ["TaskProgress", "vid-1", 40, "rendering"],
    ["TaskFailed", "job-1", "quota", true],
    ["TaskCompleted", "img-1", null],
  ]);
  const state = await tasks.invoke("SubscribeToTask", "vid-1");
  assert.equal(state.status, "running");
  assert.equal(state.progress, 40);
  assert.equal(state.virtualKeyId, 1);
  await assert.rejects(other.invoke("SubscribeToTask", "vid-1"), /Unauthorized access to task/);
  await assert.rejects(other.invoke("SubscribeToTask", "nope"), /Task not found/);
  const adminView = await admin.invoke("SubscribeToTask", "vid-1");
  assert.equal(adminView.taskId, "vid-1", "admins may look at any task");

  await until(() => noteEvents.length >= 4, "notifications");
  assert.deepEqual(noteEvents.map((e) => e.name), ["ProviderHealthChanged", "NavigationStateUpdated", "ModelsDiscovered", "NavigationStateUpdated"]);
  assert.equal(noteEvents[0].arg.status, "unhealthy");
  assert.equal(noteEvents[3].arg.type, "model_mapping");
  await until(() => all.some((e) => e.name === "BudgetAlert"), "everything on /hubs/events");
  assert.ok(all.some((e) => e.name === "VideoGenerationProgress" && typeof e.arg.cursor === "string"), "objects with cursor on /hubs/events");
  await until(() => adminEvents.some((e) => e.name === "BudgetAlert"), "the admin hub");
  assert.ok(adminEvents.some((e) => e.name === "VideoGenerationProgress"));
  assert.ok(adminEvents.some((e) => e.name === "ProviderHealthChanged"));
  await sleep(500);
  assert.deepEqual(otherEvents, [], "key 2 saw nothing of key 1");
  assert.ok(noteEvents.every((e) => e.name !== "SpendUpdate"), "notifications carry no spend");

  // Revocation: the key's live connection closes, and it cannot connect again.
  const closed = new Promise((resolve) => notes.onclose(resolve));
  publish(f, "VirtualKeyUpdated", { keyId: 1, isEnabled: false, changedProperties: ["IsEnabled"] }, { id: "js-ku" });
  const reason = await Promise.race([closed, sleep(10000).then(() => "timeout")]);
  assert.notEqual(reason, "timeout", "the disabled key's connection was closed");
  await assert.rejects(connect(f, url, "/hubs/spend", a).start(), /401|Unauthorized/);
});
