// Signing keys of one issuer. jose's createRemoteJWKSet refetches inline on a stale cache
// and drops its keys after a failed refetch; a sidecar needs the opposite: keys fetched
// before it reports ready, refreshed in the background, the last good keys kept through a
// failed refresh, and an unknown kid costing at most one refetch per cooldown.

import { createPublicKey, type JsonWebKey } from 'node:crypto';
import { createLocalJWKSet, type JSONWebKeySet, type JWK, type JWTVerifyGetKey } from 'jose';
import { Agent } from 'undici';
import { LRUCache } from 'lru-cache';
import { getDocument } from '../lib/bounded.ts';
import { jsonFault, redactUrl } from '../lib/redact.ts';
import { readRegularFile } from '../lib/files.ts';

/** How soon a key set that has never loaded is fetched again (as an unread revocation list, lists.ts). */
export const UNLOADED_RETRY_MS = 5_000;

/** Unknown kids remembered with when they were first seen (RemoteKeySet.getKey): a bound, since anybody can send one. */
const UNKNOWN_KIDS = 1024;
const MAX_REMEMBERED_KID = 256;

/** The issuer's keys cannot be had right now: the request gets 503 identity-unavailable. */
export class IdentityUnavailableError extends Error {
  readonly code = 'ERR_IDENTITY_UNAVAILABLE';
  /** When a request may next cause a fetch (the key set's cooldown): the answer's Retry-After. */
  readonly retryAfterMs: number;
  constructor(message: string, retryAfterMs = 1000) { super(message); this.name = 'IdentityUnavailableError'; this.retryAfterMs = retryAfterMs; }
}

export interface KeySetStatus {
  readonly source: string;
  readonly ready: boolean;
  readonly lastSuccessMs?: number;
  readonly lastError?: string;
  readonly refreshes: number;
  readonly failures: number;
}

/** One key of a set, alone, behind jose's own selection: whether it could verify a token. */
export interface SingleKey {
  readonly kid?: string;
  /**
   * Every kid the set gives this key's material, its own first: a set may list one key twice
   * (under a second kid, or once without one), and a revoked kid must revoke the key, whichever
   * entry a token names.
   */
  readonly kids: readonly string[];
  readonly getKey: JWTVerifyGetKey;
}

export interface KeySet {
  /** Resolves once keys are loaded (or rejects after the first failed fetch; refresh continues). */
  start(): Promise<void>;
  readonly ready: boolean;
  /** jose's selection over the whole set: the key a token's kid (and alg) names. */
  readonly getKey: JWTVerifyGetKey;
  /**
   * Each key alone (none before the first load): for a token without kid, which key verified
   * it, so that revoking (or removing) that key's kid reaches the token too.
   */
  eachKey(): readonly SingleKey[];
  /**
   * Changes whenever the keys change: a token verified under an older version is verified
   * again rather than served from the cache, so a key removed from the set stops verifying.
   */
  readonly version: number;
  /**
   * Fetch the keys again for a token every key of its kid (or, without a kid, of its alg)
   * failed to verify, as for an unknown kid: at most once per cooldown. true when the keys
   * changed. An issuer that signs without kid, or reuses its kid, rotates this way.
   */
  renew(): Promise<boolean>;
  status(): KeySetStatus;
  close(): void;
  /**
   * Replaced by a reload: no more refreshes, and closed once the fetch under way, if any, ends.
   * A request still being decided under the old rules that waits on it (a rotated kid) gets the
   * keys it waits for: closed at once, the fetch was aborted and it was answered 503.
   */
  retire(): void;
  /**
   * Told when fetching the keys starts failing after a success (`error`: why; the last good
   * keys stay), and when it succeeds again or at last: once per change, not per fetch.
   */
  report?: (failed: boolean, error?: string) => void;
}

interface Loaded {
  readonly getKey: JWTVerifyGetKey;
  readonly each: readonly SingleKey[];
}

/** A base64url member as the number it is (hex, no leading zeros); anything else as it is. */
function integer(member: unknown): unknown {
  if (typeof member !== 'string') return member;
  const hex = Buffer.from(member, 'base64url').toString('hex').replace(/^(00)+/, '');
  return hex === '' ? '0' : hex;
}

