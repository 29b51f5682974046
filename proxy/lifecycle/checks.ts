// The lifecycle checks. Each is a factory that reads its settings from the rules once and
// returns a Check, or undefined when its feature is off or no lifecycle state is wired (the
// pipeline then leaves it out). Where each sits in the pipeline, and why, is said in
// proxy/pipeline/checks.ts.
//
// A feature in `audit` mode never ends a request: its would-deny becomes a warning with the
// same reason code (so the decision, its span, log line and metric carry it, and the caller
// sees it in driftguard-warning), is listed in ctx.extra['lifecycle.would_deny'], and the
// remaining checks still run, so auditing one feature never skips another's enforcement.

import { hash } from 'node:crypto';
import type { Check, CheckResult, Credential, Denial, RequestContext } from '../pipeline/types.ts';
import { SENSITIVITY_RANK, type ConsumerKind, type Rules } from '../rules/types.ts';
import { configOf, type FeatureMode, type LifecycleConfig } from './config.ts';
import type { Counts, LifecycleState } from './state.ts';
import { windowFull, record, fromNow, quarantineMode, type Quarantine, type IdempotencyEntry } from './monitors.ts';
import { actorIssuer, actorIssuers, issuerSubjectOf, namedActorConsumers } from '../checks/consumers.ts';
import { revokesSubjectItself, taskOf } from './revocations.ts';
import { MAX_LEVELS } from '../identity/act.ts';
import { bodyFingerprint, declaredSize } from './body.ts';
import { lifetimeExceeded } from '../checks/credential.ts';
import { UNREAD_RETRY_MS } from './lists.ts';
import type { ForwardOutcome } from '../forward/outcome.ts';
import { claimOf, headerOf } from '../pipeline/named.ts';

export const WOULD_DENY = 'lifecycle.would_deny';
/** The revoked actor through which a token was refused (a subject revocation matched in its act chain). */
export const REVOKED_ACTOR = 'revocation.actor';
/** The quarantined actor through which a token was refused. */
export const QUARANTINED_ACTOR = 'quarantine.actor';

function verdict(ctx: RequestContext, mode: FeatureMode, denial: Denial): CheckResult {
  if (mode === 'enforce') return denial;
  ctx.warnings.push({ ...denial, detail: `audit mode, not enforced: ${denial.detail}` });
  const before = ctx.extra[WOULD_DENY];
  const reasons = Array.isArray(before) ? before as string[] : [];
  if (!reasons.includes(denial.reason)) ctx.extra[WOULD_DENY] = [...reasons, denial.reason];
  return undefined;
}

/** A body a monitor must read that did not arrive whole (retry storm, traversal, idempotency alike). */
const BODY_UNREADABLE: Denial = Object.freeze({ reason: 'malformed-request', detail: 'the request body could not be read' });

/** A task claim that names no task (taskOf: null): no task revocation could match it. */
function namesNoTask(taskClaim: string): Denial {
  return { reason: 'invalid-credential', detail: `claim ${taskClaim} must be a non-empty string or a whole number below 2^53` };
}

/**
 * An act chain that may name an actor where it cannot be read (ActChain.complete): a revoked
 * or quarantined actor could hide there.
 */
function hidesActors(c: Credential | undefined): Denial | undefined {
  if (c?.act === undefined || c.act.complete) return undefined;
  return { reason: 'invalid-credential', detail: `the act claim must be an object with a string sub at every level, at most ${MAX_LEVELS} levels deep` };
}

/**
 * Records the task a token names (`credential.task`) as soon as it is verified (the credential
 * check calls it), whatever check then decides and whatever the features' modes: a token
 * refused for its revoked task, a stale contract or a quarantine was recorded without the task,
 * and a responder could not follow a task through the log.
 */
