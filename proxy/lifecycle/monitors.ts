// What the behaviour monitors remember, with a hard bound on memory whatever the number of
// consumers and the length of their subjects: every table is a least-recently-used cache,
// and every entry is itself bounded (a window keeps at most its threshold of timestamps). An
// attacker rotating subjects only pushes out the least recently seen state; it never grows
// memory.
//
//   consumers     subject -> ConsumerState (owner view, traversal, denials)   maxConsumers
//   fingerprints  hash(subject, request) -> recent timestamps                 retryStorm.maxFingerprints
//   keys          hash(subject, idempotency key) -> payload and state         idempotency.maxKeys
//
// Fingerprints and keys also have a share per consumer (maxFingerprintsPerConsumer,
// maxKeysPerConsumer): one consumer's many distinct requests push out its own entries, not
// the others' (Shares).
//   quarantined   subject, or its hash if long -> Quarantine                  quarantine.maxQuarantined
//
// The fingerprint, key and quarantine tables have entries of one size at most, so their
// count bounds their memory. The consumer table holds the subject itself (the admin API
// lists it), which a token may make kilobytes long, and a state that grows as the consumer
// calls more operations and meets more reasons: it counts in units of a usual consumer, an
// entry weighed by what it holds (`consumerBytes`) when it is added and again when it grows.
// Without that, 10,000 consumers with 10 KB subjects held 100 MB, past the chart's 96 MiB
// heap (measured before).
//
// Quarantines live apart from consumer state so that pushing a consumer's statistics out
// never lifts its quarantine.

