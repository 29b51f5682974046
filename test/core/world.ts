// One real driftguard for a test: a loopback upstream that records what reached it, a
// loopback JWKS server with ES256, RS256 and EdDSA keys, driftguard in front of both, and
// its log lines captured. Helpers send requests and read answers the way a caller would.

import type { Test } from 'tap';
import { testKey, jwks, token, type TestKey, type TokenOptions } from '../support/keys.ts';
import { upstream, jwksServer, type Upstream, type JwksServer } from '../support/servers.ts';
import { baseRules, startTest, AGENT, type Running } from '../support/driftguard.ts';
import type { DriftguardOptions } from '../../proxy/server.ts';

export { AGENT, BOT, HUMAN } from '../support/driftguard.ts';

export interface Keys { readonly es: TestKey; readonly rs: TestKey; readonly ed: TestKey }

let shared: Promise<Keys> | undefined;
/** Key generation (RSA especially) is the slow part: one set per test file. */
export function keys(): Promise<Keys> {
  shared ??= Promise.all([testKey('ES256'), testKey('RS256'), testKey('EdDSA')]).then(([es, rs, ed]) => ({ es, rs, ed }));
  return shared;
}

export interface Answer {
  readonly status: number;
  readonly headers: Headers;
  readonly text: string;
  readonly json: any;
}

export interface World {
  readonly keys: Keys;
  readonly up: Upstream;
  readonly jwks: JwksServer;
  readonly dg: Running;
  readonly port: number;
  /** Every line driftguard logged. */
  readonly logs: Record<string, unknown>[];
  /** A valid token: the agent, on the current contract, with every scope the test contract uses. */
  tok(o?: Partial<TokenOptions>): Promise<string>;
  call(method: string, path: string, o?: { token?: string; headers?: Record<string, string>; body?: string }): Promise<Answer>;
}

export const ALL_SCOPES = 'items.read items.write items.admin payments.write';

export async function world(t: Test, patch: (r: Record<string, any>) => void = () => {}, options: DriftguardOptions & { waitReady?: boolean } = {}): Promise<World> {
  const k = await keys();
  const up = await upstream();
  const keyServer = await jwksServer(jwks(k.es, k.rs, k.ed));
  const logs: Record<string, unknown>[] = [];
  const dg = await startTest(baseRules(up.origin, keyServer.url, patch), { log: (l) => logs.push(l), ...options });
  t.teardown(async () => { await dg.close(); await up.close(); await keyServer.close(); });
  const port = Number(new URL(dg.url).port);
  return {
    keys: k, up, jwks: keyServer, dg, port, logs,
    tok: (o = {}) => token({ key: k.es, sub: AGENT, scope: ALL_SCOPES, contract: '2026-09', ...o }),
    async call(method, path, o = {}) {
      const headers: Record<string, string> = { ...o.headers };
      if (o.token !== undefined) headers.authorization = `Bearer ${o.token}`;
      const res = await fetch(dg.url + path, { method, headers, ...(o.body !== undefined ? { body: o.body } : {}) });
      const text = await res.text();
      let json: any;
      try { json = JSON.parse(text); } catch { json = undefined; }
      return { status: res.status, headers: res.headers, text, json };
    },
  };
}

/** Assert a denial: status, problem+json, type URI, code, and that the upstream saw nothing. */
export function assertDenied(t: Test, w: World, a: Answer, status: number, code: string): void {
  t.equal(a.status, status, `status ${status} for ${code}`);
  t.equal(a.headers.get('content-type'), 'application/problem+json', 'problem+json');
  t.equal(a.json?.reason, code, 'problem reason');
  t.equal(a.json?.code, code, 'problem code: the reason under its earlier name');
  t.equal(a.json?.status, status, 'problem status member');
  t.equal(a.json?.type, `https://driftguard.io/problems/${code}`, 'problem type URI');
  t.type(a.json?.title, 'string');
  t.type(a.json?.detail, 'string');
  t.equal(w.up.seen.length, 0, 'the upstream saw nothing');
}