export function taskRecorder(rules: Rules, state: LifecycleState | undefined): ((ctx: RequestContext) => void) | undefined {
  if (!state) return undefined;
  const claim = configOf(rules).credentials.taskClaim;
  return (ctx) => {
    // A number is its decimal string, as revocation reads it (task_id: 4711).
    const task = taskOf(claimOf(ctx.credential, claim));
    if (typeof task === 'string') ctx.extra['credential.task'] = task.slice(0, 256);
  };
}

/** Revoked token, task, consumer or signing key: 401 credential-revoked. */
export function revocation(rules: Rules, state: LifecycleState | undefined): Check | undefined {
  if (!state) return undefined;
  const { revocation: r, credentials } = configOf(rules);
  if (r.mode === 'off') return undefined;
  const words = { jti: 'token', task: 'task', subject: 'consumer', kid: 'signing key' } as const;
  return {
    name: 'revocation',
    run(ctx) {
      const c = ctx.credential;
      if (!c) return undefined;
      see(state, ctx);
      // Fail closed: the revocation list URL has not been read since it was configured
      // (its server is down at start-up, say), so this credential may be on it.
      if (state.revocations.unread) {
        return verdict(ctx, r.mode, { reason: 'revocation-list-unavailable', detail: 'the revocation list has not been read yet', retryAfter: Math.ceil(Math.min(r.intervalMs, UNREAD_RETRY_MS) / 1000) });
      }
      // Refused here too, whatever credentials.mode says: the revocation must not be escapable.
      if (taskOf(claimOf(c, credentials.taskClaim)) === null) return verdict(ctx, r.mode, namesNoTask(credentials.taskClaim));
      // Who vouches for each actor is asked only of a token with a chain (no closure per request otherwise).
      const hit = state.revocations.match(c, credentials.taskClaim, ctx.now, c.act && ((actor, i) => actorIssuers(rules, c, actor, i)));
      if (!hit) {
        // And so is a chain that could hide a revoked actor, whatever delegation.mode says.
        const hides = hidesActors(c);
        return hides && verdict(ctx, r.mode, hides);
      }
      ctx.extra['revocation.id'] = hit.id;
      ctx.extra['revocation.kind'] = hit.kind;
      // The operator's reason stays with the operator; the caller gets the id to quote.
      const byActor = hit.kind === 'subject' && !revokesSubjectItself(hit, c);
      // The actor's doing, not the consumer's: the quarantine does not count it (index.ts).
      // Recorded as the actor's sub, as quarantine.actor and delegation.chain name it, not as
      // the revocation's value (`["<issuer>","<subject>"]`, spaced as the operator wrote it).
      if (byActor) ctx.extra[REVOKED_ACTOR] = issuerSubjectOf(hit.value)?.[1] ?? hit.value;
      const what = byActor ? 'an actor in this token\'s delegation chain' : `this ${words[hit.kind]}`;
      return verdict(ctx, r.mode, { reason: 'credential-revoked', detail: `${what} was revoked (revocation ${hit.id})` });
    },
  };
}

/** A quarantined consumer is refused everything: 403 consumer-quarantined; so is a token one acts through. */
export function quarantine(rules: Rules, state: LifecycleState | undefined): Check | undefined {
  if (!state) return undefined;
  const q = configOf(rules).monitors.quarantine;
  if (q.mode === 'off') return undefined;
  return {
    name: 'quarantine',
    run(ctx) {
      const key = state.consumerKey(ctx);
      if (key === undefined) return undefined;
      see(state, ctx);
      const found = quarantineOf(state, key, ctx.credential, q.mode, ctx.now, configOf(rules).monitors.kinds);
      if (!found) {
        // A chain that could hide a quarantined actor, whatever delegation.mode says.
        const hides = hidesActors(ctx.credential);
        return hides && verdict(ctx, q.mode, hides);
      }
      const { held, actor } = found;
      const what = actor === undefined ? 'this consumer' : 'an actor in this token\'s delegation chain';
      // The actor's doing: a refusal of consumer-quarantined never counts towards a quarantine (index.ts).
      if (actor !== undefined) ctx.extra[QUARANTINED_ACTOR] = actor;
      const seconds = Math.max(1, Math.ceil((held.untilMs - ctx.now) / 1000));
      ctx.extra['quarantine.until'] = new Date(held.untilMs).toISOString();
      return verdict(ctx, quarantineMode(q.mode, held), { reason: 'consumer-quarantined', detail: `${what} is quarantined for another ${seconds}s after repeated denials`, retryAfter: seconds });
    },
  };
}

