// Who a subject is, from the registry: its kind decides lifetime limits and whether
// staleness blocks; its owner is who an incident responder calls.

import type { Rules } from '../rules/types.ts';
import type { Consumer, Credential } from '../pipeline/types.ts';

/** The consumer a credential stands for; undefined when its subject is registered to another issuer. */
export function resolveConsumer(rules: Rules, credential: Pick<Credential, 'subject' | 'issuer'>): Consumer | undefined {
  const subject = credential.subject;
  const known = rules.consumers.registry.get(subject);
  if (known && known.issuer !== credential.issuer) return undefined;
  if (known) {
    return {
      subject, key: subject, kind: known.kind, registered: true,
      ...(known.owner ? { owner: known.owner } : {}),
      ...(known.operations ? { operations: known.operations } : {}),
    };
  }
  // A registered subject has one issuer; an unregistered one is only as unique as its issuer
  // makes it: any issuer can write any string in `sub`.
  const key = rules.identity.issuers.length > 1 ? JSON.stringify([credential.issuer, subject]) : subject;
  return { subject, key, kind: rules.consumers.defaultKind, registered: false };
}
