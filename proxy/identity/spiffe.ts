// The SPIFFE JWT-SVID profile (profile: spiffe), as the JWT-SVID specification requires:
// aud present, sub the SPIFFE ID of a workload in the configured trust domain, signed with
// an RS, ES or PS algorithm, typ (when present) JWT or JOSE. SPIRE sets iss only when its
// jwt_issuer is configured, so a JWT-SVID without iss is matched by its trust domain.
// SPIFFE ID syntax follows the SPIFFE-ID specification (and go-spiffe's parser).

import type { JSONWebKeySet, JWTPayload, ProtectedHeaderParameters } from 'jose';

/** The algorithms the JWT-SVID specification allows. */
export const SVID_ALGORITHMS: ReadonlySet<string> = new Set(['RS256', 'RS384', 'RS512', 'ES256', 'ES384', 'ES512', 'PS256', 'PS384', 'PS512']);

/**
 * The keys of a SPIFFE bundle that may verify a JWT-SVID, in the form jose takes. A bundle
 * marks every key with its use (SPIFFE Trust Domain and Bundle spec, 4.2.2): `jwt-svid` keys
 * sign JWT-SVIDs, `x509-svid` keys are X.509 authorities and must never verify one. jose
 * itself takes only keys without `use` or with `use: sig`, so a bundle straight from SPIRE's
 * bundle endpoint would verify nothing: its `jwt-svid` keys are handed over as `sig`. Keys
 * already `sig` or without `use` (SPIRE's OIDC discovery provider serves a plain JWKS) are
 * kept as they are; any other use is dropped.
 */
export function jwtSvidKeys(bundle: JSONWebKeySet): JSONWebKeySet {
  const keys = [];
  for (const key of bundle.keys) {
    if (key.use === 'jwt-svid') keys.push({ ...key, use: 'sig' });
    else if (key.use === undefined || key.use === 'sig') keys.push(key);
  }
  return { keys };
}

const TRUST_DOMAIN = /^[a-z0-9._-]+$/;
const SEGMENT = /^[A-Za-z0-9._-]+$/;

/** A trust domain name as the specification allows it, or why not. */
export function trustDomainProblem(name: string): string | undefined {
  if (name.length > 255) return 'a trust domain name is at most 255 characters';
  if (!TRUST_DOMAIN.test(name)) return 'a trust domain name uses only lowercase letters, digits, ".", "-" and "_"';
  return undefined;
}

/** Split a workload's SPIFFE ID, or say why it is not one. */
export function parseSpiffeId(id: string): { trustDomain: string; path: string } | { problem: string } {
  if (id.length > 2048) return { problem: 'longer than 2048 bytes' };
  if (!id.startsWith('spiffe://')) return { problem: 'not a spiffe:// URI' };
  const rest = id.slice('spiffe://'.length);
  const slash = rest.indexOf('/');
  const trustDomain = slash < 0 ? rest : rest.slice(0, slash);
  const path = slash < 0 ? '' : rest.slice(slash);
  if (trustDomain === '' || trustDomainProblem(trustDomain)) return { problem: 'invalid trust domain' };
  if (path === '') return { problem: 'names a trust domain, not a workload' };
  for (const segment of path.slice(1).split('/')) {
    if (segment === '' || segment === '.' || segment === '..' || !SEGMENT.test(segment)) return { problem: 'invalid path' };
  }
  return { trustDomain, path };
}

/** The trust domain a token's unverified sub names, to pick the issuer of an SVID without iss. */
export function trustDomainOf(sub: unknown): string | undefined {
  if (typeof sub !== 'string') return undefined;
  const parsed = parseSpiffeId(sub);
  return 'problem' in parsed ? undefined : parsed.trustDomain;
}

/** Why a token without iss has no issuer: only a JWT-SVID of a trusted trust domain may come so. */
export function withoutIssuer(sub: unknown): string {
  if (typeof sub !== 'string') return 'untrusted issuer: no iss, and no SPIFFE ID in sub';
  const parsed = parseSpiffeId(sub);
  return 'problem' in parsed ? `untrusted issuer: no iss, and sub is not a workload SPIFFE ID (${parsed.problem})` : 'untrusted issuer: no iss, and the SPIFFE ID\'s trust domain is not trusted';
}

/** The consumer subject of a verified JWT-SVID (its SPIFFE ID), or a detail string. */
export function spiffeSubject(payload: JWTPayload, header: ProtectedHeaderParameters, trustDomain: string): { subject: string } | { detail: string } {
  // Case-insensitive in ASCII (RFC 7515 §4.1.9): `jwt` is JWT; `JOſE` is not JOSE (toUpperCase would make it so).
  if (header.typ !== undefined && !(typeof header.typ === 'string' && /^(?:jwt|jose)$/i.test(header.typ))) return { detail: 'a JWT-SVID\'s typ is JWT or JOSE' };
  if (typeof header.alg !== 'string' || !SVID_ALGORITHMS.has(header.alg)) return { detail: 'signature algorithm not allowed for a JWT-SVID' };
  if (payload.aud === undefined || (Array.isArray(payload.aud) && payload.aud.length === 0)) return { detail: 'a JWT-SVID must have aud' };
  if (typeof payload.sub !== 'string') return { detail: 'a JWT-SVID\'s sub is a SPIFFE ID' };
  const id = parseSpiffeId(payload.sub);
  if ('problem' in id) return { detail: `sub is not a workload SPIFFE ID (${id.problem})` };
  if (id.trustDomain !== trustDomain) return { detail: 'sub is not in the trusted trust domain' };
  return { subject: payload.sub };
}
