// The dashboard bundle committed in dashboard/dist (and embedded in the herald binary) is exactly
// what the pinned esbuild makes of the current sources: rebuilt in memory, compared byte for byte.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { buildDashboard } from "../build.mjs";

test("committed dashboard bundle is up to date with its sources", async () => {
  const outputs = await buildDashboard({ write: false });
  assert.deepEqual(outputs.map((o) => basename(o.path)).sort(), ["dashboard.css", "dashboard.js"]);
  for (const o of outputs) {
    const committed = readFileSync(o.path, "utf8");
    assert.ok(committed === o.text, `${basename(o.path)} is stale: run \`npm run build:dashboard\` in clients/js and commit dashboard/dist`);
  }
});
