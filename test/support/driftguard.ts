// Starts a real driftguard on loopback (ephemeral ports) from rules given as an object,
// written to a temporary YAML file exactly as an operator would write it.

import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { stringify } from 'yaml';
import { loadRules } from '../../proxy/rules/load.ts';
import { startDriftguard, type Driftguard, type DriftguardOptions } from '../../proxy/server.ts';
import { ISSUER, AUDIENCE } from './keys.ts';

export const AGENT = 'spiffe://test.local/ns/app/sa/agent';
export const BOT = 'spiffe://test.local/ns/ops/sa/bot';
export const HUMAN = 'alice@test.local';

/** Rules for tests: a small contract with every kind of operation. Override any part. */
export function baseRules(upstream: string, jwksUrl: string, patch: (r: Record<string, any>) => void = () => {}): Record<string, any> {
  const rules: Record<string, any> = {
    proxy: { listen: '127.0.0.1:0', admin: '127.0.0.1:0', upstream, mode: 'enforce', timeouts: { connect: '1s', response: '2s' } },
    identity: {
      issuers: [{ issuer: ISSUER, audiences: [AUDIENCE], algorithms: ['ES256', 'RS256', 'EdDSA'], jwks: { url: jwksUrl, refresh: '5m', cooldown: '30s', timeout: '1s' } }],
      clockSkew: '30s',
      maxTokenLifetime: { automation: '1h', human: '12h' },
    },
    consumers: {
      unknown: 'deny',
      registry: [
        { subject: AGENT, kind: 'automation', owner: 'team-app' },
        { subject: BOT, kind: 'automation', owner: 'team-ops', operations: ['getItem', 'deleteItem'] },
        { subject: HUMAN, kind: 'human', owner: 'alice' },
      ],
    },
    contract: {
      versions: ['2026-01', '2026-06', '2026-09'],
      minimum: '2026-06',
      blockAt: 'high',
      operations: [
        { id: 'status', method: 'GET', path: '/status', sensitivity: 'low', public: true },
        { id: 'getItem', method: 'GET', path: '/items/{id}', scopes: ['items.read'], sensitivity: 'low' },
        { id: 'listItems', method: 'GET', path: '/items', scopes: ['items.read'], sensitivity: 'low', changedIn: '2026-09' },
        { id: 'createItem', method: 'POST', path: '/items', scopes: ['items.write'], sensitivity: 'medium' },
        { id: 'upload', method: 'PUT', path: '/items/{id}/blob', scopes: ['items.write'], sensitivity: 'low' },
        { id: 'pay', method: 'POST', path: '/payments', scopes: ['payments.write'], sensitivity: 'critical', changedIn: '2026-09' },
        { id: 'deleteItem', method: 'DELETE', path: '/items/{id}', scopes: ['items.admin'], sensitivity: 'high', deprecated: { since: '2026-01-01', sunset: '2099-01-01', replacement: 'archiveItem', link: 'https://api.test.local/changes' } },
        { id: 'archiveItem', method: 'POST', path: '/items/{id}/archive', scopes: ['items.admin'], sensitivity: 'high' },
        { id: 'oldSearch', method: 'GET', path: '/search', scopes: ['items.read'], sensitivity: 'low', deprecated: { since: '2026-01-01', replacement: 'listItems' } },
        { id: 'legacy', method: 'GET', path: '/legacy', sensitivity: 'low', deprecated: { since: '2025-01-01', sunset: '2025-06-01' } },
      ],
    },
  };
  patch(rules);
  return rules;
}

export function writeRules(rules: unknown, dir = mkdtempSync(join(tmpdir(), 'driftguard-'))): string {
  const file = join(dir, 'rules.yaml');
  writeFileSync(file, typeof rules === 'string' ? rules : stringify(rules));
  return file;
}

export interface Running {
  readonly dg: Driftguard;
  readonly url: string;
  readonly admin: string;
  readonly file: string;
  close(): Promise<void>;
}

/**
 * Wait until driftguard is ready: 200 polls of 10 ms, as a test that means to start unready
 * (a key server down) expects; and up to 20 s more while a key set's fetch timed out. On a
 * loaded machine the first fetch from the loopback key server can outlast jwks.timeout (1 s in
 * baseRules); the key set fetches again within seconds, and a test that went on without it got
 * 503 identity-unavailable for a valid token.
 */
export async function waitReady(dg: Driftguard): Promise<void> {
  for (let i = 0; i < 200 && !dg.ready; i++) await new Promise((r) => setTimeout(r, 10));
  const end = Date.now() + 20_000;
  while (!dg.ready && Date.now() < end && dg.notReady.some((why) => why.startsWith('signing keys ') && why.endsWith('the fetch was aborted'))) {
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Start driftguard with these rules and wait until it listens and (by default) is ready. */
export async function startTest(rules: unknown, options: DriftguardOptions & { waitReady?: boolean } = {}): Promise<Running> {
  const file = writeRules(rules);
  const dg = startDriftguard(loadRules(file), { log: () => {}, ...options });
  await dg.listening;
  if (options.waitReady !== false) await waitReady(dg);
  const port = (dg.traffic.address() as AddressInfo).port;
  const adminPort = (dg.admin.address() as AddressInfo).port;
  return { dg, file, url: `http://127.0.0.1:${port}`, admin: `http://127.0.0.1:${adminPort}`, close: () => dg.close() };
}
