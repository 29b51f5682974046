// Who a subject is, from the registry: its kind decides lifetime limits and whether
// staleness blocks; its owner is who an incident responder calls.

import type { Rules } from '../rules/types.ts';
import type { Consumer } from '../pipeline/types.ts';

export function resolveConsumer(rules: Rules, subject: string): Consumer {
  const known = rules.consumers.registry.get(subject);
  if (known) {
    return {
      subject, kind: known.kind, registered: true,
      ...(known.owner ? { owner: known.owner } : {}),
      ...(known.operations ? { operations: known.operations } : {}),
    };
  }
  return { subject, kind: rules.consumers.defaultKind, registered: false };
}
