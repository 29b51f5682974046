// The lifecycle state that outlives a rules reload: revocations, monitor tables, and the
// configuration of the rules in force (updated when a reload swaps new rules in; each
// generation's checks read their own rules' configuration).

import type { ConsumerKind, Rules } from '../rules/types.ts';
import type { RequestContext } from '../pipeline/types.ts';
import { configOf, type LifecycleConfig } from './config.ts';
import { RevocationStore } from './revocations.ts';
import { MonitorState, type ConsumerState, type Origin } from './monitors.ts';
import { resolveConsumer, subjectKind } from '../checks/consumers.ts';

export class LifecycleState {
  readonly revocations = new RevocationStore();
  readonly monitors: MonitorState;
  readonly now: () => number;
  #config: LifecycleConfig;
  #rules: Rules;
  /** Idempotency key reserved by a request, released or completed when it ends. */
  readonly reserved = new WeakMap<RequestContext, string>();
  /**
   * What a request counts for in the retry-storm and traversal windows, once its decision
   * lets it through: the checks only ask whether it fits, and the lifecycle observer records
   * it when it is decided, so a request a later check denies uses up no budget.
   */
  readonly counts = new WeakMap<RequestContext, Counts>();

  constructor(rules: Rules, now: () => number) {
    this.#config = configOf(rules);
    this.#rules = rules;
    this.monitors = new MonitorState(this.#config.monitors, now);
    this.now = now;
  }

  get config(): LifecycleConfig { return this.#config; }
  /** The rules in force: what names a consumer now (consumerKey). */
  get rules(): Rules { return this.#rules; }

  /** `rules` are now in force: admin, list and quarantine decisions use their settings. */
  use(rules: Rules): void {
    this.#config = configOf(rules);
    this.#rules = rules;
  }

  /**
   * Changes whenever a revocation or a quarantine may refuse what it did not: a request that
   * saw one value in its revocation and quarantine checks and another before it is forwarded
   * is checked again (the recheck check).
   */
  get version(): number { return this.revocations.changes + this.monitors.changes; }

  /**
   * Whose behaviour a request is, for the monitors and the quarantine: the automation acting
   * for the consumer (a delegated token judged as an automation's), else the consumer. An
   * agent acting for many people is one agent; a person's own calls are not its.
   */
  monitored(ctx: RequestContext): Monitored | undefined {
    const c = ctx.consumer;
    const credential = ctx.credential;
    if (!c || !credential) return undefined;
    const a = c.actor;
    if (a?.key !== undefined && a.issuer !== undefined) return { key: a.key, kind: 'automation', owner: a.owner, origin: a as Origin };
    return { key: this.consumerKey(ctx)!, kind: subjectKind(c), owner: c.owner, origin: credential };
  }

  /**
   * The key the consumer's state is kept under now: the request's own, unless a reload since
   * it began renamed the consumer (rekey); its state and quarantine are under the new name.
   */
  consumerKey(ctx: RequestContext): string | undefined {
    const c = ctx.consumer;
    if (!c || ctx.rules === this.#rules || !ctx.credential) return c?.key;
    return resolveConsumer(this.#rules, ctx.credential)?.key ?? c.key;
  }
}

export interface Monitored {
  readonly key: string;
  /** Its own kind (a person stays a person when an agent it names nobody vouches for acts for it). */
  readonly kind: ConsumerKind;
  readonly owner: string | undefined;
  /** Who it is (copied when kept). */
  readonly origin: Origin;
}

export interface Counts {
  /**
   * The request fingerprint's recent times, and how many the window keeps (retry storm);
   * unsuccessful: whether the request's time is taken back when its forward succeeds (forwardedRepeat).
   */
  repeats?: { readonly times: number[]; readonly max: number; readonly unsuccessful: boolean };
  /** The consumer, whose recent operations are kept by last call; this request's; how many may be kept (traversal). */
  operation?: { readonly consumer: ConsumerState; readonly id: string; readonly max: number };
}
