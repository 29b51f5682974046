// A verified caller the registry does not know is denied unless consumers.unknown allows it:
// every automation must have an owner someone can call.

import type { Check } from '../pipeline/types.ts';
import type { Rules } from '../rules/types.ts';

export function consumer(rules: Rules): Check {
  const allowUnknown = rules.consumers.unknown === 'allow';
  return {
    name: 'consumer',
    run(ctx) {
      const c = ctx.consumer;
      if (!c || c.registered || allowUnknown) return undefined;
      return { reason: 'unknown-consumer', detail: 'the caller\'s subject is not in the consumer registry' };
    },
  };
}
