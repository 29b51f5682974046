// Real signing keys for tests: ES256, RS256 and EdDSA pairs, their JWKS, and a minting helper.

import { generateKeyPair, exportJWK, SignJWT, type JWK, type CryptoKey } from 'jose';
import { randomUUID } from 'node:crypto';

export interface TestKey {
  readonly alg: 'ES256' | 'RS256' | 'EdDSA' | 'PS256' | 'ES384';
  readonly kid: string;
  readonly privateKey: CryptoKey;
  readonly publicJwk: JWK;
  readonly privateJwk: JWK;
}

export async function testKey(alg: TestKey['alg'], kid = `${alg.toLowerCase()}-${randomUUID().slice(0, 8)}`): Promise<TestKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true, ...(alg === 'EdDSA' ? { crv: 'Ed25519' } : {}) });
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  const privateJwk = { ...(await exportJWK(privateKey)), kid, alg, use: 'sig' };
  return { alg, kid, privateKey, publicJwk, privateJwk };
}

export function jwks(...keys: TestKey[]): { keys: JWK[] } {
  return { keys: keys.map((k) => k.publicJwk) };
}

export interface TokenOptions {
  readonly key: TestKey;
  readonly iss?: string;
  readonly aud?: string | string[];
  readonly sub?: string;
  readonly scope?: string;
  readonly contract?: string;
  /** seconds; default 300 */
  readonly ttl?: number;
  readonly now?: number;
  readonly claims?: Record<string, unknown>;
  readonly header?: Record<string, unknown>;
  /** Leave out these registered claims. */
  readonly omit?: readonly ('exp' | 'iat' | 'jti' | 'sub' | 'iss' | 'aud')[];
  readonly nbf?: number;
}

export const ISSUER = 'https://issuer.test.local';
export const AUDIENCE = 'driftguard-test';

/** Sign a token; defaults make a valid, short-lived automation token on contract 2026-09. */
export async function token(o: TokenOptions): Promise<string> {
  const now = Math.floor((o.now ?? Date.now()) / 1000);
  const omit = new Set(o.omit ?? []);
  const payload: Record<string, unknown> = { ...o.claims };
  if (o.scope !== undefined) payload.scope = o.scope;
  if (o.contract !== undefined) payload.contract_version = o.contract;
  if (!omit.has('iss')) payload.iss = o.iss ?? ISSUER;
  if (!omit.has('aud')) payload.aud = o.aud ?? AUDIENCE;
  if (!omit.has('sub')) payload.sub = o.sub ?? 'spiffe://test.local/ns/app/sa/agent';
  if (!omit.has('jti')) payload.jti = randomUUID();
  if (!omit.has('iat')) payload.iat = now;
  if (!omit.has('exp')) payload.exp = now + (o.ttl ?? 300);
  if (o.nbf !== undefined) payload.nbf = o.nbf;
  return new SignJWT(payload)
    .setProtectedHeader({ alg: o.key.alg, kid: o.key.kid, typ: 'JWT', ...o.header })
    .sign(o.key.privateKey);
}