/**
 * The quarantine a request is held by: the consumer's (kept under `key`) or an actor's in its
 * act chain, an enforced one before one in audit mode, so that a person's audit quarantine
 * does not hide the enforced one of the agent acting for it.
 */
export function quarantineOf(state: LifecycleState, key: string, credential: Credential | undefined, mode: FeatureMode, now: number, watched: ReadonlySet<ConsumerKind>): { held: Quarantine; actor?: string } | undefined {
  // A quarantine placed for a kind no longer watched (a reload narrowed monitors.kinds) holds
  // nobody, as none does once quarantine.mode is off. The kind it was placed for, not the
  // call's: a person's holds its calls through an agent too.
  const own = holding(state.monitors.quarantine(key, now), watched);
  if (own && quarantineMode(mode, own) === 'enforce') return { held: own };
  const actor = credential ? quarantinedActor(state, credential, mode, now, watched) : undefined;
  if (actor && (!own || quarantineMode(mode, actor.held) === 'enforce')) return { held: actor.held, actor: actor.subject };
  return own ? { held: own } : undefined;
}

/** `q` if it holds: placed for a kind monitors.kinds watches. */
export function holding(q: Quarantine | undefined, watched: ReadonlySet<ConsumerKind>): Quarantine | undefined {
  return q !== undefined && watched.has(q.kind) ? q : undefined;
}

/**
 * The first actor of `c`'s act chain that is quarantined at `now`. A quarantined automation
 * must not go on acting for others, as a revoked one does not: each level is the consumer its
 * issuer vouches for (the level's iss, else the token's, as the delegation check reads it),
 * a malformed level's sub included.
 */
export function quarantinedActor(state: LifecycleState, c: Credential, mode: FeatureMode, now: number, watched: ReadonlySet<ConsumerKind>): { subject: string; held: Quarantine } | undefined {
  const chain = c.act;
  if (!chain || state.monitors.quarantined.size === 0) return undefined;
  let first: { subject: string; held: Quarantine } | undefined;
  // Up to the first malformed level, named and actors are the same levels; after it, named
  // holds the subs that remain, whose iss nothing vouches for (namedActorConsumers).
  for (const [i, subject] of chain.named.entries()) {
    for (const actor of namedActorConsumers(state.rules, c, subject, i)) {
      const held = holding(state.monitors.quarantine(actor.key, now), watched);
      if (!held) continue;
      // An enforced one anywhere in the chain, before an audit one nearer the front.
      if (quarantineMode(mode, held) === 'enforce') return { subject, held };
      first ??= { subject, held };
    }
  }
  return first;
}

/** LifecycleState.version as a request's revocation and quarantine checks saw it. */
const seen = new WeakMap<RequestContext, number>();

/** Note the version this request's revocation or quarantine check saw (the two run with no wait between them). */
function see(state: LifecycleState, ctx: RequestContext): void {
  // Nothing revoked or quarantined yet (0): the recheck reads an absent entry as 0.
  if (state.version !== 0) seen.set(ctx, state.version);
}

/**
 * Revocation and quarantine again, when either changed after they ran for this request: the
 * monitors after them may wait for its body (up to monitors.bodyTimeout, as slow as the client
 * likes), and a token revoked meanwhile, an admin's 201 already answered, went on to the
 * upstream. Last: nothing after it waits.
 */
