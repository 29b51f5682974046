// The revocations in force, from three sources: the admin API (kept in the journal), a list
// file and a list URL. A revocation names a token (jti), a task (the task claim), a consumer
// (subject) or a signing key (kid) and lasts until its end. Lookups are a few map reads, so
// they run on every request, verified-token cache hits included.

import type { Credential } from '../pipeline/types.ts';
import { actorIssuer, issuerSubjectKey, issuerSubjectOf } from '../checks/consumers.ts';
import { claimOf } from '../pipeline/named.ts';

export const REVOCATION_KINDS = ['jti', 'task', 'subject', 'kid'] as const;
export type RevocationKind = (typeof REVOCATION_KINDS)[number];
export type RevocationSource = 'admin' | 'file' | 'url';

export interface Revocation {
  readonly id: string;
  readonly kind: RevocationKind;
  readonly value: string;
  /** Why, for operators (never sent to the caller). */
  readonly reason: string;
  /** Epoch ms at which it ends; Infinity for a list entry without an end (in force while listed). */
  readonly endMs: number;
  readonly createdMs: number;
  readonly source: RevocationSource;
  /** Who made it (admin API): the admin credential's name or fingerprint. */
  readonly by?: string;
}

export function isRevocationKind(value: unknown): value is RevocationKind {
  return typeof value === 'string' && (REVOCATION_KINDS as readonly string[]).includes(value);
}

/** The revocation as GET /revocations shows it. */
export function revocationView(r: Revocation): Record<string, unknown> {
  return {
    id: r.id, kind: r.kind, value: r.value, reason: r.reason, source: r.source,
    created: new Date(r.createdMs).toISOString(), end: Number.isFinite(r.endMs) ? new Date(r.endMs).toISOString() : null,
    ...(r.by !== undefined ? { by: r.by } : {}),
  };
}

/**
 * Revocations are kept by source and id: each list is authoritative for its own entries only,
 * so a file entry and a URL entry (or an admin revocation) that share an id, an incident
 * number say, are two revocations, and replacing one list never lifts the other's.
 */
function keyOf(source: RevocationSource, id: string): string {
  return `${source}\n${id}`;
}

/**
 * The task a token's task claim names, as a task revocation matches it: a non-empty string,
 * or a whole number as its decimal string (revoking "4711" covers task_id 4711); undefined
 * without the claim; null for a claim that names no task (a list, an object, an empty string),
 * which the checks refuse, since no revocation could match it. So is a number past 2^53 - 1
 * or with a fraction: JSON parsing has rounded it already (1541815603606036480 is read as
 * ...500), so revoking the id the issuer wrote would miss it and revoke its neighbours.
 */
export function taskOf(claim: unknown): string | undefined | null {
  if (claim === undefined) return undefined;
  if (typeof claim === 'number') return Number.isSafeInteger(claim) ? String(claim) : null;
  return typeof claim === 'string' && claim !== '' ? claim : null;
}

/**
 * A subject revocation's value as it is matched: `["<issuer>","<subject>"]` however it is
 * spaced (a JSON pair written by hand), else the value as written.
 */
export function subjectKey(value: string): string {
  const pair = issuerSubjectOf(value);
  return pair ? issuerSubjectKey(...pair) : value;
}

/**
 * The kinds whose value is only unique within one issuer, so that a revocation may name one
 * issuer's as `["<issuer>","<value>"]`: any issuer can write any sub or jti, and a kid names a
 * key only within its issuer's key set (two issuers' kid "1" are two keys, and revoking one's
 * leaked key must not cut off the other's consumers). A task id is the tasks', not an issuer's.
 */
const ISSUER_SCOPED: ReadonlySet<RevocationKind> = new Set(['jti', 'subject', 'kid']);

/** Whether a subject revocation names the token's own subject (from any issuer, or from its own), not an actor of it. */
export function revokesSubjectItself(r: Revocation, credential: Pick<Credential, 'subject' | 'issuer'>): boolean {
  const v = subjectKey(r.value);
  return v === credential.subject || v === issuerSubjectKey(credential.issuer, credential.subject);
}

/** The value a revocation is indexed and matched by: an issuer pair however spaced. */
export function matchedValue(r: Pick<Revocation, 'kind' | 'value'>): string {
  return ISSUER_SCOPED.has(r.kind) ? subjectKey(r.value) : r.value;
}

/** Heap a revocation holds beyond its strings, estimated from above: its object, its two map entries, its key (measured, `--expose-gc`: 320–830 bytes). */
const REVOCATION_OVERHEAD_BYTES = 768;
/**
 * Its strings weighed a quarter more than their characters: measured through the admin API,
 * 4,096-character values held about 1.1 KiB of heap for each KiB of their text.
 */
const STRING_WEIGHT = 1.25;
const UNIT_BYTES = 1024;