function load(jwks: JSONWebKeySet): Loaded {
  // A public key's material: its numbers, not its members' text. One RSA key has many texts
  // (leading zero octets in `n` or `e`, which RFC 7518 §6.3.1.1 says some libraries write, and
  // WebCrypto imports as the same key): a twin so written was another key, whose kids a
  // revocation of the first's missed. Read as integers, without importing each key (a set of
  // 256 keys imported twice held the thread for 50 ms).
  const material = (k: JWK): string => JSON.stringify([k.kty, k.crv, integer(k.x), integer(k.y), integer(k.n), integer(k.e)]);
  const materials = jwks.keys.map(material);
  const kidsOf = new Map<string, string[]>();
  for (const [i, k] of jwks.keys.entries()) {
    if (typeof k.kid !== 'string') continue;
    const m = materials[i]!;
    const kids = kidsOf.get(m);
    if (!kids) kidsOf.set(m, [k.kid]);
    else if (!kids.includes(k.kid)) kids.push(k.kid);
  }
  return {
    getKey: createLocalJWKSet(jwks),
    each: jwks.keys.map((k, i) => {
      const all = kidsOf.get(materials[i]!) ?? [];
      const kid = typeof k.kid === 'string' ? k.kid : undefined;
      return { ...(kid !== undefined ? { kid } : {}), kids: kid !== undefined ? [kid, ...all.filter((other) => other !== kid)] : all, getKey: createLocalJWKSet({ keys: [k] }) };
    }),
  };
}

const MAX_JWKS_BYTES = 1 << 20;
/**
 * Entries a key set may have. An issuer publishes a handful (its keys in rotation); each
 * entry is built into a verifier, and a megabyte of `{}` entries was a heap per entry that
 * ended the sidecar, on every pod that trusts the issuer at once.
 */
export const MAX_JWKS_KEYS = 256;

/** Which keys of a fetched set may verify tokens, as jose takes them (see jwtSvidKeys). */
export type KeySelection = (set: JSONWebKeySet) => JSONWebKeySet;

/**
 * The key type (and curve) each allowed algorithm verifies with, as jose 6 takes them: its
 * EdDSA is Ed25519 only (an Ed448 key is refused at every token).
 */
const KEY_FOR: Record<string, { kty: string; crv?: readonly string[] }> = {
  RS256: { kty: 'RSA' }, RS384: { kty: 'RSA' }, RS512: { kty: 'RSA' },
  PS256: { kty: 'RSA' }, PS384: { kty: 'RSA' }, PS512: { kty: 'RSA' },
  ES256: { kty: 'EC', crv: ['P-256'] }, ES384: { kty: 'EC', crv: ['P-384'] }, ES512: { kty: 'EC', crv: ['P-521'] },
  EdDSA: { kty: 'OKP', crv: ['Ed25519'] }, Ed25519: { kty: 'OKP', crv: ['Ed25519'] },
};

/** jose verifies RS* and PS* only with a modulus of at least this many bits. */
const MIN_RSA_BITS = 2048;

/** JWK members of private and secret keys (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2). */
const SECRET_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'] as const;

/**
 * A key that can verify a token under one of `algorithms`, as jose and WebCrypto will take it
 * at the token: its type, curve, use and operations fit, it parses, and an RSA key is long
 * enough. A set whose keys all fail one of these is no key set (parseJwks): before, a fetched
 * set of 1024-bit keys replaced the last good keys, and every token was refused.
 */
function usable(key: Record<string, unknown>, algorithms: readonly string[]): boolean {
  if (key.use !== undefined && key.use !== 'sig') return false;
  if (key.ext !== undefined && typeof key.ext !== 'boolean') return false;
  // WebCrypto imports a public key for `verify` only, and jose wants unique strings.
  if (key.key_ops !== undefined && !(Array.isArray(key.key_ops) && key.key_ops.length === 1 && key.key_ops[0] === 'verify')) return false;
  const fits = algorithms.some((alg) => {
    const want = KEY_FOR[alg];
    return want !== undefined && key.kty === want.kty && (want.crv === undefined || want.crv.includes(key.crv as string)) && (key.alg === undefined || key.alg === alg);
  });
  if (!fits) return false;
  try {
    const parsed = createPublicKey({ key: key as JsonWebKey, format: 'jwk' });
    return key.kty !== 'RSA' || (parsed.asymmetricKeyDetails?.modulusLength ?? 0) >= MIN_RSA_BITS;
  } catch { return false; }
}

