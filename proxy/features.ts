// Wires the feature modules that sit around the pipeline (telemetry, credential lifecycle)
// into one driftguard: the observers that see every request, the state their checks share
// across rule reloads, the admin routes they add, and what they flush on shutdown.
// Each feature exports one factory with this shape; this file only composes them.

import type { Rules } from './rules/types.ts';
import type { Driftguard } from './server.ts';
import type { CheckDeps } from './pipeline/checks.ts';
import { composeObservers, type Observer } from './observe.ts';
import { telemetry } from './telemetry/index.ts';
import { lifecycle } from './lifecycle/index.ts';

export type Log = (line: Record<string, unknown>) => void;

export interface Feature {
  /** Sees every request (spans, metrics, decision log, consumer counters). */
  readonly observer?: Observer;
  /** State the feature's checks keep across reloads (revocations, monitors). */
  readonly deps?: Partial<CheckDeps>;
  /** Add admin routes, subscribe to reloads. Called once the listeners exist. */
  attach?(dg: Driftguard): void;
  /** Flush and stop (telemetry export, journals). */
  shutdown?(): Promise<void>;
}

export interface Wired {
  readonly observer: Observer;
  readonly deps: Partial<CheckDeps>;
  attach(dg: Driftguard): void;
  shutdown(): Promise<void>;
}

export async function features(rules: Rules, log: Log): Promise<Wired> {
  // Telemetry first: its observation must exist before any other feature's sees the request.
  const list: Feature[] = [await telemetry(rules, log), await lifecycle(rules, log)];
  return {
    observer: composeObservers(list.map((f) => f.observer).filter((o): o is Observer => o !== undefined)),
    deps: Object.assign({}, ...list.map((f) => f.deps ?? {})),
    attach(dg) { for (const f of list) f.attach?.(dg); },
    async shutdown() { await Promise.allSettled(list.map((f) => f.shutdown?.())); },
  };
}
