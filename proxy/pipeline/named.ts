// A claim or a request header whose name the rules give (contract.declared.claim and .header,
// credentials.taskClaim, monitors.idempotency.header), read as the token's or the request's
// own only. Claims are a plain object parsed from JSON, and Node's request headers an object
// that inherits Object's prototype too: a name every object answers to (`constructor`,
// `toString`) read the prototype's function, which no check takes for a value, and every
// credentialed request was refused.

import type { IncomingMessage } from 'node:http';
import type { Credential } from './types.ts';

export function claimOf(credential: Pick<Credential, 'claims'> | undefined, name: string): unknown {
  return credential !== undefined && Object.hasOwn(credential.claims, name) ? credential.claims[name] : undefined;
}

/** `name` lowercased, as Node keys the headers. */
export function headerOf(req: Pick<IncomingMessage, 'headers'>, name: string): string | string[] | undefined {
  return Object.hasOwn(req.headers, name) ? req.headers[name] : undefined;
}