/**
 * A key set as text, its keys selected; with `algorithms`, one without a single key that can
 * verify under them is refused: an emptied or half-written Secret must not replace good keys
 * (a fetched set keeps the last good one; a file stops start-up or the reload).
 */
export function parseJwks(text: string, from: string, select?: KeySelection, algorithms?: readonly string[], excluded?: (kid: string) => void): JSONWebKeySet {
  let data: JSONWebKeySet;
  // A byte-order mark (a Windows editor's) is no JSON, but the rules file and the revocation
  // list take one: a key set saved so was refused as "not valid JSON", for a character nobody sees.
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  try { data = JSON.parse(text) as JSONWebKeySet; } catch (err) { throw new TypeError(`${from} is ${jsonFault(err)}`); }
  if (!data || typeof data !== 'object' || !Array.isArray(data.keys)) throw new TypeError(`${from} is not a JWKS (no "keys" array)`);
  if (data.keys.length > MAX_JWKS_KEYS) throw new TypeError(`${from} has ${data.keys.length} entries in "keys": a key set may have at most ${MAX_JWKS_KEYS}`);
  // An entry that is no key is passed over (RFC 7517 §5: members not understood are ignored):
  // jose refuses a whole set for one, which kept a rotated key from ever loading.
  const keys = (data.keys as unknown[]).filter((k) => k !== null && typeof k === 'object' && !Array.isArray(k)) as JSONWebKeySet['keys'];
  // A private or secret key published as a verification key is a leaked signing key: anybody
  // who reads the set can sign tokens. Refused whole (a fetched set keeps the last good keys).
  const secret = keys.find((k) => SECRET_MEMBERS.some((m) => m in k));
  if (secret) throw new TypeError(`${from} holds private key material (key ${typeof secret.kid === 'string' ? JSON.stringify(secret.kid.slice(0, 64)) : 'without kid'}: ${SECRET_MEMBERS.filter((m) => m in secret).join(', ')}): publish only public keys, and treat that key as leaked`);
  const set = select ? select({ ...data, keys }) : { ...data, keys };
  if (algorithms && !set.keys.some((k) => usable(k as unknown as Record<string, unknown>, algorithms))) {
    throw new TypeError(`${from} has no key that can verify ${algorithms.join(', ')} (${set.keys.length} key${set.keys.length === 1 ? '' : 's'} in the set)`);
  }
  if (excluded) {
    const kept = new Set(set.keys.map((k) => k.kid));
    for (const k of keys) if (typeof k.kid === 'string' && !kept.has(k.kid)) excluded(k.kid);
  }
  return set;
}

