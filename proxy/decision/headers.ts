// Headers that tell an automated consumer about the contract, on every answer for the
// operation, allowed or denied: Deprecation (RFC 9745), Sunset (RFC 8594), Link, and
// the warn header naming the decision's warnings (a refusal's too).

import type { Operation } from '../rules/types.ts';
import type { Decision } from '../pipeline/types.ts';
import { warningsBeside } from './problem.ts';
import type { ReasonCode } from './reasons.ts';

export const WARNING_HEADER = 'driftguard-warning';

export function contractHeaders(op: Operation | undefined, decision: Decision, into: Record<string, string | string[]>): void {
  const d = op?.deprecated;
  if (d) {
    into['deprecation'] = `@${Math.floor(d.sinceMs / 1000)}`;
    if (d.sunsetMs !== undefined) into['sunset'] = new Date(d.sunsetMs).toUTCString();
    const links: string[] = [];
    if (d.link) {
      // No type: the link may be a page, a changelog in JSON, anything (RFC 8288 makes it optional).
      links.push(`<${d.link}>; rel="deprecation"`);
      if (d.sunsetMs !== undefined) links.push(`<${d.link}>; rel="sunset"`);
    }
    if (links.length) into['link'] = links.join(', ');
  }
  const codes = warned(decision);
  if (codes.length > 0) into[WARNING_HEADER] = codes.join(', ');
}

/**
 * The reason codes the warn header names, and the `warnings` of a problem driftguard answers
 * instead of the upstream (a forward that failed): the two say the same.
 */
export function warned(decision: Decision): readonly ReasonCode[] {
  // A refusal keeps what was found before it: a person's stale write refused for another
  // reason learns its contract version is stale too (its problem's `warnings` says the same).
  if (decision.decision === 'deny' && decision.enforced) return warningsBeside(decision);
  if (decision.decision === 'warn') return decision.warnings;
  if (decision.decision !== 'deny') return [];
  // An audit would-deny: its reason first, then any other warnings, each once (a feature in
  // audit mode may have warned for the reason a later check then denied for).
  return [decision.reason, ...decision.warnings.filter((r) => r !== decision.reason)];
}
