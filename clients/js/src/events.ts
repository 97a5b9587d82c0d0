// The events Herald sends (docs/events.md). Field names and types follow the documented
// examples; test/events-doc.test.mjs checks EVENT_NAMES and EVENT_FIELDS against that file.

/** Fields every object event carries. */
export interface EventBase {
  /** The source event's id: the same event always has the same id. */
  eventId: string;
  /** Source time, RFC 3339 UTC. */
  timestamp: string;
  /** Resume position after this event, per connection (opaque). */
  cursor?: string;
  /** Present on a key's events. */
  virtualKeyId?: number;
}

export interface SpendUpdate extends EventBase {
  virtualKeyId: number;
  totalSpend: number;
  newSpend: number;
  budget?: number;
  budgetPercentage?: number;
  budgetRemaining?: number;
  model?: string;
  provider?: string;
  requestId?: string;
  /** Set by servers that compute it (newer Herald); otherwise the SDK computes its own. */
  trend?: Trend;
  burnRatePerHour?: number;
}

export type Severity = "info" | "warning" | "critical";

export interface BudgetAlert extends EventBase {
  virtualKeyId: number;
  alertType: string;
  budget: number;
  currentSpend: number;
  message: string;
  percentage: number;
  periodStart: string;
  periodEnd: string;
  remaining: number;
  severity: Severity;
  sourceEventId: string;
  threshold: number;
  /** Forecast and spike alerts (`budget_forecast_exceeded`, `spend_spike`): the spend rate. */
  burnRatePerHour?: number;
  /** Forecast alerts: when the budget runs out at that rate (RFC 3339). */
  projectedExhaustion?: string;
  /** Forecast and spike alerts: the window the rate was measured over, in minutes. */
  windowMinutes?: number;
}

export type HealthStatus = "healthy" | "degraded" | "unhealthy";

export interface ProviderHealthChanged extends EventBase {
  providerId: number;
  providerName?: string;
  status: HealthStatus;
  latencyMs?: number;
  error?: string;
}

export interface NavigationStateUpdated extends EventBase {
  action: "created" | "updated" | "deleted";
  type: string;
  data: Record<string, unknown>;
}

export interface ModelsDiscovered extends EventBase {
  providerId?: number;
  providerName?: string;
  models: Array<string | ({ id?: string } & Record<string, unknown>)>;
}

export interface VirtualKeyEvent extends EventBase {
  keyId: number;
  keyName?: string;
  keyHash?: string;
  isEnabled?: boolean;
  budget?: number;
  budgetPeriod?: string;
  changedProperties?: string[];
}

export type TaskStatus = "pending" | "running" | "completed" | "failed" | "cancelled";

export interface TaskEvent extends EventBase {
  taskId: string;
  taskType: string;
  status: TaskStatus;
  progress: number;
  message?: string;
  error?: string;
  isRetryable?: boolean;
  result?: unknown;
  requestId?: string;
  [field: string]: unknown;
}

/** Sent before a replay when the history no longer reaches back to the cursor. */
export interface ResumeGap {
  audience: string;
  cursor?: string;
}

export type Trend = "up" | "down" | "stable";

export const TASK_EVENTS = [
  "ImageGenerationProgress",
  "ImageGenerationCompleted",
  "ImageGenerationFailed",
  "ImageGenerationCancelled",
  "VideoGenerationRequested",
  "VideoGenerationStarted",
  "VideoGenerationProgress",
  "VideoGenerationCompleted",
  "VideoGenerationFailed",
  "TaskProgress",
  "TaskCompleted",
  "TaskFailed",
  "TaskCancelled",
] as const;

export type TaskEventName = (typeof TASK_EVENTS)[number];

/** Event name → payload type. */
export interface EventMap extends Record<TaskEventName, TaskEvent> {
  SpendUpdate: SpendUpdate;
  BudgetAlert: BudgetAlert;
  ProviderHealthChanged: ProviderHealthChanged;
  NavigationStateUpdated: NavigationStateUpdated;
  ModelsDiscovered: ModelsDiscovered;
  VirtualKeyCreated: VirtualKeyEvent;
  VirtualKeyUpdated: VirtualKeyEvent;
  VirtualKeyDeleted: VirtualKeyEvent;
  ResumeGap: ResumeGap;
}

export type EventName = keyof EventMap;

/** Every object event Herald sends, in the order of docs/events.md. */
export const EVENT_NAMES: readonly EventName[] = [
  "SpendUpdate",
  "BudgetAlert",
  "ProviderHealthChanged",
  "NavigationStateUpdated",
  "ModelsDiscovered",
  "VirtualKeyCreated",
  "VirtualKeyUpdated",
  "VirtualKeyDeleted",
  ...TASK_EVENTS,
  "ResumeGap",
];

/**
 * The fields each event's type above declares, for the check against docs/events.md: every
 * field of a documented example must be declared here (task events share one list).
 */
const BASE = ["eventId", "timestamp", "cursor", "virtualKeyId"];
const TASK_FIELDS = [...BASE, "taskId", "taskType", "status", "progress", "message", "error", "isRetryable", "result", "requestId", "*"];
export const EVENT_FIELDS: Readonly<Record<EventName, readonly string[]>> = {
  SpendUpdate: [...BASE, "totalSpend", "newSpend", "budget", "budgetPercentage", "budgetRemaining", "model", "provider", "requestId", "trend", "burnRatePerHour"],
  BudgetAlert: [...BASE, "alertType", "budget", "currentSpend", "message", "percentage", "periodStart", "periodEnd", "remaining", "severity", "sourceEventId", "threshold", "burnRatePerHour", "projectedExhaustion", "windowMinutes"],
  ProviderHealthChanged: [...BASE, "providerId", "providerName", "status", "latencyMs", "error"],
  NavigationStateUpdated: [...BASE, "action", "type", "data"],
  ModelsDiscovered: [...BASE, "providerId", "providerName", "models"],
  VirtualKeyCreated: [...BASE, "keyId", "keyName", "keyHash", "isEnabled", "budget", "budgetPeriod", "changedProperties"],
  VirtualKeyUpdated: [...BASE, "keyId", "keyName", "keyHash", "isEnabled", "budget", "budgetPeriod", "changedProperties"],
  VirtualKeyDeleted: [...BASE, "keyId", "keyName", "keyHash", "isEnabled", "budget", "budgetPeriod", "changedProperties"],
  ...(Object.fromEntries(TASK_EVENTS.map((n) => [n, TASK_FIELDS])) as unknown as Record<TaskEventName, readonly string[]>),
  ResumeGap: ["audience", "cursor"],
};
