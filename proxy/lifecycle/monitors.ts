// What the behaviour monitors remember, with a hard bound on memory whatever the number of
// consumers and the length of their subjects: every table is a least-recently-used cache,
// and every entry is itself bounded (a window keeps at most its threshold of timestamps). An
// attacker rotating subjects only pushes out the least recently seen state; it never grows
// memory.
//
//   consumers     subject -> ConsumerState (owner view, traversal, denials)   maxConsumers
//   fingerprints  hash(subject, request) -> recent timestamps                 retryStorm.maxFingerprints
//   keys          hash(subject, idempotency key) -> payload and state         idempotency.maxKeys
//   quarantined   subject -> Quarantine                                       quarantine.maxQuarantined
//
// The two hashed tables have entries of one size, so their count bounds their memory. The two
// keyed by subject hold the subject itself (the admin API lists it), which a token may make
// kilobytes long: they are bounded in units of an entry with a usual subject, and an entry
// with a longer one counts for more than one (`units`). Without that, 10,000 consumers with
// 10 KB subjects would hold 100 MB, past the chart's 96 MiB heap (measured before).
//
// Quarantines live apart from consumer state so that pushing a consumer's statistics out
// never lifts its quarantine.

import { LRUCache } from 'lru-cache';
import type { ConsumerKind } from '../rules/types.ts';
import type { FeatureMode, MonitorsConfig } from './config.ts';

/** At most this many contract versions are remembered per consumer (a caller may declare junk). */
const MAX_CONTRACTS = 16;

/**
 * Heap an entry holds beside its subject (measured with --expose-gc: a consumer with a few
 * decisions, one contract and one operation about 1,310 bytes, a quarantine about 330),
 * and the subject length an entry of one unit allows for.
 */
const CONSUMER_BYTES = 1400;
const QUARANTINE_BYTES = 400;
const USUAL_SUBJECT_BYTES = 128;

/**
 * How many entries of a usual subject this one counts for: at least one, and at most the
 * whole table (lru-cache would not keep a larger one at all: a quarantine not kept is lifted).
 */
function units(fixedBytes: number, subject: string, table: number): number {
  // UTF-8 bytes: what V8 holds for a one-byte string and at least what it holds for another.
  return Math.min(table, Math.max(1, Math.ceil((fixedBytes + Buffer.byteLength(subject)) / (fixedBytes + USUAL_SUBJECT_BYTES))));
}

function weighed<V extends {}>(max: number, fixedBytes: number): LRUCache<string, V> {
  return new LRUCache<string, V>({ max, maxSize: max, sizeCalculation: (_, subject) => units(fixedBytes, subject, max) });
}

export interface ConsumerState {
  readonly subject: string;
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
}

export interface Quarantine {
  readonly subject: string;
  readonly sinceMs: number;
  readonly untilMs: number;
  /** enforce: requests are refused; audit: recorded only. */
  readonly mode: Exclude<FeatureMode, 'off'>;
  /** The reasons of the denials that led to it, most recent last. */
  readonly reasons: readonly string[];
}

export interface IdempotencyEntry {
  readonly payload: string;
  readonly operation: string;
  inFlight: boolean;
  /** When the write finished (or was sent, while in flight). */
  atMs: number;
}

export class MonitorState {
  readonly consumers: LRUCache<string, ConsumerState>;
  readonly fingerprints: LRUCache<string, number[]>;
  readonly keys: LRUCache<string, IdempotencyEntry>;
  readonly quarantined: LRUCache<string, Quarantine>;

  constructor(config: MonitorsConfig) {
    this.consumers = weighed(config.maxConsumers, CONSUMER_BYTES);
    this.fingerprints = new LRUCache({ max: config.retryStorm.maxFingerprints });
    this.keys = new LRUCache({ max: config.idempotency.maxKeys });
    this.quarantined = weighed(config.quarantine.maxQuarantined, QUARANTINE_BYTES);
  }

  consumer(subject: string, kind: ConsumerKind, owner: string | undefined, now: number): ConsumerState {
    let state = this.consumers.get(subject);
    if (!state) {
      state = { subject, kind, firstSeenMs: now, lastSeenMs: now, contracts: new Set(), decisions: new Map(), operations: new Map(), denials: [] };
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
    byReason.set(reason, (byReason.get(reason) ?? 0) + 1);
  }

  sawContract(state: ConsumerState, version: string): void {
    if (state.contracts.has(version) || state.contracts.size >= MAX_CONTRACTS) return;
    state.contracts.add(version.slice(0, 64));
  }

  /** The quarantine in force for `subject` at `now`, if any (an ended one is dropped). */
  quarantine(subject: string, now: number): Quarantine | undefined {
    const q = this.quarantined.get(subject);
    if (q && q.untilMs <= now) { this.quarantined.delete(subject); return undefined; }
    return q;
  }
}

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

/** Record an event in a window log, keeping at most `max` times. */
export function record(times: number[], now: number, max: number): void {
  times.push(now);
  if (times.length > max) times.splice(0, times.length - max);
}
