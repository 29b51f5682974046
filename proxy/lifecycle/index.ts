// Credential lifecycle and behaviour monitors: task binding, revocation, delegation,
// retries, duplicate writes, traversal, quarantine. (Issue 6.)

import type { Rules } from '../rules/types.ts';
import type { Feature, Log } from '../features.ts';

export async function lifecycle(_rules: Rules, _log: Log): Promise<Feature> {
  return {};
}
