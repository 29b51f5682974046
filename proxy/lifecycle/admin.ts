// Admin endpoints of the lifecycle feature, on the admin listener:
//   GET    /revocations            revocations in force, and the state of each source
//   POST   /revocations            { kind, value, reason, end? } -> 201 the revocation (journaled);
//                                  200 the one in force when it is a retry of the same kind and value
//   DELETE /revocations/{id}       lift an admin API revocation
//   GET    /quarantine             consumers in quarantine
//   DELETE /quarantine/{subject}   lift a quarantine early (subject URL-encoded)
//   DELETE /quarantine?key=K       the same for a subject past 128 characters, by its listed key
//   GET    /consumers              the owner view: every known consumer and what it has been doing
// Writes need `Authorization: Bearer <admin credential>` from revocation.adminCredentialFile,
// compared in constant time; without that file, writes are accepted from loopback clients
// only. Each write is logged with who made it (credential name or line, never the secret).

import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { fromWebPage, loopbackOnly, refusedFromWebPage, type AdminRoutes } from '../admin/server.ts';
import type { ConsumerKind, Rules } from '../rules/types.ts';
import type { Quarantine } from './monitors.ts';
import type { Log } from '../features.ts';
import { parseTime } from '../rules/durations.ts';
import { malformedCredentialLines, parseAdminCredentials, type AdminCredential } from './config.ts';
import { isRevocationKind, matchedValue, revocationView, subjectKey, unitsOf, REVOCATION_KINDS, type Revocation } from './revocations.ts';
import { issuerSubjectKey, issuerSubjectOf } from '../checks/consumers.ts';
import type { Journal } from './journal.ts';
import type { ListSource } from './lists.ts';
import type { LifecycleState } from './state.ts';
import { boundedText } from '../lib/bounded.ts';
import { holdsToken, redactPath, redactText } from '../lib/redact.ts';
import { decodeJwt, decodeProtectedHeader } from 'jose';
import { readRegularFile } from '../lib/files.ts';

const MAX_BODY = 16 * 1024;
/**
 * The longest value a revocation may name: identity accepts a sub of any length, a SPIFFE ID
 * may be 2048 bytes, and the ["<issuer>","<subject>"] form /consumers shows adds the issuer.
 * 1024 left such a consumer unrevocable; the body limit bounds it anyway.
 */
const MAX_VALUE = 4096;

/**
 * What a pasted token names that a revocation takes (its jti, sub and kid), read without
 * checking its signature: only to tell the operator what to revoke, never to revoke it.
 */
function namedBy(value: string): string {
  const compact = value.trim().replace(/^bearer\s+/i, '');
  const quote = (v: unknown) => typeof v === 'string' && v !== '' && v.length <= 256 && !holdsToken(v) ? JSON.stringify(v) : undefined;
  const named: string[] = [];
  try {
    const claims = decodeJwt(compact);
    const jti = quote(claims.jti);
    const sub = quote(claims.sub);
    if (jti) named.push(`kind jti, value ${jti}`);
    if (sub) named.push(`kind subject, value ${sub}`);
  } catch { /* not one token alone: the generic advice */ }
  try {
    const kid = quote(decodeProtectedHeader(compact).kid);
    if (kid) named.push(`kind kid, value ${kid} (every token its key signed)`);
  } catch { /* as above */ }
  return named.length ? `: ${named.join('; or ')}` : ' (its jti, its subject or its key id)';
}

