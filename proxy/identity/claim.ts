// A claim a rule names (contract.declared.claim, credentials.taskClaim), read from the token's
// own claims only: claims are a plain object parsed from JSON, and a name every object answers
// to (`constructor`, `toString`) read the prototype's function, which no check takes for a
// value: every credentialed request was then refused.

import type { Credential } from '../pipeline/types.ts';

export function claimOf(credential: Pick<Credential, 'claims'> | undefined, name: string): unknown {
  return credential !== undefined && Object.hasOwn(credential.claims, name) ? credential.claims[name] : undefined;
}
