// A deprecated operation (since in the past) is denied to automated consumers from
// contract.blockAt sensitivity up and warned to everybody else. Its Deprecation, Sunset and
// Link headers are added to every answer by the response writer, allowed or not.

import type { Check } from '../pipeline/types.ts';
import type { Rules } from '../rules/types.ts';
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
        ...(d.replacement ? { replacement: d.replacement } : {}),
        ...(d.sunsetMs !== undefined ? { sunset: new Date(d.sunsetMs).toISOString() } : {}),
        ...(ctx.declaredContract ? { declaredContract: ctx.declaredContract } : {}),
        currentContract: rules.contract.current,
      };
      if (blocks(rules, op, ctx.consumer)) return finding;
      ctx.warnings.push(finding);
      return undefined;
    },
  };
}
