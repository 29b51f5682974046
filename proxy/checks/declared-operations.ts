// A consumer that declared the operations it needs may call only those: an automation
// wandering outside its declared surface is either stale or compromised.

import type { Check } from '../pipeline/types.ts';

export function declaredOperations(): Check {
  return {
    name: 'declared-operations',
    run(ctx) {
      const declared = ctx.consumer?.operations;
      const op = ctx.operation;
      if (!declared || !op || declared.has(op.id)) return undefined;
      return { reason: 'undeclared-operation', detail: `${op.id} is not among the operations this consumer declared` };
    },
  };
}