/**
 * How many of revocation.maxEntries an admin revocation takes: one per KiB of heap it holds,
 * estimated from above (its strings at two bytes a character once one is beyond Latin-1, as V8
 * holds them). Counted by entries alone, admin writes of 4 KiB values in Cyrillic held 12 KiB
 * each, and 8,000 of them (of the 20,000 allowed) ran the chart's heap out. A list's entries
 * count one each: a list is the operator's, and read up to 4 MiB of text.
 */
export function unitsOf(r: Revocation): number {
  if (r.source !== 'admin') return 1;
  let bytes = REVOCATION_OVERHEAD_BYTES;
  // The value twice where it is indexed as another string: `["<issuer>","<subject>"]`, however
  // spaced, is indexed as its re-serialised pair (matchedValue), a copy even when equal.
  const copied = ISSUER_SCOPED.has(r.kind) && issuerSubjectOf(r.value) !== undefined;
  for (const text of [r.id, r.value, r.reason, r.by ?? '', copied ? matchedValue(r) : '']) bytes += STRING_WEIGHT * text.length * (/[^\x00-\xff]/.test(text) ? 2 : 1);
  // Rounded up, so that no unit holds more than a KiB; a usual revocation (an id, a value and
  // a reason of a few dozen characters) takes one.
  return Math.ceil(bytes / UNIT_BYTES);
}

/** unitsOf all of `revocations`. */
export function unitsOfAll(revocations: readonly Revocation[]): number {
  return revocations.reduce((n, r) => n + unitsOf(r), 0);
}

export class RevocationStore {
  readonly #byKey = new Map<string, Revocation>();
  /**
   * kind -> value -> key of the revocation naming it, or a Set of keys when several do. Nearly
   * every value is named once, and a Set per entry was a quarter of what a revocation cost
   * (measured: 624 -> 472 bytes).
   */
  readonly #index = new Map<RevocationKind, Map<string, string | Set<string>>>(REVOCATION_KINDS.map((k) => [k, new Map()]));

  /** List sources expected and never read yet: every credential is refused until they are. */
  readonly #unread = new Set<Exclude<RevocationSource, 'admin'>>();
  /** List sources that have delivered a list (an empty one included) at least once. */
  readonly #read = new Set<Exclude<RevocationSource, 'admin'>>();