export function recheck(rules: Rules, state: LifecycleState | undefined): Check | undefined {
  if (!state) return undefined;
  const again = [revocation(rules, state), quarantine(rules, state)].filter((c) => c !== undefined);
  if (again.length === 0) return undefined;
  return {
    name: 'recheck',
    once: true,
    run(ctx) {
      if ((seen.get(ctx) ?? 0) === state.version || !ctx.credential) return undefined;
      for (const c of again) {
        // A check that let the request through, untouched or with a warning: one that warned
        // (an audit-mode quarantine of the person) may enforce now (the agent quarantined
        // meanwhile). What it warns again it has said already: taken back.
        const outcome = ctx.checks.find((r) => r.check === c.name)?.outcome;
        if (outcome !== 'continue' && outcome !== 'warn') continue;
        const warnings = ctx.warnings.length;
        const wouldDeny = ctx.extra[WOULD_DENY];
        const denial = c.run(ctx) as CheckResult;
        if (denial) return denial;
        ctx.warnings.length = warnings;
        if (wouldDeny === undefined) delete ctx.extra[WOULD_DENY]; else ctx.extra[WOULD_DENY] = wouldDeny;
      }
      return undefined;
    },
  };
}

/** jti on every token; a task claim from a sensitivity up; lifetime limits per sensitivity. */
export function taskBinding(rules: Rules, state: LifecycleState | undefined): Check | undefined {
  if (!state) return undefined;
  const c = configOf(rules).credentials;
  if (c.mode === 'off') return undefined;
  const skew = rules.identity.clockSkewMs;
  return {
    name: 'task-binding',
    run(ctx) {
      const cred = ctx.credential;
      const consumer = ctx.consumer;
      if (!cred || !consumer) return undefined;
      // A task claim is one task's name or nothing, whoever presents it and whatever the
      // operation (the task it names was recorded as the token was verified: taskRecorder).
      const task = taskOf(claimOf(cred, c.taskClaim));
      if (task === null) return verdict(ctx, c.mode, namesNoTask(c.taskClaim));
      if (!c.kinds.has(consumer.kind)) return undefined;
      if (c.requireJti && cred.jti === undefined) {
        return verdict(ctx, c.mode, { reason: 'invalid-credential', detail: `${consumer.kind} consumers must present a token with jti` });
      }
      const op = ctx.operation;
      if (!op) return undefined;
      const max = c.maxTokenLifetimeMs[op.sensitivity];
      if (max !== undefined) {
        if (lifetimeExceeded(cred, ctx.now, max, skew)) {
          return verdict(ctx, c.mode, { reason: 'credential-lifetime-exceeded', detail: `${op.sensitivity}-sensitivity operations accept tokens valid for at most ${max / 1000}s` });
        }
      }
      if (SENSITIVITY_RANK[op.sensitivity] >= c.taskBindingRank && task === undefined) {
        return verdict(ctx, c.mode, { reason: 'task-binding-required', detail: `${op.sensitivity}-sensitivity operations need a token bound to one task (claim ${c.taskClaim})` });
      }
      return undefined;
    },
  };
}

