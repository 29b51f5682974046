// A deprecated operation (since in the past) is denied to automated consumers from
// contract.blockAt sensitivity up and warned to everybody else. Its Deprecation, Sunset and
// Link headers are added to every answer by the response writer, allowed or not.

import type { Check, Consumer, DecisionDetails, Denial, RequestContext } from '../pipeline/types.ts';
import type { Operation, Rules } from '../rules/types.ts';
import { blocks, blocksAutomations } from './staleness.ts';

export function deprecation(rules: Rules): Check {
  return {
    name: 'deprecation',
    run(ctx) {
      const op = ctx.operation!;
      const d = op.deprecated;
      if (!d || d.sinceMs > ctx.now) return undefined;
      const finding = deprecationFinding(rules, op, ctx, ctx.now);
      if (blocks(rules, op, ctx.consumer)) return finding;
      ctx.warnings.push(finding);
      return undefined;
    },
  };
}

/**
 * A deprecation in force at `now`, as a denial or a warning says it: `detail` (by default, since
 * when), then where to move (movingOn) and the contract versions. The dates check says it too,
 * for a deprecation that began while the request was being decided.
 */
export function deprecationFinding(rules: Rules, op: Operation, ctx: Pick<RequestContext, 'consumer' | 'declaredContract'>, now: number, detail = `${op.id} is deprecated since ${new Date(op.deprecated!.sinceMs).toISOString()}`): Denial {
  const next = movingOn(rules, op, ctx.consumer, now);
  return {
    reason: 'deprecated-operation',
    detail: detail + (next.replacement ? `; use ${next.replacement}` : ''),
    ...next,
    ...(ctx.declaredContract ? { declaredContract: ctx.declaredContract } : {}),
    currentContract: rules.contract.current,
  };
}

/**
 * Where the caller goes next, for the problem body of any refusal of a deprecated operation
 * (a stale contract's too): its replacement and its sunset, once the deprecation is in force.
 */
export function movingOn(rules: Rules, op: Operation, consumer: Consumer | undefined, now: number): Pick<DecisionDetails, 'replacement' | 'sunset'> {
  const d = op.deprecated;
  if (!d || d.sinceMs > now) return {};
  // Not a replacement whose own deprecation, in force, refuses this caller too: it would be
  // sent from one refusal to the next (the rules may name one whose deprecation came later).
  // Before the caller is known (a sunset's 410 comes before any credential is read; a token
  // that failed) it may be an automation: not one that refuses automations.
  const next = d.replacement !== undefined ? rules.contract.operations.find((o) => o.id === d.replacement) : undefined;
  const refusesToo = next?.deprecated !== undefined && next.deprecated.sinceMs <= now && (consumer ? blocks(rules, next, consumer) : blocksAutomations(rules, next));
  return {
    ...(d.replacement && !refusesToo ? { replacement: d.replacement } : {}),
    ...(d.sunsetMs !== undefined ? { sunset: new Date(d.sunsetMs).toISOString() } : {}),
  };
}
