// The caller's identity: a bearer token from the Authorization header only (never the
// query string), verified against its issuer, within the lifetime allowed for its kind.
// Public operations need no credential. The token is read here and nowhere else.

import type { Check, Credential, RequestContext } from '../pipeline/types.ts';
import type { Rules } from '../rules/types.ts';
import type { Identity } from '../identity/verify.ts';
import { automationActor, resolveConsumer } from './consumers.ts';

/** The bearer token of an Authorization header: undefined without one, null when it is not a bearer token. */
export function bearerToken(header: string | undefined): string | undefined | null {
  if (header === undefined) return undefined;
  // RFC 9110: the scheme is case-insensitive; one or more spaces before the token.
  const m = /^bearer +([A-Za-z0-9\-._~+/]+=*) *$/i.exec(header);
  return m ? m[1]! : null;
}

/**
 * Which lifetime limit a token breaks, if any: its whole lifetime (exp - iat) longer than
 * `maxMs`, or its remaining validity (exp - now) longer than `maxMs` plus the clock skew.
 * Shared by the per-kind limit here and the per-sensitivity limit of task binding.
 */
export function lifetimeExceeded(c: Credential, now: number, maxMs: number, skewMs: number): 'lifetime' | 'remaining' | undefined {
  if (c.issuedAtMs !== undefined && c.expiresAtMs - c.issuedAtMs > maxMs) return 'lifetime';
  if (c.expiresAtMs - now > maxMs + skewMs) return 'remaining';
  return undefined;
}

/** `recordVerified`: what a feature records of every verified token, whatever then decides (the task it names). */
export function credential(rules: Rules, identity: Identity, recordVerified?: (ctx: RequestContext) => void): Check {
  const skew = rules.identity.clockSkewMs;
  return {
    name: 'credential',
    async run(ctx) {
      if (ctx.operation?.public) return undefined;
      const token = bearerToken(ctx.req.headers.authorization);
      if (token === undefined) return { reason: 'missing-credential', detail: 'send a bearer token in the Authorization header' };
      if (token === null) {
        const scheme = /^[^ \t]*/.exec(ctx.req.headers.authorization!)![0].toLowerCase();
        return scheme === 'bearer'
          ? { reason: 'invalid-credential', detail: 'malformed bearer token' }
          : { reason: 'missing-credential', detail: 'only the Bearer scheme is accepted' };
      }
      const verified = await identity.verify(token, ctx.now);
      if ('reason' in verified) return verified;
      ctx.credential = verified;
      // Recorded whatever decides the request (a scope refusal, audit mode's let-through).
      recordVerified?.(ctx);
      const chain = verified.act;
      if (chain) {
        ctx.extra['delegation.chain'] = chain.actors;
        ctx.extra['delegation.depth'] = chain.depth;
      }
      let consumer = resolveConsumer(rules, verified);
      // The registered subject from another issuer (two clusters' shop/checkout, or two OAuth
      // providers' client ids alike): not this consumer, and not an unknown one either.
      if (!consumer) return { reason: 'invalid-credential', detail: 'the subject is registered to another issuer' };
      const actor = automationActor(rules, consumer, verified);
      if (actor !== undefined) {
        consumer = { ...consumer, kind: 'automation', subjectKind: consumer.kind, actor };
        ctx.extra['delegation.automation'] = actor.subject.slice(0, 256);
      }
      ctx.consumer = consumer;

      const max = rules.identity.maxTokenLifetimeMs[consumer.kind];
      const iat = verified.issuedAtMs;
      if (consumer.kind === 'automation' && iat === undefined) {
        return { reason: 'credential-lifetime-exceeded', detail: 'automated consumers must present a token with iat' };
      }
      if (iat !== undefined && iat > ctx.now + skew) return { reason: 'invalid-credential', detail: 'token issued in the future' };
      const over = lifetimeExceeded(verified, ctx.now, max, skew);
      if (over === 'lifetime') return { reason: 'credential-lifetime-exceeded', detail: `token lifetime exceeds ${max / 1000}s for ${consumer.kind}` };
      if (over === 'remaining') return { reason: 'credential-lifetime-exceeded', detail: `token remains valid longer than ${max / 1000}s for ${consumer.kind}` };
      return undefined;
    },
  };
}
