// A deprecated operation (since in the past) is denied to automated consumers from
// contract.blockAt sensitivity up and warned to everybody else. Its Deprecation, Sunset and
// Link headers are added to every answer by the response writer, allowed or not.

import type { Check, DecisionDetails } from '../pipeline/types.ts';
import type { Operation, Rules } from '../rules/types.ts';
import { blocks } from './staleness.ts';

export function deprecation(rules: Rules): Check {
  return {
    name: 'deprecation',
    run(ctx) {
      const op = ctx.operation!;
      const d = op.deprecated;
      if (!d || d.sinceMs > ctx.now) return undefined;
      const finding = {
        reason: 'deprecated-operation' as const,
        detail: `${op.id} is deprecated since ${new Date(d.sinceMs).toISOString()}` + (d.replacement ? `; use ${d.replacement}` : ''),
        ...movingOn(op, ctx.now),
        ...(ctx.declaredContract ? { declaredContract: ctx.declaredContract } : {}),
        currentContract: rules.contract.current,
      };
      if (blocks(rules, op, ctx.consumer)) return finding;
      ctx.warnings.push(finding);
      return undefined;
    },
  };
}

/**
 * Where the caller goes next, for the problem body of any refusal of a deprecated operation
 * (a stale contract's too): its replacement and its sunset, once the deprecation is in force.
 */
export function movingOn(op: Operation, now: number): Pick<DecisionDetails, 'replacement' | 'sunset'> {
  const d = op.deprecated;
  if (!d || d.sinceMs > now) return {};
  return {
    ...(d.replacement ? { replacement: d.replacement } : {}),
    ...(d.sunsetMs !== undefined ? { sunset: new Date(d.sunsetMs).toISOString() } : {}),
  };
}
