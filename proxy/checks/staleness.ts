// Whether a stale or deprecated action is denied or only warned: automated consumers are
// blocked from contract.blockAt sensitivity up; people read change notices, so they are
// only ever warned; an anonymous caller of a public operation likewise.

import { SENSITIVITY_RANK, thresholdRank, type Rules, type Operation } from '../rules/types.ts';
import type { Consumer } from '../pipeline/types.ts';

export function blocks(rules: Rules, op: Operation, consumer: Consumer | undefined): boolean {
  return consumer?.kind === 'automation' && blocksAutomations(rules, op);
}

/** Whether `op` is sensitive enough that a stale or deprecated call of it refuses an automated consumer. */
export function blocksAutomations(rules: Rules, op: Operation): boolean {
  return SENSITIVITY_RANK[op.sensitivity] >= thresholdRank(rules.contract.blockAt);
}
