// Runs the ordered checks over one request and makes the one decision it gets.
// First deny wins. Warnings collected along the way make an allow a warn. In audit mode a
// deny from a check not marked `always` becomes a would-deny: recorded, not enforced.
// Any exception is a deny (internal-error), enforced even in audit mode: fail closed.

import type { Check, CheckResult, Decision, Denial, RequestContext } from './types.ts';
import type { Mode } from '../rules/types.ts';

export type Decide = (ctx: RequestContext) => Promise<Decision>;

function isPromise(value: unknown): value is Promise<CheckResult> {
  return typeof (value as Promise<unknown> | undefined)?.then === 'function';
}

export function decider(checks: readonly Check[], mode: Mode): Decide {
  return async function decide(ctx) {
    for (const check of checks) {
      const before = ctx.warnings.length;
      let denial: Denial | undefined;
      try {
        const result = check.run(ctx);
        denial = isPromise(result) ? await result : result;
      } catch {
        ctx.checks.push({ check: check.name, outcome: 'deny', reason: 'internal-error' });
        return finish(ctx, { reason: 'internal-error', detail: `the ${check.name} check failed` }, true);
      }
      if (denial) {
        const enforced = mode === 'enforce' || check.always === true;
        ctx.checks.push({ check: check.name, outcome: enforced ? 'deny' : 'would-deny', reason: denial.reason });
        return finish(ctx, denial, enforced);
      }
      if (ctx.warnings.length > before) ctx.checks.push({ check: check.name, outcome: 'warn', reason: ctx.warnings[before]!.reason });
      else ctx.checks.push({ check: check.name, outcome: 'continue' });
    }
    const warnings = ctx.warnings.map((w) => w.reason);
    const first = ctx.warnings[0];
    if (first) return { ...first, decision: 'warn', enforced: true, warnings };
    return { decision: 'allow', reason: 'allowed', detail: 'allowed', enforced: true, warnings };
  };
}

function finish(ctx: RequestContext, denial: Denial, enforced: boolean): Decision {
  return { ...denial, decision: 'deny', enforced, warnings: ctx.warnings.map((w) => w.reason) };
}