/** RFC 8693 act chain: recorded; its depth and its actors checked. */
export function delegation(rules: Rules, state: LifecycleState | undefined): Check | undefined {
  if (!state) return undefined;
  const d = configOf(rules).delegation;
  if (d.mode === 'off') return undefined;
  return {
    name: 'delegation',
    run(ctx) {
      const cred = ctx.credential;
      const act = cred?.act;
      if (!cred || !act) return undefined;
      // The chain as read with the credential (identity/act.ts), which recorded it. Judged up to
      // one level past the limit: each of those must be an object with a non-empty sub and a
      // string iss, if any; a level beyond them makes the chain too deep, whatever it holds.
      const judged = Math.min(act.depth, d.maxDepth + 1);
      if (act.actors.length < judged || act.namedIssuers.slice(0, judged).some((iss) => iss !== undefined && typeof iss !== 'string')) {
        return verdict(ctx, d.mode, { reason: 'invalid-credential', detail: 'the act claim must be an object with a non-empty sub (and a string iss, if any) at every level' });
      }
      if (act.depth > d.maxDepth) {
        return verdict(ctx, d.mode, { reason: 'delegation-too-deep', detail: `the delegation chain is longer than ${d.maxDepth}` });
      }
      // Outermost (current) actor first. An actor is its sub as its issuer vouches for it:
      // act.iss, else the token's issuer. A registered actor has one issuer
      // (consumers.registry[].issuer); another actor is vouched for by the token's own issuer
      // only. A same-named actor elsewhere is not it.
      const chain = act.actors;
      const foreign = chain.filter((sub, i) => actorIssuer(cred, i) !== (rules.consumers.registry.get(sub)?.issuer ?? cred.issuer));
      const subject = ctx.consumer?.subject ?? cred.subject;
      const allowed = d.actors.get(subject);
      if (!allowed) {
        if (d.unlisted === 'allow') return undefined;
        return verdict(ctx, d.mode, { reason: 'actor-not-allowed', detail: 'no actor may act for this consumer' });
      }
      const stranger = chain.find((actor) => !allowed.has(actor) || foreign.includes(actor));
      if (stranger !== undefined) return verdict(ctx, d.mode, { reason: 'actor-not-allowed', detail: `actor ${stranger} may not act for this consumer` });
      return undefined;
    },
  };
}

type Monitors = LifecycleConfig['monitors'];

function watched(m: Monitors, ctx: RequestContext): boolean {
  return ctx.consumer !== undefined && ctx.operation !== undefined && m.kinds.has(ctx.consumer.kind);
}

const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

/**
 * Whether a key's write, remembered under another monitors.maxBodyBytes, may be this one though
 * the payloads differ: where the limit moved across the body's size, one was fingerprinted by
 * its hash and the other by its length, so the same write would be 422 "use a new key", which
 * invites the duplicate the monitor stops. Then the same operation with a body of the same
 * length is taken for it (409), as a body fingerprinted by its length always is.
 */
function sameUnderAnotherLimit(seen: IdempotencyEntry, ctx: RequestContext, maxBodyBytes: number): boolean {
  const size = declaredSize(ctx.req);
  if (seen.maxBodyBytes === maxBodyBytes || size <= 0 || seen.bodySize !== size) return false;
  return seen.operation === ctx.operation?.id && (size <= seen.maxBodyBytes) !== (size <= maxBodyBytes);
}

/**
 * Consumer, method, canonical path, query and body hash, as one short key. The subject is
 * hashed in rather than prefixed, so an entry of the fingerprint table costs the same
 * whatever the subject's length: the table's count bounds its memory.
 */
async function requestFingerprint(ctx: RequestContext, m: Monitors): Promise<string | undefined> {
  // Computed once per request: retry storm and idempotency both ask, and the body can be read only once.
  const known = fingerprints.get(ctx);
  if (known !== undefined) return known;
  const body = BODY_METHODS.has(ctx.req.method ?? '') ? await bodyFingerprint(ctx, m.maxBodyBytes, m.bodyTimeoutMs) : '';
  if (body === undefined) return undefined;
  const fingerprint = hash('sha256', `${holder(ctx)}\n${ctx.req.method}\n${ctx.target?.path}\n${ctx.target?.query}\n${body}`, 'base64');
  fingerprints.set(ctx, fingerprint);
  return fingerprint;
}

const fingerprints = new WeakMap<RequestContext, string>();

/**
 * Whose fingerprints and idempotency keys these are, from the token alone, which no reload
 * changes: its issuer and subject (a consumer's key changes when it is registered while
 * several issuers are trusted), and the agent acting for it as the token names it (its act's
 * outermost sub and iss, else the token's issuer), whether or not the rules in force vouch for
 * it: a reload that trusts, registers or stops trusting the agent would otherwise move a kept
 * key, and a retried write would go through twice; and two agents nobody vouches for, acting
 * for one person, would share its keys. As JSON, so that no subject's newline can pass for
 * the fields after it.
 */
