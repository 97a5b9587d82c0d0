// React bindings (optional; React is a peer dependency): the state helpers as hooks.
import { useEffect, useMemo, useState, useSyncExternalStore } from "react";
import { HeraldClient, type ConnectionStatus, type HeraldClientOptions } from "../src/client.js";
import {
  HeraldState,
  type AlertEntry,
  type DiscoveredModels,
  type HeraldStateOptions,
  type ProviderState,
  type SpendSummary,
  type TaskState,
} from "../src/state.js";

/**
 * A client and its state for the component's lifetime: connects on mount, stops on unmount.
 * Re-creates them when `url`, `key` or the hubs change.
 */
export function useHerald(options: HeraldClientOptions, stateOptions?: HeraldStateOptions): { client: HeraldClient; state: HeraldState } {
  const hubs = (options.hubs ?? []).join(",");
  const key = typeof options.key === "string" ? options.key : "";
  const pair = useMemo(() => {
    const client = new HeraldClient(options);
    const state = new HeraldState(stateOptions);
    state.attach(client);
    return { client, state };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [options.url, key, hubs]);
  useEffect(() => {
    pair.client.start().catch(() => undefined);
    return () => {
      void pair.client.stop();
      pair.state.dispose();
    };
  }, [pair]);
  return pair;
}

/** The client's overall status, with connect/disconnect. */
export function useConnectionStatus(client: HeraldClient): { status: ConnectionStatus; error?: string; connect: () => Promise<void>; disconnect: () => Promise<void> } {
  const [state, setState] = useState<{ status: ConnectionStatus; error?: string }>({ status: client.status });
  useEffect(() => client.onStatus((c) => setState({ status: client.status, error: c.error })), [client]);
  return { ...state, connect: () => client.start(), disconnect: () => client.stop() };
}

/** Spend summary of one key (last transactions, trend), or undefined before its first event. */
export function useSpend(state: HeraldState, keyId: number): SpendSummary | undefined {
  const all = useSyncExternalStore((l) => state.spend.subscribe(l), () => state.spend.snapshot(), () => state.spend.snapshot());
  return all.get(keyId);
}

/** Every key's spend summary (the admin view). */
export function useAllSpend(state: HeraldState): ReadonlyMap<number, SpendSummary> {
  return useSyncExternalStore((l) => state.spend.subscribe(l), () => state.spend.snapshot(), () => state.spend.snapshot());
}

/** Active tasks (finished ones disappear after the tracker's cleanup delay). */
export function useTasks(state: HeraldState): readonly TaskState[] {
  return useSyncExternalStore((l) => state.tasks.subscribe(l), () => state.tasks.snapshot(), () => state.tasks.snapshot());
}

export function useProviderHealth(state: HeraldState): ReadonlyMap<number, ProviderState> {
  return useSyncExternalStore((l) => state.providers.subscribe(l), () => state.providers.snapshot(), () => state.providers.snapshot());
}

/** Alerts, newest first, with `dismiss`. */
export function useAlerts(state: HeraldState): { alerts: readonly AlertEntry[]; dismiss: (eventId: string) => void } {
  const alerts = useSyncExternalStore((l) => state.alerts.subscribe(l), () => state.alerts.snapshot(), () => state.alerts.snapshot());
  return { alerts, dismiss: (id) => state.alerts.dismiss(id) };
}

export function useModels(state: HeraldState): readonly DiscoveredModels[] {
  return useSyncExternalStore((l) => state.models.subscribe(l), () => state.models.snapshot(), () => state.models.snapshot());
}
