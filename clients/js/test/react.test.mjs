// The React bindings read the state helpers' snapshots (server rendering: no DOM needed).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createElement as h } from "react";
import { renderToString } from "react-dom/server";
import { HeraldState } from "../dist/src/index.js";
import { useSpend, useTasks, useAlerts, useProviderHealth, useModels, useAllSpend } from "../dist/react/index.js";

test("hooks render the helpers' state", () => {
  const state = new HeraldState();
  state.apply("SpendUpdate", { eventId: "s1", timestamp: "2026-11-22T10:00:00Z", virtualKeyId: 42, totalSpend: 6.5, newSpend: 6.5, budget: 10, budgetPercentage: 65 });
  state.apply("BudgetAlert", { eventId: "a1", timestamp: "2026-11-22T10:00:00Z", virtualKeyId: 42, severity: "info", threshold: 50, message: "half", budget: 10, currentSpend: 6.5, percentage: 65, remaining: 3.5, alertType: "budget_50_percent", periodStart: "", periodEnd: "", sourceEventId: "s1" });
  state.apply("TaskProgress", { eventId: "t1", timestamp: "2026-11-22T10:00:00Z", taskId: "batch-7", taskType: "batch", status: "running", progress: 75 });
  state.apply("ProviderHealthChanged", { eventId: "p1", timestamp: "2026-11-22T10:00:00Z", providerId: 3, providerName: "openai", status: "unhealthy" });
  state.apply("ModelsDiscovered", { eventId: "m1", timestamp: "2026-11-22T10:00:00Z", providerId: 3, models: ["gpt-4o"] });
  function View() {
    const spend = useSpend(state, 42);
    const keys = useAllSpend(state);
    const tasks = useTasks(state);
    const { alerts } = useAlerts(state);
    const providers = useProviderHealth(state);
    const models = useModels(state);
    return h("p", null, `${spend.totalSpend}/${spend.budget} ${spend.percentage}% keys=${keys.size} ${tasks[0].taskId}@${tasks[0].progress} ${alerts[0].message} ${providers.get(3).status} ${models[0].models[0]}`);
  }
  assert.equal(renderToString(h(View)), "<p>6.5/10 65% keys=1 batch-7@75 half unhealthy gpt-4o</p>");
  state.dispose();
});