export interface AdminContext {
  readonly state: LifecycleState;
  readonly log: Log;
  readonly journal?: Journal;
  readonly sources: readonly ListSource[];
  readonly rules: () => Rules;
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** When each unusable credential file (or its skipped lines) was last reported: at most once a minute, whatever the rate of writes. */
const reported = new Map<string, number>();

function unusable(ctx: AdminContext, file: string, why: string): void {
  const now = Date.now();
  const key = `${file}\n${why}`;
  if ((reported.get(key) ?? -Infinity) > now - 60_000) return;
  reported.set(key, now);
  ctx.log({ level: 'warn', msg: 'the admin credential file is unusable: every admin write is refused', file, problem: why });
}

function skippedLines(ctx: AdminContext, problem: string): void {
  const now = Date.now();
  if ((reported.get(problem) ?? -Infinity) > now - 60_000) return;
  reported.set(problem, now);
  ctx.log({ level: 'warn', msg: 'admin credential file lines skipped: no write can use them', problem });
}

/** Refused admin writes not yet said, by lifecycle state: how many, by credential sent, the latest, and when a line last said them. */
interface Refusals { count: number; credentials: Record<string, number>; latest?: Record<string, unknown>; at: number; timer?: NodeJS.Timeout }
const refusals = new WeakMap<LifecycleState, Refusals>();
const REFUSED_LINE_MS = 60_000;

/**
 * A refused admin write, said in a warn line at most once a minute (the first at once, the rest
 * when the minute ends), with how many, by the credential sent (`none`, `not recognised`, `from
 * a web page`: never what was sent): guesses at the admin secret, or the app trying to lift a
 * revocation of its own, are otherwise invisible.
 */
function refusedWrite(ctx: AdminContext, req: IncomingMessage, status: number): void {
  let r = refusals.get(ctx.state);
  if (!r) refusals.set(ctx.state, r = { count: 0, credentials: {}, at: -Infinity });
  const credential = fromWebPage(req) ? 'from a web page' : req.headers.authorization === undefined ? 'none' : 'not recognised';
  r.count++;
  r.credentials[credential] = (r.credentials[credential] ?? 0) + 1;
  r.latest = { method: req.method, path: redactPath(new URL(req.url ?? '/', 'http://admin.invalid').pathname), status };
  const since = performance.now() - r.at;
  if (since >= REFUSED_LINE_MS) { sayRefused(ctx, r); return; }
  const held = r;
  held.timer ??= setTimeout(() => { held.timer = undefined; if (held.count > 0) sayRefused(ctx, held); }, REFUSED_LINE_MS - since).unref();
}

/** At shutdown: the minute's refusals not yet said are said now, and no timer outlives the lifecycle. */
export function sayRefusedAtStop(state: LifecycleState, log: Log): void {
  const r = refusals.get(state);
  if (!r) return;
  clearTimeout(r.timer);
  r.timer = undefined;
  if (r.count > 0) sayRefused({ log }, r);
}

function sayRefused(ctx: Pick<AdminContext, 'log'>, r: Refusals): void {
  ctx.log({ level: 'warn', msg: 'admin writes refused', ...r.latest, refused: r.count, credentials: r.credentials });
  r.count = 0;
  r.credentials = {};
  r.at = performance.now();
}

/** Who is writing, or undefined (the response is already sent, and the refusal counted). */
export function authorize(ctx: AdminContext, req: IncomingMessage, res: ServerResponse, routes: AdminRoutes): string | undefined {
  const who = writer(ctx, req, res, routes);
  if (who === undefined) refusedWrite(ctx, req, res.statusCode);
  return who;
}

function writer(ctx: AdminContext, req: IncomingMessage, res: ServerResponse, routes: AdminRoutes): string | undefined {
  const file = ctx.state.config.revocation.adminCredentialFile;
  if (file === undefined) return loopbackOnly(req, res, routes);
  if (refusedFromWebPage(req, res, routes)) return undefined;
  const m = /^Bearer +(\S+) *$/i.exec(req.headers.authorization ?? '');
  let credentials: AdminCredential[];
  try {
    const parsed = parseAdminCredentials(readRegularFile(file).toString('utf8'));
    credentials = parsed.credentials;
    // Rewritten since the rules were loaded (which refuses such a line): the others still work.
    const wrong = malformedCredentialLines(file, parsed);
    if (wrong !== undefined) skippedLines(ctx, wrong);
  } catch (err) {
    credentials = [];
    unusable(ctx, file, `cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  // Still closed (every write is 401), but an operator is told why rather than left to doubt the token.
  if (credentials.length === 0) unusable(ctx, file, 'holds no credential');
  if (m) {
    // Hash both sides so the comparison is of equal lengths, and look at every credential.
    const presented = sha256(m[1]!);
    let who: string | undefined;
    for (const c of credentials) {
      const digest = sha256(c.secret);
      // Unnamed: its line, not a hash of it. GET /revocations lists who wrote each, and needs no
      // credential: an unsalted hash let anyone there test guesses at a weak secret offline.
      if (timingSafeEqual(presented, digest) && who === undefined) who = c.name || `credential on line ${c.line}`;
    }
    if (who !== undefined) return who;
  }
  // Missing and not recognised told apart: an operator who sent the file's whole `name secret`
  // line (two words), or last month's secret, is told to look at what was sent.
  const sent = req.headers.authorization !== undefined;
  res.setHeader('www-authenticate', sent ? 'Bearer realm="driftguard-admin", error="invalid_token"' : 'Bearer realm="driftguard-admin"');
  routes.problem(res, 401, 'Unauthorized', sent
    ? 'the admin credential was not recognised: send `Bearer <secret>`, the secret of one line of revocation.adminCredentialFile (the word after the name, if the line has one)'
    : 'admin writes need a bearer admin credential');
  return undefined;
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  // text/plain is what a page may send cross-origin without a preflight: JSON only.
  if (!/^application\/json\s*(;|$)/i.test(req.headers['content-type'] ?? '')) throw new UnsupportedMediaType();
  const text = await boundedText(req, MAX_BODY, () => new TypeError(`body larger than ${MAX_BODY} bytes`));
  try { return JSON.parse(text); } catch { throw new TypeError('body is not JSON'); }
}

/** The fields of a revocation the API takes. */
const REVOCATION_FIELDS = new Set(['kind', 'value', 'reason', 'end']);

class UnsupportedMediaType extends TypeError {
  constructor() { super('the body must be sent as content-type: application/json'); }
}

export function adminRoutes(routes: AdminRoutes, ctx: AdminContext): void {
  const { state, log } = ctx;
  // Every admin write, the core's POST /reload too, needs the admin credential once a file holds one.
  routes.authorizeWrite = (req, res) => authorize(ctx, req, res, routes);

  /** After a write is in force: a journal mostly of lifted and ended records is rewritten. */
  function compactJournal(): void {
    try {
      const compacted = ctx.journal?.compactIfSparse(() => state.revocations.list(state.now()).filter((r) => r.source === 'admin'));
      if (compacted) log({ level: 'info', msg: 'revocation journal compacted', file: ctx.journal!.file, records: ctx.journal!.records });
    } catch (err) {
      log({ level: 'warn', msg: 'revocation journal not compacted; it goes on as it was', error: (err as Error).message });
    }
  }

  /** The admin revocation in force that names what `kind` and `value` name (a subject pair however spaced), if any. */
  function heldRevocation(kind: Revocation['kind'], value: string, now: number): Revocation | undefined {
    const wanted = matchedValue({ kind, value });
    return state.revocations.list(now).find((r) => r.source === 'admin' && r.kind === kind && matchedValue(r) === wanted);
  }

  /**
   * These lists take no parameter: a filter or limit an operator adds (?owner=, ?limit=) would
   * otherwise return the whole list as if filtered, so it is refused, as /decisions refuses an
   * unknown one. Answers 400 and returns true for a query with any parameter.
   */
  function refusedParameters(res: ServerResponse, url: URL): boolean {
    const name = url.searchParams.keys().next().value;
    if (name === undefined) return false;
    routes.problem(res, 400, 'Bad Request', `unknown parameter "${redactText(name)}" (GET ${url.pathname} takes no parameter)`);
    return true;
  }

  routes.add('GET', '/revocations', async (_req, res, url) => {
    if (refusedParameters(res, url)) return;
    const now = state.now();
    // Listed (and so pruned) first: ended revocations not yet dropped must not be counted.
    const revocations = state.revocations.list(now);
    const sources = {
      admin: { entries: state.revocations.countSource('admin'), journal: ctx.journal?.file ?? null },
      ...Object.fromEntries(ctx.sources.map((s) => [s.kind, s.status])),
    };
    // The mode says whether what is listed is refused: under audit or off it is only reported, or not even checked.
    await routes.jsonList(res, { mode: state.config.revocation.mode, sources }, 'revocations', revocations, revocationView);
  });

  routes.add('POST', '/revocations', async (req, res) => {
    const who = authorize(ctx, req, res, routes);
    if (who === undefined) { req.resume(); return; }
    let body: Record<string, unknown>;
    try { body = (await readJson(req)) as Record<string, unknown>; } catch (err) {
      if (err instanceof UnsupportedMediaType) { req.resume(); routes.problem(res, 415, 'Unsupported Media Type', err.message); } else {
        // The rest of a body past the limit is not read: the connection ends with the answer.
        if (!req.complete) res.setHeader('connection', 'close');
        routes.problem(res, 400, 'Bad Request', (err as Error).message);
      }
      return;
    }
    const now = state.now();
    const config = state.config;
    const problems: string[] = [];
    if (!body || typeof body !== 'object' || Array.isArray(body)) problems.push('the body must be a JSON object');
    // An unknown field is a mistake to say, not to ignore: a mistyped `End` left the default
    // end, and a subject's revocation lapsed after 12h1m (a revocation list refuses one too).
    const unknown = body && typeof body === 'object' && !Array.isArray(body) ? Object.keys(body).filter((k) => !REVOCATION_FIELDS.has(k)) : [];
    if (unknown.length) problems.push(`unknown field${unknown.length > 1 ? 's' : ''} ${unknown.slice(0, 5).map((k) => JSON.stringify(redactText(k).slice(0, 64))).join(', ')} (use kind, value, reason, end)`);
    const { kind, value, reason, end } = body ?? {};
    if (!isRevocationKind(kind)) problems.push(`kind must be one of ${REVOCATION_KINDS.join(', ')}`);
    if (typeof value !== 'string' || value === '' || value.length > MAX_VALUE) problems.push(`value must be a non-empty string (at most ${MAX_VALUE} characters)`);
    // An operator's reflex with a leaked token is to paste it: it matched nothing (a jti is the
    // claim, not the token), and the live token went into the log, the journal and the list.
    else if (holdsToken(value)) problems.push(`value holds a whole token, not a ${isRevocationKind(kind) ? kind : 'value'}: driftguard never stores a token. Revoke what it names instead${namedBy(value)}`);
    if (typeof reason !== 'string' || reason === '' || reason.length > 1024) problems.push('reason must be a non-empty string (at most 1024 characters)');
    // Told not to paste the token as the value, an operator pastes it as the evidence.
    else if (holdsToken(reason)) problems.push('reason holds a whole token: driftguard never stores a token. Say where it leaked instead (a ticket, a log)');
    let endMs = now + config.longestTokenMs;
    if (end !== undefined) {
      // A string only: String() read ["2099-01-01"] as the date inside it.
      if (typeof end !== 'string') problems.push('end must be a string: an ISO 8601 date or date-time with an offset');
      else try { endMs = parseTime(end); } catch (err) { problems.push(`end: ${(err as Error).message}`); }
      if (endMs <= now) problems.push('end must be in the future');
    }
    if (problems.length) { routes.problem(res, 400, 'Bad Request', problems.join('; ')); return; }
    // Each answer carries revocation.mode: under audit or off a 201 refuses nothing, and an
    // incident responder reading it must not believe the consumer is cut off.
    const mode = config.revocation.mode;
    const level = mode === 'enforce' ? 'info' : 'warn';
    // A retried POST (a script after a timeout) must not make a second revocation: lifting the
    // id the operator was given would then answer "lifted" and leave the credential refused.
    const held = heldRevocation(kind as Revocation['kind'], value as string, now);
    if (held) {
      if (endMs <= held.endMs) {
        log({ level, msg: 'revocation already in force', id: held.id, kind: held.kind, value: held.value, end: new Date(held.endMs).toISOString(), mode, by: who });
        routes.json(res, 200, { ...revocationView(held), mode });
        return;
      }
      const extended: Revocation = { ...held, endMs };
      // Journaled as an add of the same id, which replaces it at replay.
      try { ctx.journal?.append({ op: 'add', revocation: extended }); } catch (err) {
        log({ level: 'error', msg: 'revocation journal write failed; revocation not extended', error: (err as Error).message });
        routes.problem(res, 500, 'Internal Server Error', 'the revocation journal could not be written');
        return;
      }
      state.revocations.add(extended);
      compactJournal();
      log({ level, msg: 'revocation extended', id: held.id, kind: held.kind, value: held.value, end: new Date(endMs).toISOString(), was: new Date(held.endMs).toISOString(), mode, by: who });
      routes.json(res, 200, { ...revocationView(extended), mode });
      return;
    }
    const revocation: Revocation = { id: randomUUID(), kind: kind as Revocation['kind'], value: value as string, reason: reason as string, endMs, createdMs: now, source: 'admin', by: who };
    // Counted in force (ended revocations are dropped lazily and must not take the room), and
    // by the heap each holds: a revocation of more than 1 KiB takes a unit per KiB (unitsOf).
    const taken = state.revocations.units(now);
    const units = unitsOf(revocation);
    if (taken + units > config.revocation.maxEntries) {
      routes.problem(res, 507, 'Insufficient Storage', `the revocations in force take ${taken} of revocation.maxEntries (${config.revocation.maxEntries}), and this one ${units} (a revocation takes about one per KiB of heap it holds: its value, reason and name)`);
      return;
    }
    // Journal first: the API says "revoked" only once the revocation survives a crash.
    try { ctx.journal?.append({ op: 'add', revocation }); } catch (err) {
      log({ level: 'error', msg: 'revocation journal write failed; revocation not made', error: (err as Error).message });
      routes.problem(res, 500, 'Internal Server Error', 'the revocation journal could not be written');
      return;
    }
    state.revocations.add(revocation);
    compactJournal();
    log({ level, msg: 'revocation added', id: revocation.id, kind: revocation.kind, value: revocation.value, reason: revocation.reason, end: new Date(endMs).toISOString(), mode, by: who });
    routes.json(res, 201, { ...revocationView(revocation), mode });
  });

  routes.add('DELETE', /^\/revocations\/[^/]+$/, (req, res, url) => {
    const who = authorize(ctx, req, res, routes);
    if (who === undefined) { req.resume(); return; }
    let id: string;
    try { id = decodeURIComponent(url.pathname.slice('/revocations/'.length)); } catch { routes.problem(res, 400, 'Bad Request', 'id is not valid percent-encoding'); return; }
    // One that has ended is no longer in force (GET no longer lists it): there is nothing to lift.
    const r = state.revocations.get(id);
    if (!r || r.endMs <= state.now()) { routes.problem(res, 404, 'Not Found', `no revocation ${redactText(id)}`); return; }
    if (r.source !== 'admin') { routes.problem(res, 409, 'Conflict', `revocation ${id} comes from the revocation list ${r.source}; remove it there`); return; }
    try { ctx.journal?.append({ op: 'delete', id, by: who, at: state.now() }); } catch (err) {
      log({ level: 'error', msg: 'revocation journal write failed; revocation kept', error: (err as Error).message });
      routes.problem(res, 500, 'Internal Server Error', 'the revocation journal could not be written');
      return;
    }
    state.revocations.remove('admin', id);
    compactJournal();
    log({ level: 'info', msg: 'revocation lifted', id, kind: r.kind, value: r.value, by: who });
    routes.json(res, 200, { lifted: revocationView(r) });
  });

  routes.add('GET', '/quarantine', (_req, res, url) => {
    if (refusedParameters(res, url)) return;
    const now = state.now();
    const list = state.monitors.quarantines(now);
    routes.json(res, 200, { quarantined: list.map((q) => quarantineView(q, state.config.monitors.kinds)) });
  });

  // A long subject's quarantine, by the key GET /quarantine shows for it.
  routes.add('DELETE', '/quarantine', (req, res, url) => {
    const who = authorize(ctx, req, res, routes);
    if (who === undefined) { req.resume(); return; }
    const key = url.searchParams.get('key') ?? '';
    const q = state.monitors.liftKey(key, state.now());
    if (!q) { routes.problem(res, 404, 'Not Found', 'no quarantine has this key (?key= as GET /quarantine shows it)'); return; }
    log({ level: 'info', msg: 'quarantine lifted', consumer: q.subject, key, by: who });
    routes.json(res, 200, { lifted: quarantineView(q, state.config.monitors.kinds) });
  });

  routes.add('DELETE', /^\/quarantine\/.+$/, (req, res, url) => {
    const who = authorize(ctx, req, res, routes);
    if (who === undefined) { req.resume(); return; }
    let subject: string;
    try { subject = decodeURIComponent(url.pathname.slice('/quarantine/'.length)); } catch { routes.problem(res, 400, 'Bad Request', 'subject is not valid percent-encoding'); return; }
    const q = state.monitors.lift(subject, state.now());
    if (!q) { routes.problem(res, 404, 'Not Found', `${redactText(subject)} is not quarantined`); return; }
    log({ level: 'info', msg: 'quarantine lifted', consumer: subject, by: who });
    routes.json(res, 200, { lifted: quarantineView(q, state.config.monitors.kinds) });
  });

  routes.add('GET', '/consumers', async (_req, res, url) => {
    if (refusedParameters(res, url)) return;
    const now = state.now();
    const rules = ctx.rules();
    const subjects = new Set<string>([...rules.consumers.registry.keys(), ...state.monitors.consumers.keys()]);
    // By the value as it is matched (subjectKey): a pair written with a space is the same pair.
    const revoked = new Map<string, Revocation[]>();
    for (const r of state.revocations.list(now)) {
      if (r.kind !== 'subject') continue;
      const value = subjectKey(r.value);
      const list = revoked.get(value);
      if (list) list.push(r); else revoked.set(value, [r]);
    }
    // A consumer is refused by a revocation of its plain subject (from every issuer) and by one of
    // ["<issuer>","<subject>"] (its issuer's only), whichever spelling its key has: both are listed.
    const revocationsOf = (subject: string, known: { issuer: string } | undefined, seen: { origin?: { issuer: string; subject: string } } | undefined): Revocation[] => {
      const pair = issuerSubjectOf(subject);
      const origin = seen?.origin ?? (known ? { issuer: known.issuer, subject } : pair && { issuer: pair[0], subject: pair[1] });
      const spellings = new Set([subject]);
      if (origin) { spellings.add(origin.subject); spellings.add(issuerSubjectKey(origin.issuer, origin.subject)); }
      return [...spellings].flatMap((s) => revoked.get(s) ?? []);
    };
    const view = (subject: string) => {
      const known = rules.consumers.registry.get(subject);
      const seen = state.monitors.consumers.peek(subject);
      const q = state.monitors.peekQuarantine(subject, now);
      return {
        subject,
        kind: known?.kind ?? seen?.kind ?? rules.consumers.defaultKind,
        owner: known?.owner ?? seen?.owner ?? null,
        registered: known !== undefined,
        contractVersions: seen ? [...seen.contracts] : [],
        firstSeen: seen ? new Date(seen.firstSeenMs).toISOString() : null,
        lastSeen: seen ? new Date(seen.lastSeenMs).toISOString() : null,
        decisions: seen ? Object.fromEntries([...seen.decisions].map(([outcome, byReason]) => [outcome, Object.fromEntries(byReason)])) : {},
        revocations: revocationsOf(subject, known, seen).sort((a, b) => a.createdMs - b.createdMs).map(revocationView),
        quarantine: q ? quarantineView(q, state.config.monitors.kinds) : null,
      };
    };
    await routes.jsonList(res, { tracked: state.monitors.consumers.size, maxTracked: state.monitors.consumers.max }, 'consumers', [...subjects].sort(), view);
  });
}

/**
 * A quarantine as the admin API shows it: `kind`, the kind of the calls that placed it, and
 * `watched`, whether monitors.kinds watches it now (a quarantine of a kind a reload stopped
 * watching holds nobody until that kind is watched again, or it ends).
 */
function quarantineView(q: Quarantine, watched: ReadonlySet<ConsumerKind>): Record<string, unknown> {
  return { subject: q.subject, ...(q.key !== undefined ? { key: q.key } : {}), kind: q.kind, watched: watched.has(q.kind), since: new Date(q.sinceMs).toISOString(), until: new Date(q.untilMs).toISOString(), mode: q.mode, reasons: q.reasons };
}