function holder(ctx: RequestContext): string {
  const c = ctx.credential!;
  const agent = c.act?.actors[0];
  return agent !== undefined ? JSON.stringify([c.issuer, c.subject, actorIssuer(c, 0), agent]) : person(c);
}

/** The person a token names, by its issuer: the part of holder() and writer() without an agent. */
function person(c: Credential): string {
  return JSON.stringify([c.issuer, c.subject]);
}

/**
 * Whose share of the fingerprint and key tables a request counts in, hashed: the one sending
 * it. An agent's requests for every person it acts for are one share (by pair, an agent acting
 * for ten people had ten, and pushed other consumers' keys out). Agents nobody vouches for
 * share the person's: their names are no issuer's word, so each new name must not be a new
 * share of the table (their keys are still their own, holder()).
 */
function writer(ctx: RequestContext): string {
  let w = writers.get(ctx);
  if (w !== undefined) return w;
  const a = ctx.consumer?.actor;
  w = hash('sha256', a?.key !== undefined ? JSON.stringify(['actor', a.issuer ?? null, a.subject]) : person(ctx.credential!), 'base64');
  // A write both monitors watch asks twice; the second gets the first's digest.
  writers.set(ctx, w);
  return w;
}

const writers = new WeakMap<RequestContext, string>();

/**
 * Drop what the checks noted for a request (the version its revocation check saw, its
 * fingerprint, its writer) once it is decided: the checks that read them are `once`, so a
 * reload's new decision never asks. Left to the garbage collector, every entry stays in its weak
 * map's table until the request is collected, and each collection walks them: about 5 µs of
 * CPU a request at saturation (make bench, A/B).
 */
export function forgetNotes(ctx: RequestContext): void {
  seen.delete(ctx);
  fingerprints.delete(ctx);
  writers.delete(ctx);
}

function counts(state: LifecycleState, ctx: RequestContext): Counts {
  let c = state.counts.get(ctx);
  if (!c) state.counts.set(ctx, (c = {}));
  return c;
}

/**
 * Record what a request counts for (state.counts), now that its decision let it through.
 * Returns the fingerprint's times it was counted in when its forward's outcome decides
 * whether it stays there (retryStorm.counts unsuccessful: forwardedRepeat).
 */
export function countForwarded(state: LifecycleState, ctx: RequestContext): number[] | undefined {
  const c = state.counts.get(ctx);
  if (!c) return undefined;
  state.counts.delete(ctx);
  if (c.repeats) record(c.repeats.times, ctx.now, c.repeats.max);
  if (c.operation) {
    const { consumer, id, max } = c.operation;
    const ops = consumer.operations;
    // Arrival times, recorded at decision time: a later arrival may be recorded first.
    const last = ops.get(id);
    if (last !== undefined) { ops.delete(id); ops.set(id, Math.max(last, ctx.now)); }
    // A new operation over the limit (forwarded in audit mode) is not kept: the map stays
    // within maxOperations, and the next call of it is a would-deny again, as enforce refuses it.
    else if (ops.size < max) { ops.set(id, ctx.now); state.monitors.grew(consumer); }
  }
  return c.repeats?.unsuccessful ? c.repeats.times : undefined;
}

/**
 * A request counted as a repeat whose forward succeeded (an answer below 400, passed on whole;
 * a WebSocket's 101) is taken back (retryStorm.counts unsuccessful): a poller answered 200
 * every few seconds is healthy, and was refused, then quarantined, at the default limits.
 */
export function forwardedRepeat(times: number[], at: number, outcome: ForwardOutcome): void {
  if (outcome.status === undefined || outcome.status >= 400 || outcome.aborted || outcome.failure !== undefined) return;
  const i = times.lastIndexOf(at);
  if (i !== -1) times.splice(i, 1);
}

