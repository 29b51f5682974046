// The lifecycle state that outlives a rules reload: revocations, monitor tables, and the
// configuration of the rules in force (each new generation's checks point it at theirs).

import type { Rules } from '../rules/types.ts';
import type { RequestContext } from '../pipeline/types.ts';
import { configOf, type LifecycleConfig } from './config.ts';
import { RevocationStore } from './revocations.ts';
import { MonitorState } from './monitors.ts';

export class LifecycleState {
  readonly revocations = new RevocationStore();
  readonly monitors: MonitorState;
  readonly now: () => number;
  #config: LifecycleConfig;
  /** Idempotency key reserved by a request, released or completed when it ends. */
  readonly reserved = new WeakMap<RequestContext, string>();

  constructor(rules: Rules, now: () => number) {
    this.#config = configOf(rules);
    this.monitors = new MonitorState(this.#config.monitors);
    this.now = now;
  }

  get config(): LifecycleConfig { return this.#config; }

  /** A generation was built from `rules`: later admin and list decisions use its settings. */
  use(rules: Rules): LifecycleConfig {
    this.#config = configOf(rules);
    return this.#config;
  }
}