  get size(): number { return this.#byKey.size; }

  /** unitsOf every revocation held (ended ones included until pruned). */
  #units = 0;

  /** The units of revocation.maxEntries the revocations in force take (unitsOf; ended ones are dropped first). */
  units(now: number): number {
    this.prune(now);
    return this.#units;
  }

  /**
   * The units the revocations in force take beside a list source's own: the room its next
   * list is weighed against (a list's entries take one each).
   */
  unitsBeside(source: Exclude<RevocationSource, 'admin'>, now: number): number {
    return this.units(now) - this.countSource(source);
  }

  /** Counts the changes that can refuse more (a revocation added, a list expected): see LifecycleState.version. */
  #changes = 0;
  get changes(): number { return this.#changes; }

  /**
   * A list of this source is in force from now on: until one is read (or the source is
   * removed, which replaces it with an empty list), `unread` is true and the revocation check
   * refuses every credential, since any of them may be on it. Once a list has been read, a
   * source that fails later, or is switched to a new location that fails, keeps it in force.
   */
  expect(source: Exclude<RevocationSource, 'admin'>): void {
    if (!this.#read.has(source)) { this.#unread.add(source); this.#changes++; }
  }

  /** Some expected list has never been read. */
  get unread(): boolean { return this.#unread.size > 0; }

  /** The revocation with this id: the admin API's, else a list's (which only its list may lift). */
  get(id: string): Revocation | undefined {
    return this.#byKey.get(keyOf('admin', id)) ?? this.#byKey.get(keyOf('file', id)) ?? this.#byKey.get(keyOf('url', id));
  }

  add(r: Revocation): void {
    const key = keyOf(r.source, r.id);
    // A list read again brings the same entries: only a new one, or one naming another
    // credential, can refuse what was let through.
    const before = this.#removeKey(key);
    if (!before || before.kind !== r.kind || before.value !== r.value) this.#changes++;
    this.#byKey.set(key, r);
    this.#units += unitsOf(r);
    const byValue = this.#index.get(r.kind)!;
    const value = matchedValue(r);
    const keys = byValue.get(value);
    if (keys === undefined) byValue.set(value, key);
    else if (typeof keys === 'string') byValue.set(value, new Set([keys, key]));
    else keys.add(key);
  }

  remove(source: RevocationSource, id: string): Revocation | undefined {
    return this.#removeKey(keyOf(source, id));
  }

  #removeKey(key: string): Revocation | undefined {
    const r = this.#byKey.get(key);
    if (!r) return undefined;
    this.#byKey.delete(key);
    this.#units -= unitsOf(r);
    const byValue = this.#index.get(r.kind)!;
    const value = matchedValue(r);
    const keys = byValue.get(value);
    if (typeof keys === 'string') byValue.delete(value);
    else if (keys !== undefined) {
      keys.delete(key);
      if (keys.size === 1) byValue.set(value, keys.values().next().value!);
    }
    return r;
  }

  /** Replace every revocation of a list source with `list` (a list is authoritative). */
  replaceSource(source: Exclude<RevocationSource, 'admin'>, list: readonly Revocation[]): void {
    const ids = new Set(list.map((r) => r.id));
    for (const r of [...this.#byKey.values()]) if (r.source === source && !ids.has(r.id)) this.remove(source, r.id);
    for (const r of list) this.add(r);
    this.#read.add(source);
    this.#unread.delete(source);
  }

  /**
   * The rules dropped this list source: its revocations are lifted, and a list of its kind
   * named later starts unread again (every credential refused until it is read), as at start.
   */
  dropSource(source: Exclude<RevocationSource, 'admin'>): void {
    this.replaceSource(source, []);
    this.#read.delete(source);
  }

  countSource(source: RevocationSource): number {
    let n = 0;
    for (const r of this.#byKey.values()) if (r.source === source) n++;
    return n;
  }

  /**
   * The first revocation in force at `now` that matches this credential, if any. A consumer
   * revoked by subject is refused as an actor too: a revocation is the kill switch for a
   * compromised automation, which must not go on acting for others through delegated tokens.
   */
  match(credential: Credential, taskClaim: string, now: number, issuersOf?: (actor: string, i: number) => readonly string[]): Revocation | undefined {
    const task = taskOf(claimOf(credential, taskClaim));
    return this.#find('jti', credential.jti, now)
      ?? this.#ofIssuer('jti', credential.issuer, credential.jti, now)
      ?? this.#find('task', task ?? undefined, now)
      ?? this.#find('subject', credential.subject, now)
      ?? this.#ofIssuer('subject', credential.issuer, credential.subject, now)
      ?? this.#actor(credential, now, issuersOf)
      ?? this.#key(credential, now);
  }

  /** A revoked kid of the key that verified the token, under whichever kid the set lists it. */
  #key(credential: Credential, now: number): Revocation | undefined {
    if (!this.#index.get('kid')!.size) return undefined;
    for (const kid of credential.kids ?? (credential.kid !== undefined ? [credential.kid] : [])) {
      const hit = this.#find('kid', kid, now) ?? this.#ofIssuer('kid', credential.issuer, kid, now);
      if (hit) return hit;
    }
    return undefined;
  }

  /**
   * A value revoked as `["<issuer>","<value>"]`: that issuer's only (a plain value is revoked
   * from every issuer). For a subject it is the name /consumers and /quarantine give an
   * unregistered subject while several issuers are trusted, so what they show can be revoked;
   * for a kid, one issuer's leaked key. The pair is only built when some revocation of the
   * kind is in force: this runs on every request.
   */
  #ofIssuer(kind: RevocationKind, issuer: string, value: string | undefined, now: number): Revocation | undefined {
    if (value === undefined || !this.#index.get(kind)!.size) return undefined;
    return this.#find(kind, issuerSubjectKey(issuer, value), now);
  }

  #actor(credential: Credential, now: number, issuersOf?: (actor: string, i: number) => readonly string[]): Revocation | undefined {
    if (credential.act === undefined || !this.#index.get('subject')!.size) return undefined;
    // Every sub in the chain, a malformed level's neighbours included: the delegation check may
    // be off or in audit mode, and a broken level must not hide a revoked actor behind it.
    // Each by its plain sub, and as `["<issuer>","<subject>"]` of each issuer that may vouch for
    // its level (actorIssuers: where nobody does, every consumer it could be, as the quarantine
    // check weighs them), so that a revoked agent does not act on by naming another iss;
    // without the rules, the issuer the level names.
    for (const [i, actor] of credential.act.named.entries()) {
      let hit = this.#find('subject', actor, now);
      for (const issuer of issuersOf ? issuersOf(actor, i) : [actorIssuer(credential, i)]) hit ??= this.#find('subject', issuerSubjectKey(issuer, actor), now);
      if (hit) return hit;
    }
    return undefined;
  }

  /** Every revocation in force at `now` (ended ones are dropped on the way). */
  list(now: number): Revocation[] {
    this.prune(now);
    return [...this.#byKey.values()].sort((a, b) => a.createdMs - b.createdMs);
  }

  /** Drop the revocations that have ended by `now`; returns how many are in force. */
  prune(now: number): number {
    for (const r of [...this.#byKey.values()]) if (r.endMs <= now) this.remove(r.source, r.id);
    return this.#byKey.size;
  }

  #find(kind: RevocationKind, value: string | undefined, now: number): Revocation | undefined {
    if (value === undefined) return undefined;
    const keys = this.#index.get(kind)!.get(value);
    if (keys === undefined) return undefined;
    for (const key of typeof keys === 'string' ? [keys] : [...keys]) {
      const r = this.#byKey.get(key)!;
      if (r.endMs > now) return r;
      this.#removeKey(key);
    }
    return undefined;
  }
}
