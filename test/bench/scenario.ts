// The benchmark's world: an issuer with two ES256 signing keys, 50 registered automated
// consumers each with its own token, a contract of 20 operations with path templates, and
// a deterministic request mix of 85% allowed, 10% warned (deprecated, low sensitivity) and
// 5% denied (stale contract). Tokens are signed with node:crypto directly (real ES256, the
// same bytes jose would produce) because the cold path needs tens of thousands of them.

import { generateKeyPairSync, sign, randomUUID, type KeyObject } from 'node:crypto';

export const ISSUER = 'https://issuer.bench.local';
export const AUDIENCE = 'driftguard-bench';
export const VERSIONS = ['2026-01', '2026-06', '2026-09'] as const;
/** The current contract, which 45 of the 50 consumers declare. */
export const CURRENT = '2026-09';
/** exp - iat of every token: the longest an automation may hold (identity.maxTokenLifetime). */
export const TOKEN_SECONDS = 3600;

export type Expect = 'allowed' | 'warned' | 'denied';

interface OperationSpec {
  readonly id: string;
  readonly method: string;
  readonly path: string;
  readonly scopes?: readonly string[];
  readonly sensitivity: 'low' | 'medium' | 'high' | 'critical';
  readonly changedIn?: string;
  readonly public?: boolean;
  readonly deprecated?: Record<string, string>;
}

export const OPERATIONS: readonly OperationSpec[] = [
  { id: 'listItems', method: 'GET', path: '/v1/items', scopes: ['items.read'], sensitivity: 'low' },
  { id: 'getItem', method: 'GET', path: '/v1/items/{itemId}', scopes: ['items.read'], sensitivity: 'low' },
  { id: 'createItem', method: 'POST', path: '/v1/items', scopes: ['items.write'], sensitivity: 'medium' },
  { id: 'replaceItem', method: 'PUT', path: '/v1/items/{itemId}', scopes: ['items.write'], sensitivity: 'medium' },
  { id: 'deleteItem', method: 'DELETE', path: '/v1/items/{itemId}', scopes: ['items.admin'], sensitivity: 'high' },
  { id: 'listReviews', method: 'GET', path: '/v1/items/{itemId}/reviews', scopes: ['items.read'], sensitivity: 'low' },
  { id: 'createReview', method: 'POST', path: '/v1/items/{itemId}/reviews', scopes: ['items.write'], sensitivity: 'low' },
  { id: 'getStock', method: 'GET', path: '/v1/items/{itemId}/stock', scopes: ['items.read'], sensitivity: 'low', changedIn: '2026-06' },
  { id: 'listOrders', method: 'GET', path: '/v1/orders', scopes: ['orders.read'], sensitivity: 'low' },
  { id: 'getOrder', method: 'GET', path: '/v1/orders/{orderId}', scopes: ['orders.read'], sensitivity: 'low' },
  { id: 'createOrder', method: 'POST', path: '/v1/orders', scopes: ['orders.write'], sensitivity: 'high', changedIn: '2026-09' },
  { id: 'getOrderLine', method: 'GET', path: '/v1/orders/{orderId}/lines/{lineId}', scopes: ['orders.read'], sensitivity: 'low' },
  { id: 'cancelOrder', method: 'POST', path: '/v1/orders/{orderId}/cancel', scopes: ['orders.write'], sensitivity: 'high' },
  { id: 'getCustomer', method: 'GET', path: '/v1/customers/{customerId}', scopes: ['customers.read'], sensitivity: 'medium' },
  { id: 'updateCustomer', method: 'PATCH', path: '/v1/customers/{customerId}', scopes: ['customers.write'], sensitivity: 'medium' },
  { id: 'listAddresses', method: 'GET', path: '/v1/customers/{customerId}/addresses', scopes: ['customers.read'], sensitivity: 'low' },
  { id: 'getInvoice', method: 'GET', path: '/v1/invoices/{invoiceId}', scopes: ['invoices.read'], sensitivity: 'medium' },
  { id: 'createPayment', method: 'POST', path: '/v1/payments', scopes: ['payments.write'], sensitivity: 'critical', changedIn: '2026-09' },
  { id: 'search', method: 'GET', path: '/v1/search', scopes: ['items.read'], sensitivity: 'low', deprecated: { since: '2026-01-01', replacement: 'listItems', link: 'https://api.bench.local/changes/search' } },
  { id: 'health', method: 'GET', path: '/v1/health', sensitivity: 'low', public: true },
];

