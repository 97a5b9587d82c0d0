// The SDK's event types against docs/events.md: every event the documentation shows (an output
// example, or a row of the task table) is one the SDK subscribes to, every field of every
// example is declared in the SDK's types (EVENT_FIELDS mirrors them), and the SDK lists no event
// the documentation does not have.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { EVENT_NAMES, EVENT_FIELDS, TASK_EVENTS } from "../dist/src/index.js";

const doc = readFileSync(join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "docs", "events.md"), "utf8");

test("typed events match docs/events.md", () => {
  const examples = [...doc.matchAll(/```json output (\w+)\n([\s\S]*?)```/g)].map((m) => [m[1], JSON.parse(m[2])]);
  assert.ok(examples.length >= 15, `found ${examples.length} examples`);
  const taskTable = [...doc.matchAll(/^\| (image|video|generic) \| `(\w+)` \|/gm)].map((m) => m[2]);
  assert.equal(taskTable.length, 13, "the task table");
  assert.deepEqual([...taskTable].sort(), [...TASK_EVENTS].sort(), "task events");
  const documented = new Set([...examples.map(([n]) => n), ...taskTable, "ResumeGap"]);
  assert.ok(doc.includes('"target":"ResumeGap"') || readFileSync(join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "docs", "protocol.md"), "utf8").includes("ResumeGap"));
  assert.deepEqual([...EVENT_NAMES].sort(), [...documented].sort(), "the SDK's events are the documented ones");
  for (const [name, example] of examples) {
    const declared = EVENT_FIELDS[name];
    if (declared.includes("*")) continue; // task events keep every inbound field
    for (const field of Object.keys(example)) {
      assert.ok(declared.includes(field), `${name}.${field} is in docs/events.md but not declared in src/events.ts`);
    }
  }
});