/** A key set file's text; the reason it cannot be read in a TypeError. */
export function readJwksFile(file: string): string {
  // Weighed before it is read, as a fetched set is while it arrives: a path pointed at the
  // wrong file (an image, a log) was read whole into the heap first.
  const tooLarge = (size: number) => { if (size > MAX_JWKS_BYTES) throw new TypeError(`${file} is ${Math.ceil(size / 1024)} KiB: a key set file may be at most 1 MiB`); };
  try { return readRegularFile(file, tooLarge).toString('utf8'); } catch (err) {
    if (err instanceof TypeError) throw err;
    throw new TypeError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/**
 * Keys from a file, as the rules loader read and checked them (parseJwks): at start-up, and
 * on a reload, which loads the rules again and builds a new KeySet.
 */
export function fileKeySet(file: string, set: JSONWebKeySet): KeySet {
  const keys = load(set);
  return {
    start: async () => {},
    ready: true,
    getKey: keys.getKey,
    eachKey: () => keys.each,
    // A changed file is read by a reload, which builds a new Identity and an empty cache.
    version: 0,
    renew: async () => false,
    status: () => ({ source: file, ready: true, lastSuccessMs: Date.now(), refreshes: 1, failures: 0 }),
    close: () => {},
    retire: () => {},
  };
}

export interface RemoteKeySetOptions {
  /** The keys' URL, or (with locate) where they are found; names the source in messages. */
  readonly url: string;
  /** Where to fetch the keys, resolved before every fetch (OIDC discovery); default: url. */
  readonly locate?: () => Promise<string>;
  readonly refreshMs: number;
  readonly cooldownMs: number;
  readonly timeoutMs: number;
  /** PEM of the CA(s) to trust for https (e.g. the cluster CA), per fetch and URL; default: the system's. */
  readonly ca?: string | ((url: URL) => string | string[] | undefined);
  /** Extra request headers, computed on every fetch and per URL (e.g. a rotating bearer token). */
  readonly headers?: (url: URL) => Record<string, string>;
  readonly select?: KeySelection;
  /** The issuer's algorithms: a fetched set without a key for them is a failed fetch (the last good keys stay). */
  readonly algorithms?: readonly string[];
  /** A monotonic clock in ms for the cooldown (tests); performance.now by default. */
  readonly now?: () => number;
}

export class RemoteKeySet implements KeySet {
  readonly #options: RemoteKeySetOptions;
  readonly #now: () => number;
  #keys?: Loaded;
  /** The text the keys were loaded from: a refresh that brings the same text changes nothing. */
  #text?: string;
  #version = 0;
  #inflight?: Promise<boolean>;
  /** The fetch under way was asked for (start-up, a token), not the background refresh's. */
  #inflightAsked = false;
  /**
   * When a fetch was last asked for by start-up or a token (an unknown kid), by #now
   * (monotonic): the cooldown counts from it. Not from the background refresh: a key the issuer
   * rotated in just after it was refused (401) for the whole cooldown, though one fetch would
   * have found it.
   */
  #lastAttemptMs = -Infinity;
  /** When the last fetch of any kind began, by #now: whether the keys were fetched after a kid was first seen. */
  #fetchStartedMs = -Infinity;
  /**
   * Kids no key of the set has, by #now when each was first seen. Within the cooldown, one
   * seen before the last fetch began is not in the set (401); one seen since may be a key the
   * issuer has just rotated in, which the next fetch will bring (503, retry).
   */
  readonly #unknownKids = new LRUCache<string, number>({ max: UNKNOWN_KIDS });
  /** By Date.now. */
  #lastSuccessMs?: number;
  /** Why the last fetch failed; undefined after a good one. */
  #lastError?: string;
  #refreshes = 0;
  #failures = 0;
  #timer?: NodeJS.Timeout;
  /** The retry of a key set whose first fetch failed (start), until it loads. */
  #retry?: NodeJS.Timeout;
  #agent?: Agent;
  /** Aborted at close: a fetch under way (a slow key server) must not hold the process on after it. */
  readonly #closed = new AbortController();
  report?: (failed: boolean, error?: string) => void;

  /** The URL as messages, metrics and /readyz name it: without query or userinfo. */
  readonly #name: string;

  constructor(options: RemoteKeySetOptions) {
    this.#options = options;
    this.#name = redactUrl(options.url);
    // Elapsed time by a clock that no NTP step moves: by the wall clock, a clock set back an
    // hour held every refetch back (and told callers Retry-After: 3600) until it caught up.
    this.#now = options.now ?? performance.now.bind(performance);
    this.getKey = this.getKey.bind(this);
  }

  get ready(): boolean { return this.#keys !== undefined; }
  get version(): number { return this.#version; }
  eachKey(): readonly SingleKey[] { return this.#keys?.each ?? []; }

  async start(): Promise<void> {
    this.#timer ??= setInterval(() => { void this.refresh(false); }, this.#options.refreshMs).unref();
    if (await this.refresh()) return;
    // Until the first keys are in, the refresh's period (5 minutes by default) is too long to
    // wait: an unready pod gets no traffic, so no token asks for them either, and its startup
    // probe gives up first. Retried sooner, as an unread revocation list is, until they load.
    this.#retry ??= setInterval(() => {
      if (this.ready) { clearInterval(this.#retry); this.#retry = undefined; } else void this.refresh(false);
    }, Math.min(this.#options.refreshMs, UNLOADED_RETRY_MS)).unref();
    throw new IdentityUnavailableError(`JWKS ${this.#name}: ${this.#lastError}`);
  }

  /**
   * Fetch the keys now (joining a fetch already under way). true when the fetch succeeded: the
   * keys are current. `asked`: by start-up or a token, which the cooldown counts; false for the
   * background refresh.
   */
  refresh(asked = true): Promise<boolean> {
    if (asked) this.#lastAttemptMs = this.#now();
    if (!this.#inflight) return this.#track(this.#fetch(), asked);
    // A background refresh under way may have begun before the key asked for was published:
    // one fetch more, once it is done (later asks join that one).
    if (asked && !this.#inflightAsked) {
      const again = () => this.#fetch();
      return this.#track(this.#inflight.then(again, again), true);
    }
    return this.#inflight;
  }

  #track(fetching: Promise<boolean>, asked: boolean): Promise<boolean> {
    const p: Promise<boolean> = fetching.finally(() => { if (this.#inflight === p) this.#inflight = undefined; });
    this.#inflight = p;
    this.#inflightAsked = asked;
    return p;
  }

  async #fetch(): Promise<boolean> {
    this.#fetchStartedMs = this.#now();
    // One timeout for the whole fetch: with discovery, the document and then the keys.
    const started = performance.now();
    try {
      const target = new URL(this.#options.locate ? await this.#options.locate() : this.#options.url);
      const ca = typeof this.#options.ca === 'function' ? this.#options.ca(target) : this.#options.ca;
      if (ca !== undefined) {
        // A new agent per fetch when the CA can change (the kubelet rotates it); fetches are rare.
        await this.#agent?.close();
        this.#agent = new Agent({ connect: { ca } });
      }
      const { status, text } = await getDocument(target, {
        accept: 'application/jwk-set+json, application/json',
        ...(this.#options.headers ? { headers: this.#options.headers(target) } : {}),
        timeoutMs: Math.max(1, Math.ceil(this.#options.timeoutMs - (performance.now() - started))),
        ...(this.#agent ? { dispatcher: this.#agent } : {}),
        signal: this.#closed.signal,
        maxBytes: MAX_JWKS_BYTES,
        tooLarge: () => new Error('JWKS larger than 1 MiB'),
      });
      // Found by discovery: say where, since the name is the discovery document's.
      if (text === undefined) throw new Error(this.#options.locate ? `jwks_uri ${redactUrl(target.href)}: HTTP ${status}` : `HTTP ${status}`);
      if (text !== this.#text) {
        const before = this.#keys?.each;
        // A kid the set names for no key that verifies (an X.509 authority of a SPIFFE bundle),
        // or that the issuer removed (a leaked key), is known to be none: its tokens are 401s at
        // once, not told to retry as a kid never seen may be.
        const known = (kid: string) => { if (kid.length <= MAX_REMEMBERED_KID) this.#unknownKids.set(kid, -Infinity); };
        this.#keys = load(parseJwks(text, this.#name, this.#options.select, this.#options.algorithms, known));
        const kept = new Set(this.#keys.each.map((k) => k.kid));
        for (const k of before ?? []) if (k.kid !== undefined && !kept.has(k.kid)) known(k.kid);
        this.#text = text;
        this.#version++;
      }
      // A time of day, for status and the key set's age.
      this.#lastSuccessMs = Date.now();
      const failing = this.#lastError !== undefined;
      this.#lastError = undefined;
      this.#refreshes++;
      if (failing) this.report?.(false);
      return true;
    } catch (err) {
      // Whatever went wrong (jose and fetch both throw plain TypeErrors), keep the last good keys.
      this.#failures++;
      const wasGood = this.#lastError === undefined && this.#refreshes > 0;
      this.#lastError = describe(err);
      // A first fetch that fails is start()'s to report; one failure after another, nobody's.
      if (wasGood) this.report?.(true, this.#lastError);
      return false;
    }
  }

  async getKey(...args: Parameters<JWTVerifyGetKey>): Promise<Awaited<ReturnType<JWTVerifyGetKey>>> {
    const coolingDown = this.#coolingDown();
    if (!this.#keys) {
      // A fetch under way (the first one, at start-up) may bring the keys: wait for it.
      await this.#fetchOrJoin(coolingDown);
      if (!this.#keys) throw new IdentityUnavailableError(`no keys from ${this.#name} yet`, this.#nextAttemptInMs());
    }
    try {
      return await this.#keys.getKey(...args);
    } catch (err) {
      if ((err as { code?: string }).code !== 'ERR_JWKS_NO_MATCHING_KEY') throw err;
      // An unknown kid: maybe the issuer rotated. One refetch per cooldown, whatever the flood.
      if (!await this.#fetchOrJoin(coolingDown) && !this.#fetchedSinceSeen(args[0]?.kid)) {
        // Refused for the cooldown alone: another token's fetch just before the issuer rotated
        // this key in would have made its tokens 401s, a bad credential to their callers, until
        // it ended. Retry when a fetch may be made.
        throw new IdentityUnavailableError(`kid not in the keys from ${this.#name}, fetched within the cooldown; fetched again after it`, this.#nextAttemptInMs());
      }
      if (this.#lastError !== undefined) throw new IdentityUnavailableError(`cannot refresh keys from ${this.#name}: ${this.#lastError}`, this.#nextAttemptInMs());
      return await this.#keys.getKey(...args);
    }
  }

  async renew(): Promise<boolean> {
    const before = this.#version;
    await this.#fetchOrJoin(this.#coolingDown());
    return this.#version !== before;
  }

  /** Whether a fetch was asked for (start-up, a token) within the cooldown: no other may be made yet. */
  #coolingDown(): boolean {
    return this.#now() - this.#lastAttemptMs < this.#options.cooldownMs;
  }

  /**
   * One fetch per cooldown, for a caller the keys cannot serve yet: a fetch when the cooldown
   * (read when the caller came) allows, else the one under way, if any. false when neither:
   * nothing was fetched for it.
   */
  async #fetchOrJoin(coolingDown: boolean): Promise<boolean> {
    if (!coolingDown) { await this.refresh(); return true; }
    if (this.#inflight) { await this.#inflight; return true; }
    return false;
  }

  /**
   * Whether the keys were fetched (or the fetch began) after `kid` was first seen; true for a
   * token without kid, and for a kid longer than any issuer writes (not remembered: the table's
   * bound is by count).
   */
  #fetchedSinceSeen(kid: unknown): boolean {
    if (typeof kid !== 'string' || kid.length > MAX_REMEMBERED_KID) return true;
    let seen = this.#unknownKids.get(kid);
    if (seen === undefined) this.#unknownKids.set(kid, seen = this.#now());
    return this.#fetchStartedMs > seen;
  }

  /** How long until a request may fetch again (one fetch per cooldown), at least a second. */
  #nextAttemptInMs(): number {
    return Math.max(1000, this.#lastAttemptMs + this.#options.cooldownMs - this.#now());
  }

  status(): KeySetStatus {
    return {
      source: this.#name, ready: this.ready, refreshes: this.#refreshes, failures: this.#failures,
      ...(this.#lastSuccessMs !== undefined ? { lastSuccessMs: this.#lastSuccessMs } : {}),
      ...(this.#lastError !== undefined ? { lastError: this.#lastError } : {}),
    };
  }

  close(): void {
    clearInterval(this.#timer);
    clearInterval(this.#retry);
    this.#closed.abort(new Error('the key set was closed'));
    void this.#agent?.close();
  }

  retire(): void {
    clearInterval(this.#timer);
    clearInterval(this.#retry);
    // Bounded by the fetch's own timeout.
    const close = () => this.close();
    if (this.#inflight) void this.#inflight.then(close, close); else close();
  }
}

/** undici's own timeouts, which may fire before the fetch's signal does. */
const TIMEOUT_CODES: ReadonlySet<unknown> = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT']);

function describe(err: unknown): string {
  const e = err as { name?: string; code?: unknown; message?: string; cause?: { code?: unknown; message?: string } };
  // A timeout is the signal's DOMException, whose code is the legacy number 23: reported as
  // "23: The operation was aborted due to timeout", it named neither the timeout nor the setting.
  if (e?.name === 'TimeoutError' || TIMEOUT_CODES.has(e?.code)) return `${e.name}: no whole answer within jwks.timeout, the fetch was aborted`;
  // Only a string code says something (ECONNREFUSED); a DOMException's number does not, its name does.
  const code = (c: unknown) => (typeof c === 'string' ? c : undefined);
  const name = err instanceof DOMException ? err.name : undefined;
  return [code(e?.code) ?? name, e?.message, code(e?.cause?.code) ?? e?.cause?.message].filter(Boolean).join(': ') || String(err);
}