const ALL_SCOPES = [...new Set(OPERATIONS.flatMap((o) => o.scopes ?? []))].join(' ');

/** How many of every 100 requests go to each operation, and what driftguard must decide. */
const MIX: readonly [string, number, Expect][] = [
  ['getItem', 20, 'allowed'], ['listItems', 10, 'allowed'], ['getOrder', 10, 'allowed'], ['listOrders', 5, 'allowed'],
  ['getOrderLine', 5, 'allowed'], ['getCustomer', 5, 'allowed'], ['getStock', 5, 'allowed'], ['listReviews', 4, 'allowed'],
  ['getInvoice', 4, 'allowed'], ['createItem', 4, 'allowed'], ['listAddresses', 3, 'allowed'], ['replaceItem', 2, 'allowed'],
  ['createReview', 2, 'allowed'], ['updateCustomer', 2, 'allowed'], ['cancelOrder', 2, 'allowed'], ['health', 2, 'allowed'],
  ['search', 10, 'warned'],
  ['createOrder', 3, 'denied'], ['createPayment', 2, 'denied'],
];

export const CONSUMERS = 50;

export function subjectOf(i: number): string {
  return `spiffe://bench.local/ns/agents/sa/agent-${String(i).padStart(2, '0')}`;
}

export interface SigningKey {
  readonly kid: string;
  readonly privateKey: KeyObject;
  readonly publicJwk: Record<string, unknown>;
}

