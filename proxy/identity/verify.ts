// Verifies a bearer token against the issuer it names, with every jose default that is
// unsafe for a sidecar pinned: algorithms per issuer, exp required, iss/aud/typ checked.
// Verified tokens are cached by their hash (never kept in memory as text), so a repeated
// token costs a hash and a map lookup instead of a signature check.

import { hash } from 'node:crypto';
import { jwtVerify, decodeJwt, decodeProtectedHeader, errors, type FlattenedJWSInput, type JWTPayload, type JWTVerifyOptions, type JWTVerifyResult } from 'jose';
import { LRUCache } from 'lru-cache';
import type { IdentityRules, IssuerRules } from '../rules/types.ts';
import type { Credential } from '../pipeline/types.ts';
import { IdentityUnavailableError, fileKeySet, RemoteKeySet, type KeySet, type SingleKey } from './jwks.ts';
import { discoveredKeySet, kubernetesSubject } from './cluster.ts';
import { jwtSvidKeys, spiffeSubject, trustDomainOf, withoutIssuer } from './spiffe.ts';
import { foreignSubject } from './subjects.ts';
import { actChain } from './act.ts';
import { jsonBytes, lruFill, stringBytes, type TableFill } from '../lib/heap.ts';

export type VerifyFailure =
  | { readonly reason: 'invalid-credential'; readonly detail: string }
  | { readonly reason: 'identity-unavailable'; readonly detail: string; readonly retryAfter: number };

/** Larger tokens are refused outright: no identity provider issues a 16 KiB JWT. */
const MAX_TOKEN_BYTES = 16 * 1024;
/** Heap of a cache entry beside its claims and scopes: the key, two credential objects, the set. */
const CACHE_ENTRY_BYTES = 512;
/** Heap of one scope in the set beside its characters (measured: 23.7 KB for 880 two-letter scopes). */
const SCOPE_BYTES = 64;
/** Heap of a delegation chain beside its strings (held by the claims too): its object, three arrays, a slot per entry. */
const ACT_BYTES = 160;
const ACT_SLOT_BYTES = 8;

/**
 * A verified token in the cache, with the key set that verified it and that set's version
 * then: a hit from an older version is verified again, so a key removed from the set stops
 * verifying at once, not when the token expires.
 */
interface Cached {
  readonly credential: Credential;
  readonly keys: KeySet;
  readonly version: number;
}

interface Issuer {
  readonly rules: IssuerRules;
  readonly keys: KeySet;
  /** jwtVerify's options but currentDate: they depend only on the rules, so they are built once. */
  readonly options: Readonly<JWTVerifyOptions>;
}

/**
 * Every jose option that is unsafe by default, pinned. `checkIss` is false only for the
 * trust-domain entry of a spiffe issuer: a JWT-SVID without iss is found by its sub; any iss
 * present is checked.
 */
function verifyOptions(iss: IssuerRules, clockSkewMs: number, checkIss: boolean): JWTVerifyOptions {
  return Object.freeze({
    ...(checkIss ? { issuer: iss.issuer } : {}),
    audience: iss.audiences as string[],
    algorithms: iss.algorithms as string[],
    ...(iss.typ ? { typ: iss.typ } : {}),
    clockTolerance: Math.floor(clockSkewMs / 1000),
    requiredClaims: iss.profile === 'spiffe' ? ['exp', 'sub', 'aud'] : ['exp', 'sub'],
  });
}

export interface IdentityOptions {
  /** Key sets by issuer, to reuse across reloads; missing ones are created. */
  readonly keySets?: ReadonlyMap<string, KeySet>;
  /** The identity a reload replaces: its verified-token cache is kept when the identity rules are the same. */
  readonly previous?: Identity;
  readonly onCache?: (hit: boolean) => void;
}

export class Identity {
  readonly #rules: IdentityRules;
  readonly #issuers = new Map<string, Issuer>();
  /** spiffe issuers by trust domain: a JWT-SVID without iss is matched by its sub. */
  readonly #trustDomains = new Map<string, Issuer>();
  readonly #cache?: LRUCache<string, Cached>;
  /** The key sets of this identity's issuers: a cached entry of another (a reload's file key set read again) is verified again. */
  readonly #keySetsInUse = new Set<KeySet>();
  readonly #onCache?: (hit: boolean) => void;