/** The same request more than maxRepeats times in a window: 429 retry-storm. */
export function retryStorm(rules: Rules, state: LifecycleState | undefined): Check | undefined {
  if (!state) return undefined;
  const m = configOf(rules).monitors;
  const r = m.retryStorm;
  if (r.mode === 'off') return undefined;
  const keyRefused = keyRefusal(rules);
  return {
    name: 'retry-storm',
    once: true,
    async run(ctx) {
      if (!watched(m, ctx) || keyRefused(ctx)) return undefined;
      const fingerprint = await requestFingerprint(ctx, m);
      if (fingerprint === undefined) return BODY_UNREADABLE;
      const times = state.monitors.repeatsOf(fingerprint, writer(ctx), r.maxFingerprintsPerConsumer);
      fromNow(times, state.now());
      const freeAt = windowFull(times, ctx.now, r.windowMs, r.maxRepeats);
      // Counted once the decision lets it through (audit mode included): state.counts.
      counts(state, ctx).repeats = { times, max: r.maxRepeats, unsuccessful: r.counts === 'unsuccessful' };
      if (freeAt !== undefined) {
        const retryAfter = Math.max(1, Math.ceil((freeAt - ctx.now) / 1000));
        // maxRepeats + 1: this request, past the repeats the window holds (at most maxRepeats).
        ctx.extra['retry_storm.repeats'] = times.length + 1;
        const denial: Denial = { reason: 'retry-storm', detail: `the same request was sent more than ${r.maxRepeats} times within ${r.windowMs / 1000}s`, retryAfter };
        return verdict(ctx, r.mode, denial);
      }
      return undefined;
    },
  };
}

/** More distinct operations than maxOperations in a window: 403 endpoint-traversal. */
export function traversal(rules: Rules, state: LifecycleState | undefined): Check | undefined {
  if (!state) return undefined;
  const m = configOf(rules).monitors;
  const t = m.traversal;
  if (t.mode === 'off') return undefined;
  const count = (ctx: RequestContext): CheckResult => {
    // An agent's traversal is the agent's, whoever it acts for.
    const p = state.monitored(ctx)!;
    const consumer = state.monitors.consumer(p.key, p.kind, p.owner, ctx.now, p.origin);
    const ops = consumer.operations;
    // Drop what is out of the window: every entry, not only the front, as a request recorded
    // late (its body was being read) sits behind later arrivals. At most maxOperations.
    // A time after the clock's reading (it stepped back: fromNow) counts from that reading.
    const current = state.now();
    for (const [id, at] of ops) if (at <= ctx.now - t.windowMs) ops.delete(id); else if (at > current) ops.set(id, current);
    const id = ctx.operation!.id;
    // Counted once the decision lets it through (audit mode included): state.counts.
    counts(state, ctx).operation = { consumer, id, max: t.maxOperations };
    if (!ops.has(id) && ops.size >= t.maxOperations) {
      // maxOperations + 1: this operation, past the ones the window holds (at most maxOperations).
      ctx.extra['traversal.operations'] = ops.size + 1;
      return verdict(ctx, t.mode, { reason: 'endpoint-traversal', detail: `more than ${t.maxOperations} distinct operations within ${t.windowMs / 1000}s` });
    }
    return undefined;
  };
  const keyRefused = keyRefusal(rules);
  return {
    name: 'traversal',
    once: true,
    run(ctx) {
      if (!watched(m, ctx)) return undefined;
      // The operation is recorded once the decision lets the request through. A body the
      // idempotency check waits for between here and there would let writes arriving together
      // each pass this count before any is recorded: it is read first, so that nothing waits
      // between this count and that record. (The retry-storm check, when on, has read it.)
      // Only then a promise: most requests are counted at once.
      if (!idempotencyReads(m, ctx) || keyRefused(ctx)) return count(ctx);
      return requestFingerprint(ctx, m).then((f) => (f === undefined ? BODY_UNREADABLE : count(ctx)));
    },
  };
}