export function signingKey(kid: string): SigningKey {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { kid, privateKey, publicJwk: { ...publicKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' } };
}

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

/** Consumers from this index up are stale: their tokens declare contract 2026-06. */
export const FIRST_STALE = 45;

/** The contract version consumer `i` was built against. */
export function contractOf(i: number): string {
  return i >= FIRST_STALE ? '2026-06' : CURRENT;
}

/** An ES256 JWT as an identity provider issues it (typ JWT, kid, iat/exp/jti, task). */
export function mintToken(key: SigningKey, consumer: number, nowSeconds: number): string {
  const head = b64({ alg: 'ES256', typ: 'JWT', kid: key.kid });
  const body = b64({
    iss: ISSUER, aud: AUDIENCE, sub: subjectOf(consumer), iat: nowSeconds, exp: nowSeconds + TOKEN_SECONDS, jti: randomUUID(),
    scope: ALL_SCOPES, contract_version: contractOf(consumer), task_id: `task-${consumer}-${nowSeconds}`,
  });
  const input = `${head}.${body}`;
  const signature = sign('sha256', Buffer.from(input), { key: key.privateKey, dsaEncoding: 'ieee-p1363' });
  return `${input}.${signature.toString('base64url')}`;
}

/** The rules driftguard runs with (as an operator writes them, before defaults). */
export function rulesFor(opts: { upstream: string; jwksUrl: string; listen: string; admin: string; extra?: Record<string, unknown> }): Record<string, unknown> {
  const ids = OPERATIONS.map((o) => o.id);
  return {
    proxy: { listen: opts.listen, admin: opts.admin, upstream: opts.upstream, mode: 'enforce', timeouts: { connect: '2s', response: '10s' } },
    identity: {
      issuers: [{ issuer: ISSUER, audiences: [AUDIENCE], algorithms: ['ES256'], jwks: { url: opts.jwksUrl, refresh: '5m', cooldown: '30s', timeout: '2s' } }],
      clockSkew: '30s',
      maxTokenLifetime: { automation: '1h', human: '12h' },
    },
    consumers: {
      unknown: 'deny',
      // Every fifth consumer declared the operations it needs, so that check does real work.
      registry: Array.from({ length: CONSUMERS }, (_, i) => ({
        subject: subjectOf(i), kind: 'automation', owner: `team-${i % 7}`,
        ...(i % 5 === 0 ? { operations: ids } : {}),
      })),
    },
    contract: {
      versions: [...VERSIONS], minimum: '2026-06', blockAt: 'high',
      operations: OPERATIONS.map((o) => ({ ...o, ...(o.scopes ? { scopes: [...o.scopes] } : {}) })),
    },
    // Sections of feature modules (telemetry, lifecycle), as the harness configures them.
    ...opts.extra,
  };
}

export interface RequestSpec {
  readonly method: string;
  /** May hold PLACEHOLDER. */
  readonly path: string;
  readonly token: string;
  /** Send an Idempotency-Key (unique per request). */
  readonly idempotent: boolean;
  /** May hold PLACEHOLDER; '' for none. */
  readonly body: string;
  readonly operation: string;
  readonly expect: Expect;
}

/**
 * Replaced by wrk (mix.lua) with a value unique to each request it sends, of the same length
 * (Content-Length is computed once). The lifecycle monitors refuse a consumer's identical
 * request more than 20 times a minute and a reused idempotency key: a replayed file of
 * identical requests would measure retry-storm denials, not the mix.
 */
export const PLACEHOLDER = '@NNNNNNNNNN@';

/** Small deterministic PRNG (mulberry32): the same mix on every run. */
function prng(seed: number): () => number {
  return () => {
    seed |= 0; seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const WRITES = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
const BODIES: Record<string, string> = {
  POST: JSON.stringify({ ref: PLACEHOLDER, name: 'widget', quantity: 3, note: 'created by the driftguard benchmark' }),
  PUT: JSON.stringify({ ref: PLACEHOLDER, name: 'widget', quantity: 4, colour: 'blue', note: 'replaced by the benchmark' }),
  PATCH: JSON.stringify({ ref: PLACEHOLDER, email: 'ops@bench.local' }),
};

/**
 * `blocks` shuffled blocks of 100 requests in the exact mix. Allowed and warned requests
 * come from the 45 current consumers in turn, denied ones from the 5 stale consumers.
 * `tokenFor(consumer)` gives that consumer's token.
 */
export function requestMix(blocks: number, tokenFor: (consumer: number) => string): RequestSpec[] {
  const rnd = prng(4);
  const byId = new Map(OPERATIONS.map((o) => [o.id, o]));
  const out: RequestSpec[] = [];
  let current = 0;
  let stale = 0;
  for (let b = 0; b < blocks; b++) {
    const block: [string, Expect][] = MIX.flatMap(([id, n, expect]) => Array.from({ length: n }, () => [id, expect] as [string, Expect]));
    for (let i = block.length - 1; i > 0; i--) { const j = Math.floor(rnd() * (i + 1)); [block[i], block[j]] = [block[j]!, block[i]!]; }
    for (const [id, expect] of block) {
      const op = byId.get(id)!;
      let path = op.path.replace(/\{[^}]+\}/g, PLACEHOLDER);
      if (id === 'search') path += '?q=widget&limit=20';
      if (op.method === 'GET' && !op.path.includes('{')) path += (path.includes('?') ? '&' : '?') + `cursor=${PLACEHOLDER}`;
      const consumer = expect === 'denied' ? FIRST_STALE + (stale++ % (CONSUMERS - FIRST_STALE)) : current++ % FIRST_STALE;
      out.push({ method: op.method, path, token: tokenFor(consumer), idempotent: WRITES.has(op.method), body: BODIES[op.method] ?? '', operation: id, expect });
    }
  }
  return out;
}

/** One request per line for wrk's Lua script: method, path, token, idempotent (0/1), body; tab-separated. */
export function wrkLines(requests: readonly RequestSpec[]): string {
  return requests.map((r) => `${r.method}\t${r.path}\t${r.token}\t${r.idempotent ? 1 : 0}\t${r.body}`).join('\n') + '\n';
}
