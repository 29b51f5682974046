// A real driftguard with the lifecycle feature wired the way proxy/run.ts wires features:
// rules from a YAML file, lifecycle(rules, log) for deps, observer and admin routes.
// Plus a spy observer that keeps each request's context, and the captured log lines.

import type { AddressInfo } from 'node:net';
import type { Test } from 'tap';
import { loadRules } from '../../proxy/rules/load.ts';
import { startDriftguard, type Driftguard } from '../../proxy/server.ts';
import { composeObservers, noopObserver, type Observer } from '../../proxy/observe.ts';
import { lifecycle } from '../../proxy/lifecycle/index.ts';
import type { Feature } from '../../proxy/features.ts';
import type { RequestContext, Decision } from '../../proxy/pipeline/types.ts';
import type { ForwardOutcome } from '../../proxy/forward/outcome.ts';
import { writeRules, baseRules, waitReady, AGENT } from '../support/driftguard.ts';
import { testKey, jwks, token, ISSUER, type TestKey, type TokenOptions } from '../support/keys.ts';
import { upstream, jwksServer, type Upstream, type JwksServer } from '../support/servers.ts';

export interface Seen { readonly ctx: RequestContext; decision?: Decision; forwarded?: ForwardOutcome }

export interface Lifecycled {
  readonly dg: Driftguard;
  readonly feature: Feature;
  readonly url: string;
  readonly admin: string;
  readonly file: string;
  /** Every request's context and decision, in arrival order. */
  readonly seen: Seen[];
  /** Every log line written by driftguard and the feature. */
  readonly logs: Record<string, unknown>[];
  close(): Promise<void>;
}

export interface World {
  readonly key: TestKey;
  readonly up: Upstream;
  readonly keys: JwksServer;
  /** A token for AGENT on the current contract with every scope the base rules use. */
  token(o?: Partial<TokenOptions>): Promise<string>;
  rules(patch?: (r: Record<string, any>) => void): Record<string, any>;
  close(): Promise<void>;
}

/** A monitors section with every monitor off but those given (and any other settings given). */
export function monitorsOnly(monitors: Record<string, unknown>): Record<string, unknown> {
  return { retryStorm: { mode: 'off' }, idempotency: { mode: 'off' }, traversal: { mode: 'off' }, quarantine: { mode: 'off' }, ...monitors };
}

/**
 * Trust `issuer` too, with the first issuer's keys, and name the registered consumers' issuer
 * (the first), which the rules must do once several issuers can vouch for a subject.
 */
export function trustAlso(r: Record<string, any>, issuer: string): void {
  r.identity.issuers.push({ ...structuredClone(r.identity.issuers[0]), issuer });
  for (const c of r.consumers.registry) c.issuer = ISSUER;
}

/**
 * Rules for agents exchanged at an OAuth provider: the test issuer and a spiffe issuer of trust
 * domain spire.example (the same keys), unregistered subjects allowed as automations, any
 * actor for anybody: only the checks that restrict (quarantine, revocation) hold a chain.
 */
export const SPIRE = 'https://spire.example';
export function withSpire(r: Record<string, any>): void {
  trustAlso(r, SPIRE);
  Object.assign(r.identity.issuers[1], { profile: 'spiffe', trustDomain: 'spire.example', algorithms: ['ES256'] });
  r.consumers.unknown = 'allow';
  r.consumers.defaultKind = 'automation';
  r.delegation = { mode: 'enforce', unlisted: 'allow', consumers: [] };
}

export const ALL_SCOPES = 'items.read items.write items.admin payments.write';

export async function world(): Promise<World> {
  const key = await testKey('ES256');
  const up = await upstream();
  const keys = await jwksServer(jwks(key));
  return {
    key, up, keys,
    token: (o = {}) => token({ key, sub: AGENT, scope: ALL_SCOPES, contract: '2026-09', ...o }),
    rules: (patch) => baseRules(up.origin, keys.url, patch),
    async close() { await up.close(); await keys.close(); },
  };
}

/** Start driftguard + lifecycle from rules (object or a rules file already written). */
export async function startLifecycle(rules: Record<string, any> | { file: string }, options: { now?: () => number; dir?: string } = {}): Promise<Lifecycled> {
  const file = 'file' in rules && typeof rules.file === 'string' ? rules.file : writeRules(rules, options.dir);
  const loaded = loadRules(file);
  const logs: Record<string, unknown>[] = [];
  const log = (line: Record<string, unknown>) => { logs.push(JSON.parse(JSON.stringify(line))); };
  const feature = await lifecycle(loaded, log, options.now ? { now: options.now } : {});
  const seen: Seen[] = [];
  const spy: Observer = {
    begin(ctx) {
      const s: Seen = { ctx };
      seen.push(s);
      return { ...noopObserver.begin(ctx), decided(d) { s.decision = d; }, forwarded(o) { s.forwarded = o; } };
    },
  };
  const dg = startDriftguard(loaded, {
    log, observer: composeObservers([feature.observer!, spy]), deps: feature.deps ?? {},
    ...(options.now ? { now: options.now } : {}),
  });
  feature.attach?.(dg);
  await dg.listening;
  await waitReady(dg);
  const port = (dg.traffic.address() as AddressInfo).port;
  const adminPort = (dg.admin.address() as AddressInfo).port;
  return {
    dg, feature, file, seen, logs,
    url: `http://127.0.0.1:${port}`, admin: `http://127.0.0.1:${adminPort}`,
    async close() { await dg.close(); await feature.shutdown?.(); },
  };
}

/** Assert an answer is the problem body of `code` with `status`; returns the body. */
export async function problem(t: Test, res: Response, code: string, status: number): Promise<Record<string, any>> {
  const text = await res.text();
  t.equal(res.status, status, `${code}: status ${status}`);
  t.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/, `${code}: problem+json`);
  const body = JSON.parse(text) as Record<string, any>;
  t.equal(body.code, code, `code ${code}`);
  t.equal(body.status, status);
  t.equal(body.type, `https://driftguard.io/problems/${code}`);
  t.type(body.title, 'string');
  t.type(body.detail, 'string');
  return body;
}

export function bearer(tok: string, extra: Record<string, string> = {}): Record<string, string> {
  return { authorization: `Bearer ${tok}`, ...extra };
}

/** Wait until `cond()` holds (polling), or fail after `ms`. */
export async function until(cond: () => boolean | Promise<boolean>, ms = 5000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return true;
    await new Promise((r) => setTimeout(r, 25));
  }
  return false;
}
