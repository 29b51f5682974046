// Credential lifecycle and behaviour monitors: task binding, revocation, delegation,
// retries, duplicate writes, traversal, quarantine. (Issue 6.)
//
// The feature keeps its state in `deps.lifecycle` (it survives reloads); its checks are
// placed in the pipeline by proxy/pipeline/checks.ts; its observer counts every decision
// per consumer (owner view, quarantine) and completes idempotency keys when a write ends;
// `attach` adds the admin endpoints (proxy/lifecycle/admin.ts).

import type { ConsumerKind, Rules } from '../rules/types.ts';
import { RulesError, problemInFile, type RulesProblem } from '../rules/load.ts';
import type { Feature, Log } from '../features.ts';
import type { Observation, Observer } from '../observe.ts';
import type { Decision, RequestContext } from '../pipeline/types.ts';
import { neverSent, type ForwardOutcome } from '../forward/outcome.ts';
import { LifecycleState } from './state.ts';
import { Journal, probeDirectory, readJournal, replay } from './journal.ts';
import { unitsOfAll, type Revocation } from './revocations.ts';
import { dirname } from 'node:path';
import { ListSource, checkListFile, listUrlProblem } from './lists.ts';
import { configOf, type RevocationConfig } from './config.ts';
import { adminRoutes, sayRefusedAtStop } from './admin.ts';
import { forgetDenials, fromNow, quarantineMode, recordDenial, type ConsumerState } from './monitors.ts';
import type { Monitored } from './state.ts';
import { REVOKED_ACTOR, WOULD_DENY, countForwarded, forgetNotes, forwardedRepeat, holding, quarantineOf } from './checks.ts';
import { actorIssuers, resolveConsumer, subjectKind } from '../checks/consumers.ts';
import { declaredVersion } from '../checks/contract.ts';
import { lruFill } from '../lib/heap.ts';

type ListKind = 'file' | 'url';
const LIST_KINDS: readonly ListKind[] = ['file', 'url'];
/** How often open WebSocket tunnels are checked against revocations and quarantines. */
const TUNNEL_SWEEP_MS = 1_000;

/** Where the rules say a list of this kind is, if anywhere. */
function locationOf(c: RevocationConfig, kind: ListKind): string | undefined {
  return kind === 'file' ? c.file : c.url;
}

export { LifecycleState } from './state.ts';

export interface LifecycleOptions {
  /** Clock in epoch ms (tests freeze it; requests use the server's own clock reading). */
  readonly now?: () => number;
}

/**
 * Upstream answers that say a request was not acted on, to retry later: 408 Request Timeout,
 * 425 Too Early, 429 Too Many Requests, 503 Service Unavailable (RFC 9110, RFC 6585, RFC 8470).
 * Not 500, 502 or 504: the write may have been done, as Stripe keeps a key after a 500.
 */
const NOT_PROCESSED = new Set([408, 425, 429, 503]);

/**
 * Denials that do not count towards a consumer's quarantine: not its behaviour (driftguard's or
 * its dependencies' failures, the quarantine itself), or another party's: an actor the consumer
 * never allowed to act for it, or a chain too deep, must not get it locked out (nor a revoked
 * actor: REVOKED_ACTOR, below).
 */
const NOT_BEHAVIOUR = new Set(['consumer-quarantined', 'internal-error', 'identity-unavailable', 'revocation-list-unavailable', 'actor-not-allowed', 'delegation-too-deep']);

/** The lifecycle settings read once, at start (the journal, the tables' bounds), by their rules field. */
function startOnly(c: LifecycleState['config']): Record<string, unknown> {
  return {
    'revocation.journal': c.revocation.journal,
    'monitors.maxConsumers': c.monitors.maxConsumers,
    'monitors.retryStorm.maxFingerprints': c.monitors.retryStorm.maxFingerprints,
    'monitors.idempotency.maxKeys': c.monitors.idempotency.maxKeys,
    'monitors.quarantine.maxQuarantined': c.monitors.quarantine.maxQuarantined,
  };
}

