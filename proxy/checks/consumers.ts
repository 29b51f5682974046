// Who a subject is, from the registry: its kind decides lifetime limits and whether
// staleness blocks; its owner is who an incident responder calls.

import type { ConsumerKind, Rules } from '../rules/types.ts';
import type { Actor, Consumer, Credential } from '../pipeline/types.ts';
import { foreignSubject } from '../identity/subjects.ts';

/**
 * One issuer's subject, named apart from another issuer's same string: `["<issuer>","<subject>"]`.
 * An unregistered consumer's key while several issuers are trusted, and the form of a subject
 * revocation that names that issuer's subject only (lifecycle/revocations.ts).
 */
export function issuerSubjectKey(issuer: string, subject: string): string {
  return JSON.stringify([issuer, subject]);
}

/** The issuer and subject a `["<issuer>","<subject>"]` names, however it is spaced; undefined for anything else. */
export function issuerSubjectOf(value: string): [issuer: string, subject: string] | undefined {
  if (!value.startsWith('[')) return undefined;
  try {
    const v: unknown = JSON.parse(value);
    return Array.isArray(v) && v.length === 2 && typeof v[0] === 'string' && typeof v[1] === 'string' ? [v[0], v[1]] : undefined;
  } catch { return undefined; /* a subject that only starts with [ */ }
}

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
  const key = rules.identity.issuers.length > 1 ? issuerSubjectKey(credential.issuer, subject) : subject;
  return { subject, key, kind: rules.consumers.defaultKind, registered: false };
}

/**
 * The automation a call is made by when it acts for a consumer: an AI agent holding a token
 * exchanged for a person's (sub the person, act.sub the agent) is the one whose code may be
 * stale, so its call is judged as an automation's (contract version required, stale contracts
 * and deprecated operations blocked by sensitivity, automation lifetimes, the automation
 * kinds' lifecycle checks and monitors), and its behaviour (monitors, denials towards
 * quarantine) is its own, not the person's. So for an automation acting for another: the
 * subject's own calls must not be quarantined for what its actor's code does. Each actor is
 * the consumer its issuer vouches for, as the delegation check reads it; an actor registered
 * to another issuer, or a level that names no actor, is taken for an automation (nothing says
 * it is not), with no key: its calls count as the subject's. Undefined when no automation acts.
 */
export function automationActor(rules: Rules, consumer: Consumer, credential: Pick<Credential, 'issuer' | 'act'>): Actor | undefined {
  const chain = credential.act;
  if (!chain) return undefined;
  for (const [i, subject] of chain.actors.entries()) {
    const issuer = actorIssuer(credential, i);
    // An iss the rules do not trust counts as the person's: each such iss would otherwise be a
    // fresh consumer (monitors, quarantine) of the same agent. A trusted issuer naming what its
    // profile cannot vouch for (an OAuth provider's exchange naming a SPIFFE ID) keys it as its
    // own consumer of the name: counted towards that (which the restricting checks weigh with
    // the others it could be, actorIssuers), neither towards the person's nor, for a stranger's
    // tokens, towards the agent's own.
    if (!rules.identity.issuers.some((x) => x.issuer === issuer)) return { subject };
    const actor = resolveConsumer(rules, { subject, issuer });
    if (!actor) return { subject };
    if (actor.kind === 'automation') return { subject, key: actor.key, issuer, ...(actor.owner !== undefined ? { owner: actor.owner } : {}) };
  }
  // A level past the well-formed ones: its actor is unknown.
  if (chain.depth > chain.actors.length) return { subject: chain.named[chain.actors.length] ?? '(malformed act level)' };
  return undefined;
}

/**
 * Whether `issuer` vouches for `subject` named in a chain: one of identity.issuers, the subject
 * registered to it or to none, and a name its profile may vouch for (foreignSubject: a SPIFFE
 * ID only its trust domain's spiffe issuer, a service account only a kubernetes issuer, as for
 * a token's own subject).
 */
function vouches(rules: Rules, issuer: string, subject: string): boolean {
  const own = rules.identity.issuers.find((i) => i.issuer === issuer);
  if (!own) return false;
  const registered = rules.consumers.registry.get(subject)?.issuer;
  if (registered !== undefined && registered !== issuer) return false;
  return foreignSubject(own, subject, rules.identity.issuers) === undefined;
}

/**
 * The issuers that could vouch for `subject`: the one it is registered to (an entry bound to
 * none, `''`, too: its declared operations still restrict it), else each whose profile may.
 */
function possibleIssuers(rules: Rules, subject: string): string[] {
  const registered = rules.consumers.registry.get(subject)?.issuer;
  if (registered !== undefined) return [registered];
  return rules.identity.issuers.filter((i) => foreignSubject(i, subject, rules.identity.issuers) === undefined).map((i) => i.issuer);
}

/**
 * The issuer that vouches for level `i` of a token's act chain: the level's iss, else the
 * token's. A level past the first malformed one has no iss anybody can trust: the token's.
 */
export function actorIssuer(credential: Pick<Credential, 'issuer' | 'act'>, i: number): string {
  const chain = credential.act;
  const iss = chain && i < chain.actors.length ? chain.namedIssuers[i] : undefined;
  return typeof iss === 'string' ? iss : credential.issuer;
}

/**
 * The issuers whose consumer of `named[i]` (`subject`) of a token's act chain the checks that
 * restrict (declared operations, quarantine, revocation) weigh. In the well-formed prefix, where
 * the level's issuer (its iss, else the token's) vouches for the name: that issuer alone. Where
 * nobody does (below a malformed level, an iss the rules do not trust, a subject registered to
 * another issuer, a name the issuer's profile cannot vouch for: an OAuth issuer naming a SPIFFE
 * ID): every consumer it could be, the level's iss's, the token issuer's and each issuer's that
 * could vouch for the name, so that a quarantined or revoked agent does not go free by being
 * named under another iss, or none (and an actor does not escape its declaration).
 */
export function actorIssuers(rules: Rules, credential: Pick<Credential, 'issuer' | 'act'>, subject: string, i: number): readonly string[] {
  const chain = credential.act;
  const own = actorIssuer(credential, i);
  if (!chain || (i < chain.actors.length && vouches(rules, own, subject))) return [own];
  const iss = chain.namedIssuers[i];
  return [...new Set([own, ...(typeof iss === 'string' ? [iss] : []), credential.issuer, ...possibleIssuers(rules, subject)])];
}

/** Every consumer that `named[i]` of a token's act chain could be (actorIssuers), each once. */
export function namedActorConsumers(rules: Rules, credential: Pick<Credential, 'issuer' | 'act'>, subject: string, i: number): Consumer[] {
  const found = new Map<string, Consumer>();
  for (const issuer of actorIssuers(rules, credential, subject, i)) {
    const c = resolveConsumer(rules, { subject, issuer });
    if (c && !found.has(c.key)) found.set(c.key, c);
  }
  return [...found.values()];
}

/** The subject's own kind: a call's kind is automation when an automation acts for it (Consumer.actor). */
export function subjectKind(consumer: Consumer): ConsumerKind {
  return consumer.subjectKind ?? consumer.kind;
}
