// Test tokens for trying rules by hand (`driftguard token`) and for the demo. Signs with
// a private JWK from a local file; never used on the request path.

import { readFileSync } from 'node:fs';
import { SignJWT, importJWK, type JWK } from 'jose';
import { randomUUID } from 'node:crypto';
import { jsonFault } from '../lib/redact.ts';

export interface MintOptions {
  readonly key: JWK;
  readonly issuer: string;
  readonly audience: string;
  readonly subject: string;
  readonly scopes?: readonly string[];
  readonly contract?: string;
  readonly contractClaim?: string;
  readonly lifetimeSeconds: number;
  readonly claims?: Record<string, unknown>;
  readonly now?: number;
}

export function readPrivateJwk(file: string): JWK {
  let jwk: JWK;
  // Where the fault is, never the text around it (jsonFault): here it is key material.
  try { jwk = JSON.parse(readFileSync(file, 'utf8')) as JWK; } catch (err) {
    throw new TypeError(err instanceof SyntaxError ? `${file} is not a JSON JWK (${jsonFault(err)})` : `${file}: ${(err as NodeJS.ErrnoException).code ?? 'cannot be read'}`);
  }
  if (jwk === null || typeof jwk !== 'object' || !jwk.d) throw new TypeError(`${file} is not a private JWK (no "d")`);
  return jwk;
}

export async function mint(o: MintOptions): Promise<string> {
  const alg = o.key.alg ?? (o.key.kty === 'EC' ? 'ES256' : o.key.kty === 'OKP' ? 'EdDSA' : 'RS256');
  const key = await importJWK(o.key, alg);
  const iat = Math.floor((o.now ?? Date.now()) / 1000);
  const payload: Record<string, unknown> = { ...o.claims };
  if (o.scopes?.length) payload.scope = o.scopes.join(' ');
  if (o.contract !== undefined) payload[o.contractClaim ?? 'contract_version'] = o.contract;
  return new SignJWT(payload)
    .setProtectedHeader({ alg, typ: 'JWT', ...(o.key.kid ? { kid: o.key.kid } : {}) })
    .setIssuer(o.issuer)
    .setAudience(o.audience)
    .setSubject(o.subject)
    .setJti(randomUUID())
    .setIssuedAt(iat)
    .setExpirationTime(iat + o.lifetimeSeconds)
    .sign(key);
}