/**
 * The lifecycle's files as start-up reads them, read without starting anything or changing
 * them: the revocation list file's entries and the journal (a file that is no journal). Throws
 * a RulesError naming each. `driftguard check` calls it, so that it refuses what `run` would.
 */
export function checkLifecycleFiles(rules: Rules, now: number): void {
  const r = configOf(rules).revocation;
  const problems: RulesProblem[] = [];
  // The journal read once: checked, and what its revocations in force take (the list's room).
  let journalUnits = 0;
  if (r.journal !== undefined) {
    const read = readJournalAt(rules, r.journal);
    if ('problem' in read) problems.push(read.problem);
    else journalUnits = unitsOfAll(read.live.filter((j) => j.endMs > now));
  }
  if (r.file !== undefined) {
    try { checkListFile(r.file, now, r.maxEntries, journalUnits); } catch (err) { if (err instanceof RulesError) problems.push(...err.problems); else throw err; }
  }
  if (problems.length > 0) throw new RulesError(problems);
}

/**
 * `journal` read as the journal of `rules`: its revocations, or what is wrong with it (a file
 * that is no journal), at its field. `writable`: also whether a start could write it, which only the pod's own filesystem
 * can say (a reload's check; not `driftguard check`, run elsewhere): a start rewrites the
 * journal beside itself and takes its lock there, so its directory must take new files.
 */
function readJournalAt(rules: Rules, journal: string, writable = false): { readonly problem: RulesProblem } | { readonly live: Revocation[] } {
  let live: Revocation[];
  try { ({ live } = readJournal(journal)); } catch (err) { return { problem: problemInFile(rules.source, ['revocation', 'journal'], (err as Error).message) }; }
  if (writable) {
    try { probeDirectory(dirname(journal)); } catch (err) { return { problem: problemInFile(rules.source, ['revocation', 'journal'], cannotBeWritten(err)) }; }
  }
  return { live };
}