/** Whether the idempotency check judges this request (and so reads its body): a watched write from its sensitivity up. */
function idempotencyReads(m: Monitors, ctx: RequestContext): boolean {
  const i = m.idempotency;
  return i.mode !== 'off' && watched(m, ctx) && BODY_METHODS.has(ctx.req.method ?? '') && SENSITIVITY_RANK[ctx.operation!.sensitivity] >= i.atRank;
}

/** The idempotency check's refusal of a write without a usable key, which needs no body; undefined when the key is usable. */
function keyMissing(i: Monitors['idempotency'], ctx: RequestContext): Denial | undefined {
  const raw = headerOf(ctx.req, i.header);
  if (typeof raw === 'string' && /^[\x21-\x7e]{1,255}$/.test(raw)) return undefined;
  return { reason: 'idempotency-key-required', detail: `send one ${i.header} header of 1 to 255 visible characters with this write` };
}

/**
 * For the rules in force, whether the idempotency check will refuse a request, enforced, for its key alone: the
 * checks before it then leave its body unread, so that the refusal comes instead of a
 * `100 Continue` and an upload that nobody reads (README, What the caller sees).
 */
function keyRefusal(rules: Rules): (ctx: RequestContext) => boolean {
  const m = configOf(rules).monitors;
  if (rules.proxy.mode !== 'enforce' || m.idempotency.mode !== 'enforce') return () => false;
  return (ctx) => idempotencyReads(m, ctx) && keyMissing(m.idempotency, ctx) !== undefined;
}

/** Idempotency-Key on sensitive writes; reused keys and duplicates refused. Last: it reserves the key. */
export function idempotency(rules: Rules, state: LifecycleState | undefined): Check | undefined {
  if (!state) return undefined;
  const m = configOf(rules).monitors;
  const i = m.idempotency;
  if (i.mode === 'off') return undefined;
  return {
    name: 'idempotency',
    once: true,
    async run(ctx) {
      if (!idempotencyReads(m, ctx)) return undefined;
      const missing = keyMissing(i, ctx);
      if (missing) return verdict(ctx, i.mode, missing);
      const raw = headerOf(ctx.req, i.header) as string;
      const fingerprint = await requestFingerprint(ctx, m);
      if (fingerprint === undefined) return BODY_UNREADABLE;
      // Hashed, like the fingerprint: 44 characters whatever the subject's and key's length.
      const who = holder(ctx);
      const owner = writer(ctx);
      const key = hash('sha256', `${who}\n${raw}`, 'base64');
      const seen = state.monitors.keys.get(key);
      // Ended after the clock's reading: it stepped back (fromNow). Its window counts from that reading.
      const current = state.now();
      if (seen && !seen.inFlight && seen.atMs > current) seen.atMs = current;
      if (seen && (seen.inFlight || seen.atMs > ctx.now - i.windowMs)) {
        if (seen.payload !== fingerprint && !sameUnderAnotherLimit(seen, ctx, m.maxBodyBytes)) {
          return verdict(ctx, i.mode, { reason: 'idempotency-key-reused', detail: 'this idempotency key was used for a different request' });
        }
        return verdict(ctx, i.mode, { reason: 'duplicate-write', detail: seen.inFlight ? 'the same write with this idempotency key is still in flight' : 'the same write with this idempotency key was already sent' });
      }
      state.monitors.rememberKey(key, { payload: fingerprint, operation: ctx.operation!.id, bodySize: declaredSize(ctx.req), maxBodyBytes: m.maxBodyBytes, inFlight: true, atMs: ctx.now }, owner, i.maxKeysPerConsumer);
      state.reserved.set(ctx, key);
      return undefined;
    },
  };
}
