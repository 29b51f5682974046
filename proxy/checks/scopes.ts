// The token must carry every scope the operation lists.

import type { Check } from '../pipeline/types.ts';

export function scopes(): Check {
  return {
    name: 'scopes',
    run(ctx) {
      const op = ctx.operation;
      const cred = ctx.credential;
      if (!op || !cred || op.scopes.length === 0) return undefined;
      for (const scope of op.scopes) {
        if (!cred.scopes.has(scope)) {
          return { reason: 'insufficient-scope', detail: `${op.id} requires scopes: ${op.scopes.join(' ')}`, requiredScopes: op.scopes };
        }
      }
      return undefined;
    },
  };
}