import { hash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { stringBytes } from '../lib/heap.ts';
import type { ConsumerKind } from '../rules/types.ts';
import type { FeatureMode, MonitorsConfig } from './config.ts';

/** At most this many contract versions are remembered per consumer (a caller may declare junk). */
const MAX_CONTRACTS = 16;

/**
 * Heap of a consumer's state (measured with --expose-gc): about 1,100 bytes with its maps
 * empty, and for each operation, reason (per outcome), outcome, contract version and denial
 * time it holds, what these add. A unit of the consumer table is a usual consumer: a subject
 * of 128 bytes, a few operations and reasons, about 2 KiB.
 */
const CONSUMER_BYTES = 1100;
// An operation's time is a boxed number, and delete-and-set leaves holes until the map rehashes.
const OPERATION_BYTES = 80;
const REASON_BYTES = 48;
const OUTCOME_BYTES = 128;
const CONTRACT_BYTES = 64;
// A denial's time (a double), its reason (a pointer to a reason code the table holds) and
// whether it was enforced.
const DENIAL_BYTES = 32;
// The origin object; its issuer is the rules' string.
const ORIGIN_BYTES = 40;
export const CONSUMER_UNIT_BYTES = 2048;

/** Subjects up to this many characters key the quarantine table as they are; longer ones by hash. */
const QUARANTINE_SUBJECT_CHARS = 128;

/** A consumer as its token names it: the issuer that vouched, and the subject. */
export interface Origin {
  readonly issuer: string;
  readonly subject: string;
}

/** An origin of its own to keep: what is passed may be a whole credential. */
function ownOrigin(o: Origin): Origin {
  return { issuer: o.issuer, subject: o.subject };
}

export interface ConsumerState {
  /** The consumer's key (Consumer.key): its subject, or issuer and subject for an unregistered one among several issuers. */
  subject: string;
  /** Who it is, as its token said: what names it again when a reload renames it (rekey). */
  readonly origin?: Origin;
  kind: ConsumerKind;
  owner?: string;
  firstSeenMs: number;
  lastSeenMs: number;
  /** Declared contract versions seen, in order of first sight. */
  readonly contracts: Set<string>;
  /** Decisions by outcome and reason: allow, warn, deny, would-deny. */
  readonly decisions: Map<string, Map<string, number>>;
  /** Operation id -> last time it was called, oldest first (traversal). */
  readonly operations: Map<string, number>;
  /** Times of recent denials, oldest first, at most quarantine.denials of them. */
  denials: number[];
  /** The reason of each of `denials`, at the same index. */
  denialReasons: string[];
  /** Whether each of `denials` was enforced (false: a would-deny), at the same index. */
  denialsEnforced: boolean[];
}

export interface Quarantine {
  /** The subject, shortened past 128 characters ("..."): then `key` names the quarantine. */
  readonly subject: string;
  /** For a subject past 128 characters: its key in the table, what DELETE /quarantine?key= takes. */
  readonly key?: string;
  /** Who it is, as its token said (rekey); not shown. Not kept for a subject kept by hash. */
  readonly origin?: Origin;
  /**
   * The kind of the calls whose denials placed it (an agent's acting for a person are an
   * automation's): it holds only while monitors.kinds watches that kind (a reload that stops
   * watching it lifts it in effect; watched again, it holds again).
   */
  readonly kind: ConsumerKind;
  readonly sinceMs: number;
  readonly untilMs: number;
  /** enforce: requests are refused; audit: recorded only. */
  readonly mode: Exclude<FeatureMode, 'off'>;
  /** The reasons of the denials that led to it, most recent last. */
  readonly reasons: readonly string[];
}

/**
 * How a quarantine applies: the weaker of the mode in force and the one it was placed under.
 * A reload to audit stops enforcing at once, and a reload to enforce does not turn
 * quarantines recorded in audit mode into refusals; they stay would-denies until they end.
 */
export function quarantineMode(current: FeatureMode, held: Quarantine): Exclude<FeatureMode, 'off'> {
  return current === 'enforce' && held.mode === 'enforce' ? 'enforce' : 'audit';
}

/** A fingerprint's recent timestamps, and whose share of the table it counts in. */
export interface Repeats {
  /** The requesting consumer, hashed (as an idempotency key's owner). */
  owner: string;
  readonly times: number[];
}

/**
 * Which entries of a table are whose, the least recently touched first. Past its share, an
 * owner's oldest entry goes: one consumer's many distinct requests push out its own, never
 * another's (the table's own bound still pushes out the least recently used of all).
 */
class Shares {
  /** By owner: the owner's string every entry of theirs keeps (one, not one per entry), and their keys. */
  readonly #of = new Map<string, { readonly owner: string; readonly keys: Set<string> }>();
  readonly #drop: (key: string) => void;

  /** `drop` deletes a key from the table (whose dispose then calls gone). */
  constructor(drop: (key: string) => void) { this.#drop = drop; }

  /** `key`, just set or read in the table, is `owner`'s newest. The owner's string to keep in its entry. */
  touch(owner: string, key: string, share: number): string {
    let mine = this.#of.get(owner);
    if (!mine) this.#of.set(owner, mine = { owner, keys: new Set() });
    mine.keys.delete(key);
    mine.keys.add(key);
    while (mine.keys.size > share) {
      const oldest = mine.keys.values().next().value!;
      mine.keys.delete(oldest);
      this.#drop(oldest);
    }
    return mine.owner;
  }

  /** The table let `key` go, however (pushed out, deleted, replaced): its owner's count follows. */
  gone(owner: string, key: string): void {
    const mine = this.#of.get(owner);
    mine?.keys.delete(key);
    if (mine?.keys.size === 0) this.#of.delete(owner);
  }
}

export interface IdempotencyEntry {
  /** The writing consumer, hashed: whose share of the table the key counts in. */
  owner: string;
  readonly payload: string;
  readonly operation: string;
  /**
   * The body's Content-Length (0 without one, -1 chunked) and the monitors.maxBodyBytes it was
   * fingerprinted under: a reload that moves the limit across the body's size changes how the
   * same write is fingerprinted (hashed, or by its length), so the payloads cannot be compared.
   */
  readonly bodySize: number;
  readonly maxBodyBytes: number;
  inFlight: boolean;
  /** When the write finished (or was sent, while in flight). */
  atMs: number;
}

export class MonitorState {
  readonly consumers: LRUCache<string, ConsumerState>;
  readonly fingerprints: LRUCache<string, Repeats>;
  readonly keys: LRUCache<string, IdempotencyEntry>;
  /** By quarantineKey(subject): read through quarantine(), quarantines(), quarantineFor(), lift(). */
  readonly quarantined: LRUCache<string, Quarantine>;

  /** Each consumer's fingerprints and idempotency keys. */
  readonly #fingerprintsOf: Shares;
  readonly #keysOf: Shares;

  /** Counts quarantines placed or moved: see LifecycleState.version. */
  #changes = 0;
  get changes(): number { return this.#changes; }

  /** The wall clock (LifecycleState.now): what a clock step is told by. */
  readonly #clock: () => number;

  constructor(config: MonitorsConfig, clock: () => number) {
    this.#clock = clock;
    const max = config.maxConsumers;
    // At least one unit, and at most the whole table: lru-cache would not keep a larger entry.
    const units = (s: ConsumerState) => Math.min(max, Math.max(1, Math.ceil(consumerBytes(s) / CONSUMER_UNIT_BYTES)));
    this.consumers = new LRUCache({ max, maxSize: max, sizeCalculation: units });
    this.fingerprints = new LRUCache({ max: config.retryStorm.maxFingerprints, dispose: (entry, key) => this.#fingerprintsOf.gone(entry.owner, key) });
    this.#fingerprintsOf = new Shares((key) => this.fingerprints.delete(key));
    this.keys = new LRUCache({ max: config.idempotency.maxKeys, dispose: (entry, key) => this.#keysOf.gone(entry.owner, key) });
    this.#keysOf = new Shares((key) => this.keys.delete(key));
    this.quarantined = new LRUCache({ max: config.quarantine.maxQuarantined });
  }

  /** Remember a write's idempotency key, within its owner's share (`maxPerConsumer`). */
  rememberKey(key: string, entry: Omit<IdempotencyEntry, 'owner'>, owner: string, maxPerConsumer: number): void {
    const kept: IdempotencyEntry = { ...entry, owner };
    this.keys.set(key, kept);
    kept.owner = this.#keysOf.touch(owner, key, maxPerConsumer);
  }

  /**
   * The recent timestamps of a request's fingerprint, `owner`'s, a new entry if none. Read,
   * it becomes the owner's newest: a request retried among many distinct ones is the one kept.
   */
  repeatsOf(fingerprint: string, owner: string, maxPerConsumer: number): number[] {
    let entry = this.fingerprints.get(fingerprint);
    if (!entry) this.fingerprints.set(fingerprint, entry = { owner, times: [] });
    entry.owner = this.#fingerprintsOf.touch(entry.owner, fingerprint, maxPerConsumer);
    return entry.times;
  }

  /**
   * A consumer's state grew (an operation, a reason, a contract version): weigh it again.
   * lru-cache weighs an entry only when it is set with another value, hence delete and set.
   */
  grew(state: ConsumerState): void {
    if (this.consumers.peek(state.subject) !== state) return;
    this.consumers.delete(state.subject);
    this.consumers.set(state.subject, state);
  }

  consumer(subject: string, kind: ConsumerKind, owner: string | undefined, now: number, origin?: Origin): ConsumerState {
    let state = this.consumers.get(subject);
    if (!state) {
      state = { subject, ...(origin !== undefined ? { origin: ownOrigin(origin) } : {}), kind, firstSeenMs: now, lastSeenMs: now, contracts: new Set(), decisions: new Map(), operations: new Map(), denials: [], denialReasons: [], denialsEnforced: [] };
      this.consumers.set(subject, state);
    }
    state.kind = kind;
    if (owner !== undefined) state.owner = owner;
    state.lastSeenMs = Math.max(state.lastSeenMs, now);
    return state;
  }

  /** Count a decision for the owner view. */
  count(state: ConsumerState, outcome: string, reason: string): void {
    let byReason = state.decisions.get(outcome);
    if (!byReason) state.decisions.set(outcome, (byReason = new Map()));
    const n = byReason.get(reason);
    byReason.set(reason, (n ?? 0) + 1);
    if (n === undefined) this.grew(state);
  }

  sawContract(state: ConsumerState, version: string): void {
    if (state.contracts.has(version) || state.contracts.size >= MAX_CONTRACTS) return;
    state.contracts.add(version.slice(0, 64));
    this.grew(state);
  }

  /** The quarantine in force for `subject` at `now`, if any (an ended one is dropped). */
  quarantine(subject: string, now: number): Quarantine | undefined {
    return this.#inForce(quarantineKey(subject), now, true);
  }

  /**
   * The same, as the admin API reads it: without making it the most recently checked, which
   * would keep a quarantine an operator looked at over one its consumer is still running into.
   */
  peekQuarantine(subject: string, now: number): Quarantine | undefined {
    return this.#inForce(quarantineKey(subject), now, false);
  }

  /** Every quarantine in force at `now`. */
  quarantines(now: number): Quarantine[] {
    return [...this.quarantined.keys()].map((k) => this.#inForce(k, now, false)).filter((q) => q !== undefined);
  }

  /** Quarantine `subject`; the entry shows the subject shortened (a token may make it kilobytes long). */
  quarantineFor(subject: string, q: Omit<Quarantine, 'subject' | 'key'>): void {
    this.#changes++;
    const key = quarantineKey(subject);
    const { origin, ...kept } = q;
    if (key === subject) { this.quarantined.set(key, { subject, ...kept, ...(origin ? { origin: ownOrigin(origin) } : {}) }); return; }
    // Kept by hash, it is not renamed by a reload: no subject of any length is kept with it.
    // Not cut inside a surrogate pair; and a copy, not a slice: V8 makes a slice a view that
    // keeps the whole subject alive.
    const cut = /[\uD800-\uDBFF]/.test(subject[QUARANTINE_SUBJECT_CHARS - 1]!) ? QUARANTINE_SUBJECT_CHARS - 1 : QUARANTINE_SUBJECT_CHARS;
    this.quarantined.set(key, { subject: `${Buffer.from(subject.slice(0, cut)).toString()}...`, key, ...kept });
  }

  /**
   * Lift `subject`'s quarantine; returns it if it was in force. The consumer's denials are
   * forgotten with it, or the next denial would quarantine it again at once.
   */
  lift(subject: string, now: number): Quarantine | undefined {
    const q = this.#lift(quarantineKey(subject), now);
    if (q) { const state = this.consumers.peek(subject); if (state) forgetDenials(state); }
    return q;
  }

  /**
   * Lift the quarantine of a long subject by the key GET /quarantine shows for it. A key has
   * its own parameter, not the subject's place: a subject can be any string, another's key
   * included, and read as a key it would lift that other quarantine.
   */
  liftKey(key: string, now: number): Quarantine | undefined {
    if (!HASHED_KEY.test(key)) return undefined;
    const q = this.#lift(key, now);
    if (q) {
      // Its consumer is found by hashing the long subjects held (an admin action, not per request).
      const state = [...this.consumers.values()].find((c) => c.subject.length > QUARANTINE_SUBJECT_CHARS && quarantineKey(c.subject) === key);
      if (state) forgetDenials(state);
    }
    return q;
  }

  /**
   * After a reload, keep each consumer's state and quarantine under the key the new rules give
   * it (`keyOf`: undefined when they name nobody so: its issuer no longer trusted, its subject
   * registered to another; such an entry is dropped, as it would be another's under its key).
   * A subject registered, or no longer, while several issuers are trusted, or a second issuer
   * trusted, changes its key; read under the new one only, a quarantined automation was let
   * through at once.
   * A quarantine kept by hash (a name past 128 characters) has no origin of its own: it follows
   * its consumer's state, which keeps the whole subject, while the table holds that; otherwise
   * it stays where it is. Returns how many entries moved, how many consumers' state was dropped
   * and how many quarantines lifted.
   */
  rekey(keyOf: (origin: Origin) => string | undefined, now: number): { moved: number; dropped: number; lifted: number } {
    let moved = 0;
    let dropped = 0;
    let lifted = 0;
    // Before the consumers are renamed: a hashed quarantine is found by its old name's hash.
    const hashed = new Map<string, Origin>();
    for (const state of this.consumers.values()) {
      if (state.origin !== undefined && state.subject.length > QUARANTINE_SUBJECT_CHARS) hashed.set(quarantineKey(state.subject), state.origin);
    }
    for (const [key, state] of [...this.consumers.entries()]) {
      if (state.origin === undefined) continue;
      const to = keyOf(state.origin);
      // Named by nobody now (its issuer no longer trusted, its subject registered to another):
      // left under its key, it would be another issuer's same-named consumer's.
      if (to === undefined) { this.consumers.delete(key); dropped++; continue; }
      if (to === key || this.consumers.has(to)) continue;
      // The same object, renamed: a request under way holds it.
      this.consumers.delete(key);
      state.subject = to;
      this.consumers.set(to, state);
      moved++;
    }
    // A quarantine moved is placed again (quarantineFor): a request under way is checked again.
    for (const [key, q] of [...this.quarantined.entries()]) {
      const origin = q.origin ?? (q.key !== undefined ? hashed.get(key) : undefined);
      if (origin === undefined || !this.#inForce(key, now, false)) continue;
      const to = keyOf(origin);
      if (to === undefined) { this.quarantined.delete(key); lifted++; continue; }
      const toKey = quarantineKey(to);
      if (toKey === key || this.quarantined.has(toKey)) continue;
      this.quarantined.delete(key);
      const { subject: _, key: __, ...rest } = q;
      this.quarantineFor(to, { ...rest, origin });
      moved++;
    }
    return { moved, dropped, lifted };
  }

  #lift(key: string, now: number): Quarantine | undefined {
    const q = this.#inForce(key, now);
    if (q) this.quarantined.delete(key);
    return q;
  }

  /** `checked`: a check's look (it makes the quarantine the most recently checked), not a listing's. */
  #inForce(key: string, now: number, checked = true): Quarantine | undefined {
    const q = checked ? this.quarantined.get(key) : this.quarantined.peek(key);
    if (!q) return undefined;
    if (q.untilMs <= now) { this.quarantined.delete(key); return undefined; }
    // Placed after the clock's reading now: it stepped back (fromNow). It lasts its period from
    // now, not the step too. (Not after `now`, a request's own time: one decided late sees a
    // quarantine placed after it arrived.) Read only for a quarantine: not on every request.
    const current = this.#clock();
    if (q.sinceMs > current) {
      const moved = { ...q, sinceMs: current, untilMs: current + (q.untilMs - q.sinceMs) };
      this.quarantined.set(key, moved);
      return moved;
    }
    return q;
  }
}

/**
 * Denials a consumer is weighed for: the next power of two at or above those it holds, so that
 * it is weighed again (denied) only when the count doubles. They were weighed at
 * quarantine.denials as it was at start-up: a reload that raised it let each consumer hold
 * that many more, unweighed, and the table outgrew its bound.
 */
function weighedDenials(held: number): number {
  return held === 0 ? 0 : 2 ** Math.ceil(Math.log2(held));
}

/** Heap a consumer's state holds, estimated from above (CONSUMER_BYTES and the rest). */
function consumerBytes(s: ConsumerState): number {
  let reasons = 0;
  for (const byReason of s.decisions.values()) reasons += byReason.size;
  // An origin's subject is the key itself unless the key is ["<issuer>","<subject>"].
  const origin = s.origin === undefined ? 0 : ORIGIN_BYTES + (s.origin.subject === s.subject ? 0 : stringBytes(s.origin.subject));
  return CONSUMER_BYTES + DENIAL_BYTES * weighedDenials(s.denials.length) + origin + stringBytes(s.subject) + OPERATION_BYTES * s.operations.size + OUTCOME_BYTES * s.decisions.size
    + REASON_BYTES * reasons + CONTRACT_BYTES * s.contracts.size;
}

/**
 * A subject as the quarantine table's key: itself when short (the usual case, and no hashing
 * on the request path), else its hash, so that an entry's size does not follow the subject's.
 * A hash key is padded past the longest short subject, so no subject can be another's key,
 * and is URL-safe (base64url, '~'), so that an operator can name it in DELETE /quarantine?key=.
 */
function quarantineKey(subject: string): string {
  return subject.length <= QUARANTINE_SUBJECT_CHARS ? subject : hash('sha256', subject, 'base64url').padEnd(QUARANTINE_SUBJECT_CHARS + 1, '~');
}

const HASHED_KEY = new RegExp(`^[A-Za-z0-9_-]{43}~{${QUARANTINE_SUBJECT_CHARS + 1 - 43}}$`);

/**
 * Sliding-window log bounded by its threshold: drops times older than `windowMs`, then
 * tells whether one more event fits under `max`. Returns the time at which it will, when not.
 */
export function windowFull(times: number[], now: number, windowMs: number, max: number): number | undefined {
  let drop = 0;
  while (drop < times.length && times[drop]! <= now - windowMs) drop++;
  if (drop) times.splice(0, drop);
  if (times.length < max) return undefined;
  return times[times.length - max]! + windowMs;
}

/**
 * Record a denial and its reason for the quarantine count: the ones out of the window go, this
 * one is put in time order (as `record` does), and at most `max` are kept. The quarantine
 * names the reasons of those it counted, not every reason the consumer ever had. True when
 * the consumer now holds more than it was weighed for (MonitorState.grew).
 */
export function recordDenial(s: ConsumerState, at: number, reason: string, enforced: boolean, windowMs: number, max: number): boolean {
  const weighed = weighedDenials(s.denials.length);
  let drop = 0;
  while (drop < s.denials.length && s.denials[drop]! <= at - windowMs) drop++;
  const i = insertInOrder(s.denials, at, drop);
  s.denialReasons.splice(i, 0, reason);
  s.denialsEnforced.splice(i, 0, enforced);
  const over = Math.max(drop, s.denials.length - max);
  if (over) { s.denials.splice(0, over); s.denialReasons.splice(0, over); s.denialsEnforced.splice(0, over); }
  return weighedDenials(s.denials.length) > weighed;
}

/**
 * Times after `current`, the clock's reading now, in a time-ordered log, moved to it: the wall
 * clock stepped back (an NTP correction, a VM resumed). Left in the future, they would count
 * for the step as well as the window: a step back of an hour turned a 10 s retry-storm window
 * into a 59-minute refusal. Not a request's own time: one decided late (its body read for
 * seconds) sees later arrivals' times after its own, and moving them back to it would empty
 * the window early.
 */
export function fromNow(times: number[], current: number): void {
  for (let i = times.length - 1; i >= 0 && times[i]! > current; i--) times[i] = current;
}

export function forgetDenials(s: ConsumerState): void {
  s.denials = [];
  s.denialReasons = [];
  s.denialsEnforced = [];
}

/**
 * Record an event in a window log, keeping at most `max` times, in time order: a request is
 * recorded when its decision is made, with its arrival time, so one whose body took a while
 * comes after later arrivals; out of order, an expired time would hide behind a newer one
 * that windowFull stops at, and count for longer than the window.
 */
export function record(times: number[], now: number, max: number): void {
  insertInOrder(times, now, 0);
  if (times.length > max) times.splice(0, times.length - max);
}

/** Insert `at` into ascending `times` after index `from`, after any equal time; returns its index. */
function insertInOrder(times: number[], at: number, from: number): number {
  let i = times.length;
  while (i > from && times[i - 1]! > at) i--;
  times.splice(i, 0, at);
  return i;
}
