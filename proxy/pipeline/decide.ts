// Runs the ordered checks over one request and makes the one decision it gets.
// First deny wins. Warnings collected along the way make an allow a warn. In audit mode a
// deny from a check not marked `always` becomes a would-deny: recorded, not enforced; a
// malformed request is refused in any mode.
// Any exception is a deny (internal-error), enforced even in audit mode: fail closed.

import { REASONS, type ReasonCode } from '../decision/reasons.ts';
import type { Check, CheckResult, Decision, Denial, RequestContext } from './types.ts';
import type { Mode } from '../rules/types.ts';

export type Decide = (ctx: RequestContext) => Promise<Decision>;

function isPromise(value: unknown): value is Promise<CheckResult> {
  return typeof (value as Promise<unknown> | undefined)?.then === 'function';
}

export function decider(checks: readonly Check[], mode: Mode): Decide {
  // A check that lets the request continue leaves the same record every time: one frozen
  // object per check, shared by every request (and by the /decisions ring that keeps them),
  // instead of a new object per check and request.
  const continued = checks.map((c) => Object.freeze({ check: c.name, outcome: 'continue' as const }));
  return async function decide(ctx) {
    for (let i = 0; i < checks.length; i++) {
      const check = checks[i]!;
      const before = ctx.warnings.length;
      let denial: Denial | undefined;
      try {
        const result = check.run(ctx);
        denial = isPromise(result) ? await result : result;
        // A check's defect that returns something other than a denial of a known reason (the
        // types forbid it; an `as` or a library's value could not) is a failed check too, not
        // a denial audit mode would let through with a reason nobody can look up.
        if (denial && (typeof denial !== 'object' || typeof denial.reason !== 'string' || !Object.hasOwn(REASONS, denial.reason) || typeof denial.detail !== 'string')) throw new TypeError('not a denial');
      } catch {
        ctx.checks.push({ check: check.name, outcome: 'deny', reason: 'internal-error' });
        return finish(ctx, { reason: 'internal-error', detail: `the ${check.name} check failed` }, true);
      }
      if (denial) {
        // A malformed request is refused in audit mode too, whichever check finds it: a body
        // that could not be read whole (the monitors' fingerprint) cannot be forwarded intact.
        // So is a check's own failure: fail closed.
        const enforced = mode === 'enforce' || check.always === true || denial.reason === 'malformed-request' || denial.reason === 'internal-error';
        ctx.checks.push({ check: check.name, outcome: enforced ? 'deny' : 'would-deny', reason: denial.reason });
        return finish(ctx, denial, enforced);
      }
      if (ctx.warnings.length > before) ctx.checks.push({ check: check.name, outcome: 'warn', reason: ctx.warnings[before]!.reason });
      else ctx.checks.push(continued[i]!);
    }
    const warnings = reasonsOf(ctx);
    const first = ctx.warnings[0];
    if (first) return { ...first, decision: 'warn', enforced: true, warnings };
    return { decision: 'allow', reason: 'allowed', detail: 'allowed', enforced: true, warnings };
  };
}

function finish(ctx: RequestContext, denial: Denial, enforced: boolean): Decision {
  return { ...denial, decision: 'deny', enforced, warnings: reasonsOf(ctx) };
}

/** The warnings' reasons, each once: two checks can warn for one reason (both in audit mode). */
function reasonsOf(ctx: RequestContext): ReasonCode[] {
  const reasons = ctx.warnings.map((w) => w.reason);
  return reasons.length > 1 ? [...new Set(reasons)] : reasons;
}