/** The problem a journal start-up cannot open says, and a reload that names one. */
function cannotBeWritten(err: unknown): string {
  return `cannot be written: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
}

export async function lifecycle(rules: Rules, log: Log, options: LifecycleOptions = {}): Promise<Feature> {
  const now = options.now ?? Date.now;
  const state = new LifecycleState(rules, now);
  const config = state.config;

  const atStart: Record<string, unknown> = startOnly(config);

  // Admin API revocations: replay the journal, report what could not be read, compact.
  let journal: Journal | undefined;
  if (config.revocation.journal !== undefined) {
    let replayed: ReturnType<typeof replay>;
    try {
      replayed = replay(config.revocation.journal, now());
    } catch (err) {
      // Start-up stops at the field, as for any problem of the rules.
      throw new RulesError([problemInFile(rules.source, ['revocation', 'journal'], (err as Error).message)]);
    }
    for (const s of replayed.skipped) log({ level: 'warn', msg: 'revocation journal line skipped', journal: config.revocation.journal, line: s.line, problem: s.problem });
    for (const r of replayed.revocations) state.revocations.add(r);
    try {
      journal = new Journal(config.revocation.journal, replayed.revocations);
    } catch (err) {
      throw new RulesError([problemInFile(rules.source, ['revocation', 'journal'], cannotBeWritten(err))]);
    }
    if (replayed.revocations.length) {
      const units = unitsOfAll(replayed.revocations);
      log({ level: 'info', msg: 'revocations replayed from the journal', journal: journal.file, revocations: replayed.revocations.length, units });
      // Written by a version that counted each revocation once: kept, since lifting any would
      // let revoked tokens back in; they end by themselves.
      if (units > config.revocation.maxEntries) log({ level: 'warn', msg: 'the journal\'s revocations take more than revocation.maxEntries (an admin revocation takes about one per KiB of heap): admin writes are refused (507), and a revocation list needs room, until enough of them end', journal: journal.file, units, maxEntries: config.revocation.maxEntries });
    }
  } else {
    log({ level: 'info', msg: 'no revocation.journal: admin API revocations last until the process ends' });
  }

  // The list sources in force, and the settings each was started with. The array is shared
  // with the admin API and the readiness check, so a reload that changes a source replaces
  // it in place.
  const sources: ListSource[] = [];
  const settings = new Map<ListSource, string>();
  const settingsOf = (c: RevocationConfig, kind: ListKind) => {
    const location = locationOf(c, kind);
    return location === undefined ? undefined : JSON.stringify([location, c.intervalMs, c.timeoutMs, c.maxEntries]);
  };
  async function startSource(c: RevocationConfig, kind: ListKind): Promise<ListSource> {
    const s = new ListSource(kind, locationOf(c, kind)!, state.revocations, { log, now, timeoutMs: c.timeoutMs, maxEntries: c.maxEntries, mode: () => state.config.revocation.mode });
    // A file must be valid (a RulesError otherwise); a URL that fails is reported and retried every interval.
    await s.start(c.intervalMs);
    settings.set(s, settingsOf(c, kind)!);
    return s;
  }
  try {
    for (const kind of LIST_KINDS) if (settingsOf(config.revocation, kind) !== undefined) sources.push(await startSource(config.revocation, kind));
  } catch (err) {
    for (const s of sources) s.close();
    journal?.close();
    throw err;
  }

  const observer: Observer = {
    begin(ctx: RequestContext): Observation {
      let decision: Decision | undefined;
      // The fingerprint times it was counted in, until its forward's outcome says whether it stays.
      let repeated: number[] | undefined;
      return {
        upstreamHeaders() {}, responseHeaders() {}, forwarding() {},
        decided(d) {
          decision = d;
          forgetNotes(ctx);
          // A request the decision lets through (allowed, warned, or a would-deny) counts in
          // the monitors' windows; one it refuses does not.
          if (d.decision === 'deny' && d.enforced) state.counts.delete(ctx);
          else repeated = countForwarded(state, ctx);
          observe(ctx, d);
        },
        answering(status: number) {
          // The upstream answered that it did not process the write (NOT_PROCESSED): its key
          // may be used again at once, as the client sees the status (a client retrying a 503
          // before its body has ended was a duplicate-write), so that the retry the answer asks
          // for goes through and a short outage does not turn retries into a quarantine.
          if (NOT_PROCESSED.has(status)) release(ctx);
        },
        forwarded(outcome: ForwardOutcome) {
          if (repeated) { forwardedRepeat(repeated, ctx.now, outcome); repeated = undefined; }
          // The write never reached the upstream: its key may be used again at once. After a
          // reset, an answer cut short, or any answer but NOT_PROCESSED's, the upstream may have
          // acted on it: the key stays, and a retry is a duplicate-write, whose action says to
          // read the resource's state first.
          if (neverSent(outcome)) release(ctx);
        },
        end() {
          const key = state.reserved.get(ctx);
          if (key === undefined) return;
          state.reserved.delete(ctx);
          const entry = state.monitors.keys.get(key);
          if (!entry) return;
          if (decision?.decision === 'deny' && decision.enforced) { state.monitors.keys.delete(key); return; }
          entry.inFlight = false;
          entry.atMs = now();
        },
      };
    },
  };

  /**
   * After a reload: a list source whose location, interval or timeout changed is replaced,
   * and one the rules dropped is closed with its entries lifted. A new list file that cannot
   * be read leaves the old source in force (reported); a URL is switched at once, since a
   * failing URL keeps the entries it had anyway.
   */
  let following = Promise.resolve();
  let sweeper: NodeJS.Timeout | undefined;
  function followLists(): Promise<void> {
    following = following.then(async () => {
      const c = state.config.revocation;
      for (const kind of LIST_KINDS) {
        const current = sources.find((s) => s.kind === kind);
        const wanted = settingsOf(c, kind);
        if (current && settings.get(current) === wanted) continue;
        if (!current && wanted === undefined) continue;
        if (kind === 'url' && current) retire(current);
        if (wanted !== undefined) {
          try {
            const next = await startSource(c, kind);
            sources.push(next);
          } catch (err) {
            log({ level: 'error', msg: 'revocation list not changed by the reload: the new list cannot be read; the previous one stays in force', kind, error: (err as Error).message });
            continue;
          }
        }
        if (current && kind === 'file') retire(current);
        if (wanted === undefined && current) state.revocations.dropSource(kind);
        log({ level: 'info', msg: wanted === undefined ? 'revocation list removed by the reload; its revocations are lifted' : 'revocation list changed by the reload', kind });
      }
    }).catch((err: Error) => log({ level: 'error', msg: 'revocation lists could not follow the reload', error: err.message }));
    return following;
  }

  /** Stop a source (its entries stay until its successor's list, or the caller, replaces them). */
  function retire(s: ListSource): void {
    s.close();
    settings.delete(s);
    sources.splice(sources.indexOf(s), 1);
  }

  function release(ctx: RequestContext): void {
    const key = state.reserved.get(ctx);
    if (key === undefined) return;
    state.reserved.delete(ctx);
    state.monitors.keys.delete(key);
  }

  function observe(ctx: RequestContext, d: Decision): void {
    const c = ctx.consumer;
    if (!c) return;
    // Under its name now: a reload may have renamed it while this request was decided.
    const key = state.consumerKey(ctx)!;
    const m = state.monitors;
    const s = m.consumer(key, subjectKind(c), c.owner, ctx.now, ctx.credential);
    const declared = ctx.declaredContract ?? declaredVersion(ctx);
    if (declared !== undefined) m.sawContract(s, declared);
    // Both kinds of would-deny count as one (README): proxy.mode audit's (a deny, not
    // enforced) and a feature's in audit mode (a warning, named in lifecycle.would_deny), also
    // when it is the decision's own reason.
    const audited = ctx.extra[WOULD_DENY] as readonly string[] | undefined;
    const wouldDeny = (d.decision === 'deny' && !d.enforced) || (d.decision === 'warn' && audited?.includes(d.reason) === true);
    m.count(s, wouldDeny ? 'would-deny' : d.decision, d.reason);
    if (audited) for (const reason of audited) if (reason !== d.reason) m.count(s, 'would-deny', reason);
    // A revoked actor's refusal is the actor's doing; in revocation's audit mode the actor is
    // recorded and another check may refuse the call: that refusal is the consumer's own.
    if (d.decision !== 'deny' || NOT_BEHAVIOUR.has(d.reason) || (d.reason === 'credential-revoked' && ctx.extra[REVOKED_ACTOR] !== undefined)) return;
    const q = state.config.monitors.quarantine;
    if (q.mode === 'off' || !state.config.monitors.kinds.has(c.kind)) return;
    // An automation acting for a person: its denials are its own (its quarantine then refuses
    // every token that names it), not the person's.
    const p = state.monitored(ctx)!;
    quarantineOnDenials(p.key === key ? s : m.consumer(p.key, p.kind, p.owner, ctx.now, p.origin), p, c.kind, ctx.now, d);
  }

  /**
   * Count a denial of the party kept under `p.key`; enough of them within the window quarantine
   * it, for `watched`, the kind of the calls that placed it (monitors.kinds).
   */
  function quarantineOnDenials(s: ConsumerState, p: Monitored, watched: ConsumerKind, at: number, d: Decision): void {
    const m = state.monitors;
    const q = state.config.monitors.quarantine;
    const key = p.key;
    // Held already: no count. But an audit quarantine left from before a reload to enforce
    // (placed by would-denies, which the reload does not turn into refusals) must not shield
    // the consumer from its enforced denials since: those count, and enough of them place an
    // enforced quarantine over it.
    // One that holds: placed for a kind no longer watched, it holds nobody, and must not keep
    // a new one from being placed.
    const held = holding(m.quarantine(key, at), state.config.monitors.kinds);
    if (held && (held.mode === 'enforce' || q.mode !== 'enforce' || !d.enforced)) return;
    fromNow(s.denials, now());
    if (recordDenial(s, at, d.reason, d.enforced, q.windowMs, q.denials)) m.grew(s);
    if (s.denials.length < q.denials) return;
    // The reasons of the denials counted, most recent last, each once.
    const reasons = [...new Set(s.denialReasons.toReversed())].toReversed();
    // Placed in part by would-denies (proxy.mode audit), a quarantine is an audit one: those
    // were not enforced, and a reload to enforce must not turn it into refusals.
    const mode = q.mode === 'enforce' && s.denialsEnforced.every(Boolean) ? 'enforce' : 'audit';
    m.quarantineFor(key, { kind: watched, sinceMs: at, untilMs: at + q.periodMs, mode, reasons, origin: p.origin });
    // The denials counted in the window (at least monitors.quarantine.denials) and their reasons, as GET /quarantine shows them.
    const denials = s.denials.length;
    forgetDenials(s);
    log({ level: 'warn', msg: mode === 'enforce' ? 'consumer quarantined' : 'consumer would be quarantined (audit)', consumer: key, ...(p.owner !== undefined ? { owner: p.owner } : {}), until: new Date(at + q.periodMs).toISOString(), denials, reasons });
  }

  return {
    observer,
    deps: { lifecycle: state },
    attach(dg) {
      const m = state.monitors;
      dg.tables.set('consumers', () => lruFill(m.consumers));
      dg.tables.set('fingerprints', () => lruFill(m.fingerprints));
      dg.tables.set('idempotency_keys', () => lruFill(m.keys));
      dg.tables.set('quarantines', () => lruFill(m.quarantined));
      // In force only (ended ones are dropped lazily), and at most 1 when a reload lowered the bound.
      dg.tables.set('revocations', () => {
        const entries = state.revocations.prune(state.now());
        // Filled by units: an admin revocation takes one per KiB it holds (unitsOf).
        return { entries, fill: Math.min(1, state.revocations.units(state.now()) / state.config.revocation.maxEntries) };
      });
      // A new list file must be readable before the reload is taken (checkListFile), and a new
      // journal must be one, as start-up requires: it takes effect at the next start, which a
      // reload that took it would leave to fail, on every pod, long after the edit.
      dg.onPrepare(async (next) => {
        const c = configOf(next).revocation;
        const current = sources.find((s) => s.kind === 'file');
        if (c.file !== undefined && (!current || settings.get(current) !== settingsOf(c, 'file'))) {
          // Refused for the list's content: the reloader watches the list too (RulesError.files),
          // so that the rules load once it is written right, as when it was missing.
          // Weighed beside what the other sources take now (the admin API's, a URL list's), as
          // the list source will when it applies it: taken otherwise, the reload left the
          // previous list in force, and what only the new one revokes went on being forwarded.
          try { checkListFile(c.file, now(), c.maxEntries, state.revocations.unitsBeside('file', now())); } catch (err) { throw err instanceof RulesError ? new RulesError(err.problems, { files: [c.file] }) : err; }
        }
        // A list URL the reload names anew, or turns enforce on for, with no list read from a
        // URL to stay in force meanwhile: enforced unread, it would refuse every credential, on
        // every pod the reload reaches. Read first, as a new issuer's keys are; refused while it
        // cannot be, and tried again (transient) until it can or the file changes.
        const url = sources.find((s) => s.kind === 'url');
        const anew = !url || settings.get(url) !== settingsOf(c, 'url') || state.config.revocation.mode !== 'enforce';
        if (c.mode === 'enforce' && c.url !== undefined && anew && url?.status.lastSuccessAt === undefined) {
          const problem = await listUrlProblem(c.url, c.timeoutMs, c.maxEntries, now());
          if (problem !== undefined) throw new RulesError([problemInFile(next.source, ['revocation', 'url'], `the revocation list cannot be read (${problem}): taken unread, every request with a credential would be refused until it is; the reload is tried again`)], { transient: true });
          // The same source, unread so far (audit turned to enforce): read by it now, so that the
          // rules taken do not find it unread. Reading the URL it already reads changes nothing else.
          if (url && settings.get(url) === settingsOf(c, 'url')) await url.refresh();
        }
        const journal = c.journal !== undefined && c.journal !== config.revocation.journal ? readJournalAt(next, c.journal, true) : undefined;
        if (journal !== undefined && 'problem' in journal) throw new RulesError([journal.problem]);
      });
      // Settings follow the rules in force: a reload that is rejected changes nothing here.
      dg.onSwap((g) => {
        const before = new Set(state.rules.identity.issuers.map((i) => i.issuer));
        state.use(g.rules);
        // Consumers the new rules name otherwise keep their state and quarantine. Those of an
        // issuer trusted no longer, or of a subject now registered to another issuer, are
        // nobody's (dropped); an actor's issuer need not be trusted at all (act.iss), and stays.
        const trusted = new Set(g.rules.identity.issuers.map((i) => i.issuer));
        const { moved, dropped, lifted } = state.monitors.rekey((o) => before.has(o.issuer) && !trusted.has(o.issuer) ? undefined : resolveConsumer(g.rules, o)?.key, state.now());
        if (moved > 0) log({ level: 'info', msg: 'consumer state kept under the names the reload gives', entries: moved, rules: g.rules.hash });
        // A quarantine lifted by a reload is said, not silent: re-trusting the issuer does not restore it.
        if (dropped + lifted > 0) log({ level: 'warn', msg: 'consumer state dropped by the reload: its issuer is no longer trusted, or its subject is registered to another', consumers: dropped, quarantinesLifted: lifted, rules: g.rules.hash });
        void followLists();
        // The journal and the tables are built once, at start: a reload that changes them is
        // taken for everything else, and says so, rather than let an operator believe it took.
        const changed = Object.entries(startOnly(state.config)).filter(([k, v]) => v !== atStart[k]).map(([k]) => k);
        if (changed.length) log({ level: 'warn', msg: 'lifecycle settings changed by the reload take effect at the next restart; the ones from start-up stay in force', fields: changed, rules: g.rules.hash });
      });
      adminRoutes(dg.routes, { state, log, ...(journal ? { journal } : {}), sources, rules: () => dg.generation.rules });
      // A WebSocket tunnel is decided at its handshake, a streamed answer at its request: once a
      // second, close the open ones whose credential has since been revoked or whose consumer
      // is quarantined (enforced modes only, proxy.mode's too), so that a revocation cuts a
      // stream off as it refuses a request.
      sweeper = setInterval(() => {
        // proxy.mode audit: a new handshake of the same consumer is forwarded as a would-deny,
        // so an open tunnel stays too.
        if (dg.generation.rules.proxy.mode !== 'enforce') return;
        const now = state.now();
        const { revocation: r, credentials, monitors } = state.config;
        const closed = dg.closeFor((ctx) => {
          const c = ctx.credential;
          if (!c) return undefined;
          if (r.mode === 'enforce' && state.revocations.match(c, credentials.taskClaim, now, (actor, i) => actorIssuers(state.rules, c, actor, i))) return 'credential-revoked';
          const key = state.consumerKey(ctx);
          const held = key !== undefined && monitors.quarantine.mode !== 'off' ? quarantineOf(state, key, c, monitors.quarantine.mode, now, monitors.kinds)?.held : undefined;
          // With its Retry-After, as the quarantine check's refusal has it: a request withdrawn
          // while it waited for a connection is told how long to wait, as its next one would be.
          return held !== undefined && quarantineMode(monitors.quarantine.mode, held) === 'enforce' ? { reason: 'consumer-quarantined', retryAfter: Math.max(1, Math.ceil((held.untilMs - now) / 1000)) } : undefined;
        });
        if (closed.tunnels + closed.answers > 0) log({ level: 'info', msg: 'WebSocket tunnels and answers in flight closed: their credential was revoked or their consumer quarantined', ...closed });
      }, TUNNEL_SWEEP_MS).unref();
      // Not ready until a list from the revocation list URL has been applied once: a sidecar
      // that took traffic before knowing what is revoked would let revoked tokens through. The
      // store says so, not the source: a reload to a new URL that fails keeps the list read
      // before in force, and the pod serves with it (a new source has never succeeded).
      // Only where the list refuses: under `audit` or `off` every request is decided without
      // it, and a list server that is down kept every pod out of its Service.
      dg.addReadinessCheck(() => state.config.revocation.mode === 'enforce' && state.revocations.unread ? 'revocation list URL not fetched yet' : undefined);
    },
    async shutdown() {
      clearInterval(sweeper);
      sayRefusedAtStop(state, log);
      for (const s of sources) s.close();
      journal?.close();
    },
  };
}
