// A consumer that declared the operations it needs may call only those: an automation
// wandering outside its declared surface is either stale or compromised. That holds for an
// actor as well: an agent that declared its operations and acts for a person (or another
// automation) with an exchanged token must not get past its declaration by the exchange.

import type { Check } from '../pipeline/types.ts';
import type { Rules } from '../rules/types.ts';
import { namedActorConsumers } from './consumers.ts';
import { MAX_LEVELS } from '../identity/act.ts';

export function declaredOperations(rules: Rules): Check {
  // Only then can an unreadable level hide a declaration.
  const anyDeclares = [...rules.consumers.registry.values()].some((c) => c.operations !== undefined);
  return {
    name: 'declared-operations',
    run(ctx) {
      const op = ctx.operation;
      if (!op) return undefined;
      const declared = ctx.consumer?.operations;
      if (declared && !declared.has(op.id)) return { reason: 'undeclared-operation', detail: `${op.id} is not among the operations this consumer declared` };
      const chain = ctx.credential?.act;
      if (!chain) return undefined;
      // A level that cannot be read (a list, past the last level walked) may name an actor that
      // declared its operations: refused, whatever the delegation, revocation and quarantine
      // modes (which refuse such a chain only when on).
      if (!chain.complete && anyDeclares) return { reason: 'invalid-credential', detail: `the act claim must be an object with a string sub at every level, at most ${MAX_LEVELS} levels deep` };
      // Each actor as the consumer its issuer vouches for, as the delegation check reads it;
      // every one the chain names, past a malformed level too (a level without a sub must not
      // hide the declaration of the actor below it). The well-formed prefix comes first in
      // `named`, in the same order as `actors`.
      for (const [i, subject] of chain.named.entries()) {
        for (const actor of namedActorConsumers(rules, ctx.credential!, subject, i)) {
          if (actor.operations && !actor.operations.has(op.id)) return { reason: 'undeclared-operation', detail: `${op.id} is not among the operations that an actor in this token's delegation chain declared` };
        }
      }
      return undefined;
    },
  };
}