  constructor(rules: IdentityRules, options: IdentityOptions = {}) {
    this.#rules = rules;
    this.#onCache = options.onCache;
    for (const iss of rules.issuers) {
      // A file key set is re-read on every reload (a rotated key in a mounted Secret); remote ones
      // are kept with their cache and refresh timer.
      const keys = (iss.jwks.kind === 'file' ? undefined : options.keySets?.get(keySetKey(iss))) ?? keySetFor(iss);
      this.#issuers.set(iss.issuer, { rules: iss, keys, options: verifyOptions(iss, rules.clockSkewMs, true) });
      if (iss.profile === 'spiffe' && iss.trustDomain !== undefined) {
        this.#trustDomains.set(iss.trustDomain, { rules: iss, keys, options: verifyOptions(iss, rules.clockSkewMs, false) });
      }
    }
    // Bounded by count and by the heap its entries hold: an entry keeps the token's claims, and
    // the same token text can parse into ten times its size (a claim of many empty arrays), so
    // an entry is weighed by its parsed claims (jsonBytes), not by the token's length. The
    // chart's heap is 96 MiB.
    // A reload that leaves the identity rules as they were (most change the registry or the
    // contract) keeps the verified tokens: every pod's cache emptied at each ConfigMap change
    // made every caller's next request a signature check at once. An entry is still served
    // only while its key set is one of this identity's, at the version it was verified at.
    const previous = options.previous;
    if (previous !== undefined && previous.#cache !== undefined && JSON.stringify(previous.#rules) === JSON.stringify(rules)) this.#cache = previous.#cache;
    else if (rules.cache.maxEntries > 0) this.#cache = new LRUCache({ max: rules.cache.maxEntries, maxSize: rules.cache.maxBytes });
    for (const i of this.#issuers.values()) this.#keySetsInUse.add(i.keys);
  }

  /** How full the verified-token cache is (driftguard_table_*). */
  cacheFill(): TableFill {
    return this.#cache ? lruFill(this.#cache) : { entries: 0, fill: 0 };
  }

  /** Fetch every remote key set once. Rejects when one cannot be fetched (refresh goes on). */
  async start(): Promise<void> {
    await Promise.all([...this.#issuers.values()].map((i) => i.keys.start()));
  }

  get ready(): boolean {
    for (const i of this.#issuers.values()) if (!i.keys.ready) return false;
    return true;
  }

  /** Each issuer with its key set: two issuers on one JWKS URL each fetch it (metrics name both). */
  issuerKeySets(): [issuer: string, keys: KeySet][] {
    return [...this.#issuers.values()].map((i) => [i.rules.issuer, i.keys]);
  }

  keySets(): Map<string, KeySet> {
    return new Map([...this.#issuers.values()].map((i) => [keySetKey(i.rules), i.keys]));
  }

  close(): void {
    for (const i of this.#issuers.values()) i.keys.close();
  }

  /** Verify `token` at time `now`; a Credential, or why not. Never throws. */
  async verify(token: string, now: number): Promise<Credential | VerifyFailure> {
    try {
      if (token.length > MAX_TOKEN_BYTES) return { reason: 'invalid-credential', detail: 'token too large' };
      const cacheable = this.#cache !== undefined && token.length <= this.#rules.cache.maxTokenBytes;
      // One-shot hash: no Hash object per request.
      const key = cacheable ? hash('sha256', token, 'base64') : '';
      // One token, one text: jose also takes a signature with `==` after it or another last
      // character whose spare bits it drops, 32 texts for one token, each a signature check
      // and a cache entry of its own. Checked on a miss only: such a text is never cached.
      // And an ECDSA signature (r, s) has a twin, (r, n - s), valid whenever it is: the twin of
      // a cached token is that token, not another check and another entry (a hit).
      let wellFormed: boolean | undefined;
      if (cacheable) {
        let hit = this.#cached(key, now);
        if (hit === undefined && (wellFormed = canonical(token))) {
          const twin = ecdsaTwin(token);
          if (twin !== undefined) hit = this.#cached(hash('sha256', twin, 'base64'), now);
        }
        this.#onCache?.(hit !== undefined);
        if (hit !== undefined) return hit;
      }
      if (!(wellFormed ?? canonical(token))) return { reason: 'invalid-credential', detail: 'malformed token' };
      const verified = await this.#verify(token, now);
      if ('reason' in verified) return verified;
      const { credential, keys, version } = verified;
      if (cacheable) {
        const ttl = credential.expiresAtMs + this.#rules.clockSkewMs - now;
        // No lru-cache ttl: it counts from performance.now(), not this request's clock; the
        // hit path above checks exp against the request's own time instead.
        if (ttl > 0) this.#cache!.set(key, { credential: { ...credential, cached: true }, keys, version }, { size: entryBytes(credential) });
      }
      return credential;
    } catch (err) {
      // Fail closed whatever the error's type: jose signals some problems with plain TypeErrors.
      // Retry-After: when a request may next make driftguard fetch the keys (its cooldown), so an
      // automated client backs off instead of retrying at once.
      if (err instanceof IdentityUnavailableError) return { reason: 'identity-unavailable', detail: 'signing keys unavailable', retryAfter: Math.ceil(err.retryAfterMs / 1000) };
      return { reason: 'invalid-credential', detail: describeJoseError(err) };
    }
  }

  /** The cache's answer for the token of `key` at `now`: its credential, or why it no longer holds; undefined when none is current. */
  #cached(key: string, now: number): Credential | VerifyFailure | undefined {
    const hit = this.#cache!.get(key);
    if (hit === undefined || hit.version !== hit.keys.version || !this.#keySetsInUse.has(hit.keys)) return undefined;
    if (hit.credential.expiresAtMs + this.#rules.clockSkewMs <= now) {
      this.#cache!.delete(key);
      return { reason: 'invalid-credential', detail: 'token expired' };
    }
    // As jose checks it: only a clock set back since the token was verified gets here.
    const nbf = hit.credential.claims.nbf;
    if (typeof nbf === 'number' && nbf * 1000 - this.#rules.clockSkewMs > now) {
      return { reason: 'invalid-credential', detail: 'token not valid yet (nbf is in the future)' };
    }
    return hit.credential;
  }

  async #verify(token: string, now: number): Promise<Cached | VerifyFailure> {
    // Read the unverified iss only to pick the issuer's keys and settings; jwtVerify checks it again.
    const unverified = decodeJwt(token);
    // Only a JWT-SVID may come without iss: it is found by its trust domain.
    const issuer = typeof unverified.iss === 'string' ? this.#issuers.get(unverified.iss)
      : unverified.iss === undefined ? this.#trustDomains.get(trustDomainOf(unverified.sub) ?? '') : undefined;
    if (!issuer) return { reason: 'invalid-credential', detail: unverified.iss === undefined && this.#trustDomains.size > 0 ? withoutIssuer(unverified.sub) : 'untrusted issuer' };
    const profile = issuer.rules.profile;
    // Read before verifying: a set that changes meanwhile makes this entry stale, not current.
    const version = issuer.keys.version;
    const { payload, protectedHeader: header, kid, kids } = await verifyJwt(token, issuer.keys, { ...issuer.options, currentDate: new Date(now) });
    if (typeof payload.sub !== 'string' || payload.sub.length === 0) return { reason: 'invalid-credential', detail: 'sub must be a non-empty string' };
    // The consumer subject, as the issuer's profile defines it.
    const mapped = profile === 'kubernetes' ? kubernetesSubject(payload)
      : profile === 'spiffe' ? spiffeSubject(payload, header, issuer.rules.trustDomain!)
      : { subject: payload.sub };
    if ('detail' in mapped) return { reason: 'invalid-credential', detail: mapped.detail };
    const foreign = foreignSubject(issuer.rules, mapped.subject, this.#rules.issuers);
    if (foreign) return { reason: 'invalid-credential', detail: `this issuer cannot vouch for the subject: ${foreign}` };
    const act = actChain(payload);
    const credential: Credential = {
      issuer: issuer.rules.issuer,
      subject: mapped.subject,
      // An empty jti names no token a revocation could single out: it counts as no jti.
      ...(typeof payload.jti === 'string' && payload.jti !== '' ? { jti: payload.jti } : {}),
      scopes: scopesOf(payload),
      ...(typeof payload.iat === 'number' ? { issuedAtMs: payload.iat * 1000 } : {}),
      expiresAtMs: payload.exp! * 1000,
      claims: Object.freeze(payload),
      cached: false,
      ...(kid !== undefined ? { kid } : {}),
      ...(kids.length > 0 ? { kids } : {}),
      ...(act ? { act } : {}),
    };
    return { credential, keys: issuer.keys, version };
  }
}

function keySetFor(iss: IssuerRules): KeySet {
  const j = iss.jwks;
  // A spiffe issuer's keys may come as a SPIFFE bundle, where only jwt-svid keys may verify.
  const select = iss.profile === 'spiffe' ? jwtSvidKeys : undefined;
  const selected = { ...(select ? { select } : {}), algorithms: iss.algorithms };
  switch (j.kind) {
    case 'file': return fileKeySet(j.file, j.keys);
    case 'url': return new RemoteKeySet({ url: j.url, refreshMs: j.refreshMs, cooldownMs: j.cooldownMs, timeoutMs: j.timeoutMs, ...selected });
    case 'discovery': return discoveredKeySet({
      discovery: j.discovery, issuer: iss.issuer, refreshMs: j.refreshMs, cooldownMs: j.cooldownMs, timeoutMs: j.timeoutMs,
      ...(j.tokenFile !== undefined ? { tokenFile: j.tokenFile } : {}), ...(j.caFile !== undefined ? { caFile: j.caFile } : {}), ...selected,
    });
  }
}

/** Keys tried at most for a token (those of its kid, or without one, of its alg): a forged one costs no more signature checks. */
const MAX_CANDIDATE_KEYS = 3;

class TooManyCandidateKeys extends Error {
  readonly code = 'ERR_DRIFTGUARD_TOO_MANY_CANDIDATE_KEYS';
  /** Whether the token named a kid: the keys of its kid, not of its alg, were too many. */
  readonly kid: boolean;
  constructor(kid: boolean) { super('too many candidate keys'); this.kid = kid; }
}

/**
 * jwtVerify, and the kid of the key that verified the token. Every key of the set that fits
 * the token (its kid, if it names one, and its alg) is tried in turn, as jose leaves to the
 * caller, and only a failed signature moves on to the next: a set may list two keys under
 * one kid (an issuer that reuses its kid for the new key, or lists a key twice), and jose
 * refuses such a token outright. Knowing the key matters: a revoked kid must revoke the tokens
 * that key signed, with or without a kid in their header.
 */
/** A verified token, with the kid of the key that verified it and every kid the set gives that key. */
type Verified = JWTVerifyResult & { readonly kid?: string; readonly kids: readonly string[] };

async function verifyJwt(token: string, keys: KeySet, options: JWTVerifyOptions): Promise<Verified> {
  let header: ReturnType<typeof decodeProtectedHeader>;
  try {
    header = decodeProtectedHeader(token);
  } catch {
    // A plain TypeError from jose: the same `malformed token` jwtVerify would have answered.
    throw new errors.JWSInvalid('Invalid Token or Protected Header formatting');
  }
  // Before any key is looked up (RFC 8725 §3.1): without a kid, an algorithm no key of the set
  // could verify would otherwise send the set to be refetched, and while the key server is
  // down the caller was told to retry (503) a token that can never pass.
  if (typeof header.alg !== 'string') throw new errors.JWSInvalid('JWS "alg" (Algorithm) Header Parameter missing or invalid');
  if (!options.algorithms?.includes(header.alg)) throw new errors.JOSEAlgNotAllowed('"alg" (Algorithm) Header Parameter value not allowed');
  const [encodedHeader, payload, signature] = token.split('.');
  const jws: FlattenedJWSInput = { protected: encodedHeader!, payload: payload!, signature: signature! };
  let found: Awaited<ReturnType<typeof byEachKey>>;
  try {
    found = await byEachKey(token, keys.eachKey(), header, jws, options);
  } catch (err) {
    // Every key that fits failed the signature: the issuer may have rotated to a new key under
    // the same kid, or signs without one. One refetch per cooldown, as for an unknown kid.
    if ((err as { code?: string }).code !== 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED' || !await keys.renew()) throw err;
    found = await byEachKey(token, keys.eachKey(), header, jws, options);
  }
  if (found) return found;
  // A kid the set names, for keys none of which fits the token's alg: a 401, not a 503 (retry)
  // within the cooldown as for a kid never seen. One refetch per cooldown still, as for a
  // signature no key of the kid verifies: an issuer may move a kid to a key of another algorithm.
  const kid = header.kid;
  if (kid !== undefined && keys.eachKey().some((k) => k.kid === kid)) {
    const renewed = await keys.renew() ? await byEachKey(token, keys.eachKey(), header, jws, options) : undefined;
    if (renewed) return renewed;
    throw new errors.JWKSNoMatchingKey();
  }
  // No key of the set fits (or none is loaded yet): the set's own key lookup waits for the
  // first fetch, or refetches once per cooldown, and throws when still none fits. Only the
  // lookup: the signature is checked once, below, against the key that fits.
  try {
    await keys.getKey(header as Parameters<SingleKey['getKey']>[0], jws);
  } catch (err) {
    if ((err as { code?: string }).code !== 'ERR_JWKS_MULTIPLE_MATCHING_KEYS') throw err;
  }
  const refetched = await byEachKey(token, keys.eachKey(), header, jws, options);
  if (refetched) return refetched;
  throw new errors.JWKSNoMatchingKey();
}

/** The order of each ECDSA curve's group, by its JWS alg: a signature's s and n - s both verify. */
const ECDSA_ORDER: Readonly<Record<string, { bytes: number; n: bigint }>> = {
  ES256: { bytes: 32, n: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551n },
  ES384: { bytes: 48, n: 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973n },
  ES512: { bytes: 66, n: 0x01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409n },
};

/**
 * The other text of an ECDSA-signed token: its signature's s replaced by n - s (ECDSA is
 * malleable so, and WebCrypto takes either). Undefined for any other token, or a signature
 * of the wrong size (jose refuses it).
 */
export function ecdsaTwin(token: string): string | undefined {
  const dot = token.lastIndexOf('.');
  // Only a signature of an ECDSA size (86, 128 or 176 characters) has its header read.
  const length = token.length - dot - 1;
  if (length !== 86 && length !== 128 && length !== 176) return undefined;
  let alg: unknown;
  try { alg = decodeProtectedHeader(token).alg; } catch { return undefined; }
  const curve = typeof alg === 'string' ? ECDSA_ORDER[alg] : undefined;
  const signature = Buffer.from(token.slice(dot + 1), 'base64url');
  if (curve === undefined || signature.length !== 2 * curve.bytes) return undefined;
  const s = BigInt(`0x${signature.subarray(curve.bytes).toString('hex') || '0'}`);
  if (s === 0n || s >= curve.n) return undefined;
  const other = Buffer.from((curve.n - s).toString(16).padStart(2 * curve.bytes, '0'), 'hex');
  return `${token.slice(0, dot + 1)}${Buffer.concat([signature.subarray(0, curve.bytes), other]).toString('base64url')}`;
}

/** A compact JWS whose three parts are base64url as an encoder writes it: no padding, no spare bits set. */
function canonical(token: string): boolean {
  const parts = token.split('.');
  // Anything else (a JWE, a stray dot) is jose's to refuse, as malformed.
  if (parts.length !== 3) return true;
  for (const part of parts) if (Buffer.from(part, 'base64url').toString('base64url') !== part) return false;
  return true;
}

/** The first key of `each` that fits the token's alg and verifies it; undefined when none fits. */
async function byEachKey(token: string, each: readonly SingleKey[], header: ReturnType<typeof decodeProtectedHeader>, jws: FlattenedJWSInput, options: JWTVerifyOptions): Promise<Verified | undefined> {
  // Counted before any signature is checked: a forged token without kid costs no more than
  // MAX_CANDIDATE_KEYS checks, and whether a good one passes does not depend on where its key
  // sits in the set (counted as the keys were tried, the first three passed, the fourth not).
  const candidates: [SingleKey, Awaited<ReturnType<SingleKey['getKey']>>][] = [];
  for (const k of each) {
    // jose's own rule, without an await per key of a large set: a token's kid names only keys of that kid.
    if (header.kid !== undefined && k.kid !== header.kid) continue;
    try {
      candidates.push([k, await k.getKey(header as Parameters<SingleKey['getKey']>[0], jws)]);
    } catch {
      // Not a candidate: it does not fit the token (ERR_JWKS_NO_MATCHING_KEY), or cannot be
      // imported at all (a set needs one usable key, not all): that must not refuse a token
      // another key signed. No key fitting at all is still a refusal, below.
      continue;
    }
    if (candidates.length > MAX_CANDIDATE_KEYS) throw new TooManyCandidateKeys(header.kid !== undefined);
  }
  for (const [k, key] of candidates) {
    try {
      const result = await jwtVerify(token, key, options);
      return { ...result, ...(k.kid !== undefined ? { kid: k.kid } : {}), kids: k.kids };
    } catch (err) {
      if ((err as { code?: string }).code !== 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED') throw err;
    }
  }
  if (candidates.length > 0) throw new errors.JWSSignatureVerificationFailed();
  return undefined;
}

/**
 * What a key set is built from: an issuer whose algorithms a reload changes gets a new one,
 * loaded (or the reload refused) before it serves, since a key set keeps only the keys that
 * can verify its algorithms.
 */
export function keySetKey(iss: IssuerRules): string {
  return JSON.stringify([iss.issuer, iss.profile, iss.jwks, iss.algorithms]);
}

/**
 * What a cache entry holds, estimated from above: its claims, and the scope set built from
 * them (a string and a set slot each: 880 two-letter scopes held six times the claims' weight
 * when they were left out).
 */
function entryBytes(credential: Credential): number {
  let bytes = CACHE_ENTRY_BYTES + jsonBytes(credential.claims);
  for (const s of credential.scopes) bytes += SCOPE_BYTES + stringBytes(s);
  if (credential.act) bytes += ACT_BYTES + ACT_SLOT_BYTES * (2 * credential.act.actors.length + credential.act.named.length);
  return bytes;
}

/** RFC 9068 `scope` (space-separated), or an `scp` array where the issuer uses one. */
function scopesOf(payload: JWTPayload): ReadonlySet<string> {
  if (typeof payload.scope === 'string') return new Set(payload.scope.split(' ').filter(Boolean));
  const scp = payload.scp;
  if (Array.isArray(scp)) return new Set(scp.filter((s): s is string => typeof s === 'string'));
  if (typeof scp === 'string') return new Set(scp.split(' ').filter(Boolean));
  return new Set();
}

/**
 * A failed claim check in words a consumer's developer can act on (jose says `claim aud failed:
 * check_failed`). The values expected are not named: they are the issuer's configuration.
 */
function claimFailure(claim: string | undefined, reason: string | undefined): string {
  const name = claim ?? 'a';
  if (reason === 'missing') return `the token has no ${name} claim`;
  if (reason !== 'check_failed') return `the token's ${name} claim is not valid`;
  switch (claim) {
    case 'aud': return 'the token\'s aud is not an audience this issuer\'s tokens are accepted for';
    case 'iss': return 'the token\'s iss is not a trusted issuer';
    case 'nbf': return 'token not valid yet (nbf is in the future)';
    case 'iat': return 'token issued in the future';
    default: return `the token's ${name} claim failed its check`;
  }
}

/** A short reason for the caller that never repeats the token. */
function describeJoseError(err: unknown): string {
  const e = err as { code?: string; claim?: string; reason?: string };
  switch (e.code) {
    case 'ERR_JWT_EXPIRED': return 'token expired';
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED': return claimFailure(e.claim, e.reason);
    case 'ERR_JOSE_ALG_NOT_ALLOWED': return 'signature algorithm not allowed';
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED': return 'signature verification failed';
    case 'ERR_JWKS_NO_MATCHING_KEY': return 'no key matches the token\'s kid and algorithm';
    case 'ERR_DRIFTGUARD_TOO_MANY_CANDIDATE_KEYS': return (err as TooManyCandidateKeys).kid ? `more than ${MAX_CANDIDATE_KEYS} keys of the set have the token's kid` : `no kid, and more than ${MAX_CANDIDATE_KEYS} keys could have signed it`;
    case 'ERR_JWT_INVALID': case 'ERR_JWS_INVALID': return 'malformed token';
    case 'ERR_JOSE_NOT_SUPPORTED': return 'unsupported token';
    default: return 'token rejected';
  }
}
