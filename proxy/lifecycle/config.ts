// The lifecycle sections of the rules (credentials, revocation, delegation, monitors), typed:
// durations in milliseconds, paths absolute, lists as sets. The JSON Schema already applied
// defaults and checked shapes; this adds what a schema cannot say (a per-sensitivity lifetime
// looser than the per-kind one, an allowlist for a consumer that does not exist, an admin
// credential file that cannot be read). It is registered with the rules loader, so every
// problem stops start-up or a reload with file:line:column: field, like the core's own.

import { accessSync, constants, existsSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { addRulesValidator, plainHttpElsewhere, readByRules, reservedHeader, RulesError } from '../rules/load.ts';
import { boundedDuration, parseDurationOr0 } from '../rules/durations.ts';
import { thresholdRank, type ConsumerKind, type Rules, type Sensitivity, type Threshold } from '../rules/types.ts';
import { readRegularFile } from '../lib/files.ts';

export type FeatureMode = 'enforce' | 'audit' | 'off';
type Path = (string | number)[];
type Fail = (path: Path, message: string) => void;

export interface CredentialsConfig {
  readonly mode: FeatureMode;
  readonly kinds: ReadonlySet<ConsumerKind>;
  readonly requireJti: boolean;
  readonly taskClaim: string;
  /** Rank (SENSITIVITY_RANK) from which a task claim is required; Infinity: never. */
  readonly taskBindingRank: number;
  readonly maxTokenLifetimeMs: Readonly<Partial<Record<Sensitivity, number>>>;
}

export interface RevocationConfig {
  readonly mode: FeatureMode;
  readonly file?: string;
  readonly url?: string;
  readonly intervalMs: number;
  readonly timeoutMs: number;
  readonly journal?: string;
  readonly adminCredentialFile?: string;
  readonly maxEntries: number;
}

export interface DelegationConfig {
  readonly mode: FeatureMode;
  readonly maxDepth: number;
  readonly actors: ReadonlyMap<string, ReadonlySet<string>>;
  readonly unlisted: 'deny' | 'allow';
}

export interface MonitorsConfig {
  readonly kinds: ReadonlySet<ConsumerKind>;
  readonly maxConsumers: number;
  readonly maxBodyBytes: number;
  readonly bodyTimeoutMs: number;
  readonly retryStorm: { readonly mode: FeatureMode; readonly counts: 'unsuccessful' | 'all'; readonly maxRepeats: number; readonly windowMs: number; readonly maxFingerprints: number; readonly maxFingerprintsPerConsumer: number };
  readonly idempotency: { readonly mode: FeatureMode; readonly atRank: number; readonly header: string; readonly windowMs: number; readonly maxKeys: number; readonly maxKeysPerConsumer: number };
  readonly traversal: { readonly mode: FeatureMode; readonly maxOperations: number; readonly windowMs: number };
  readonly quarantine: { readonly mode: FeatureMode; readonly denials: number; readonly windowMs: number; readonly periodMs: number; readonly maxQuarantined: number };
}

export interface LifecycleConfig {
  readonly credentials: CredentialsConfig;
  readonly revocation: RevocationConfig;
  readonly delegation: DelegationConfig;
  readonly monitors: MonitorsConfig;
  /**
   * Longest time any token accepted now can stay valid: the longest per-kind lifetime, plus
   * the clock skew twice (a token may have up to lifetime + skew left, the credential check
   * allows; and its exp is honoured up to skew late, jose allows). A revocation without an
   * end lasts this long, by which time every token it could match has expired.
   */
  readonly longestTokenMs: number;
}

// ---- the shape the schema guarantees (defaults applied) ----
interface Raw {
  identity: { clockSkew: string; maxTokenLifetime: Record<ConsumerKind, string> };
  consumers: { registry: { subject: string }[] };
  credentials: { mode: FeatureMode; kinds: ConsumerKind[]; requireJti: boolean; taskClaim: string; taskBindingAt: Threshold; maxTokenLifetime: Partial<Record<Sensitivity, string>> };
  revocation: { mode: FeatureMode; file?: string; url?: string; insecureHttp: boolean; interval: string; timeout: string; journal?: string; adminCredentialFile?: string; maxEntries: number };
  delegation: { mode: FeatureMode; maxDelegationDepth: number; consumers: { subject: string; actors: string[] }[]; unlisted: 'deny' | 'allow' };
  monitors: {
    kinds: ConsumerKind[]; maxConsumers: number; maxBodyBytes: number; bodyTimeout: string;
    retryStorm: { mode: FeatureMode; counts: 'unsuccessful' | 'all'; maxRepeats: number; window: string; maxFingerprints: number; maxFingerprintsPerConsumer?: number };
    idempotency: { mode: FeatureMode; at: Threshold; header: string; window: string; maxKeys: number; maxKeysPerConsumer?: number };
    traversal: { mode: FeatureMode; maxOperations: number; window: string };
    quarantine: { mode: FeatureMode; denials: number; window: string; period: string; maxQuarantined: number };
  };
}

/** Parse the lifecycle sections; every semantic problem goes to `fail` with its field path. */
/** One consumer's share of a table by default: a tenth of it, at least one entry. */
function share(max: number): number {
  return Math.max(1, Math.floor(max / 10));
}

export function parseLifecycle(document: Readonly<Record<string, unknown>>, fail: Fail, base: string, named: readonly string[] = []): LifecycleConfig {
  const raw = document as unknown as Raw;
  // One problem per field: a refused value is NaN, which every later bound of its field lets
  // pass unsaid (it was 1 ms, and "30d: must be at most 24d" was followed by "must be at least 1s").
  // The rules are refused, so it is never used.
  const duration = (path: Path, text: string, positive = true, isTimer = false): number => {
    const ms = boundedDuration(text, isTimer);
    if (typeof ms === 'string') { fail(path, ms); return NaN; }
    if (positive && ms <= 0) { fail(path, 'must be longer than 0'); return NaN; }
    return ms;
  };
  /** A duration that becomes a timer: at most MAX_TIMER_MS. */
  const timer = (path: Path, text: string): number => duration(path, text, true, true);

  // credentials
  const c = raw.credentials;
  const kindLimits = raw.identity.maxTokenLifetime;
  const maxTokenLifetimeMs: Partial<Record<Sensitivity, number>> = {};
  for (const [sensitivity, text] of Object.entries(c.maxTokenLifetime) as [Sensitivity, string][]) {
    const ms = duration(['credentials', 'maxTokenLifetime', sensitivity], text, false);
    // As identity.maxTokenLifetime: a token's times are whole seconds, so under 1s no token
    // passes and every call at that sensitivity is refused (500ms for 500s, say).
    if (ms < 1000) fail(['credentials', 'maxTokenLifetime', sensitivity], `${text} is less than 1s, the unit of the times in a token: no token could pass`);
    for (const kind of c.kinds) {
      if (ms > parseDurationOr0(kindLimits[kind])) fail(['credentials', 'maxTokenLifetime', sensitivity], `${text} is longer than identity.maxTokenLifetime.${kind} (${kindLimits[kind]}); a per-sensitivity limit can only be stricter`);
    }
    maxTokenLifetimeMs[sensitivity] = ms;
  }
  const credentials: CredentialsConfig = Object.freeze({
    mode: c.mode, kinds: new Set(c.kinds), requireJti: c.requireJti, taskClaim: c.taskClaim,
    taskBindingRank: thresholdRank(c.taskBindingAt),
    maxTokenLifetimeMs: Object.freeze(maxTokenLifetimeMs),
  });

  // revocation
  const r = raw.revocation;
  const file = r.file !== undefined ? resolve(base, r.file) : undefined;
  if (file !== undefined) read(['revocation', 'file'], file);
  const journal = r.journal !== undefined ? resolve(base, r.journal) : undefined;
  const adminCredentialFile = r.adminCredentialFile !== undefined ? resolve(base, r.adminCredentialFile) : undefined;
  if (journal !== undefined) {
    // The journal is rewritten at start (compaction): it must be a file of its own, in a
    // directory driftguard can write. Named by mistake, the rules file would be emptied.
    const shared = readByRules(journal, [...named, file, adminCredentialFile], 'journal');
    if (shared !== undefined) fail(['revocation', 'journal'], shared);
    else {
      try {
        if (!statSync(dirname(journal)).isDirectory()) fail(['revocation', 'journal'], `${dirname(journal)} is not a directory`);
        else if (existsSync(journal) && statSync(journal).isDirectory()) fail(['revocation', 'journal'], `${journal} is a directory`);
        else accessSync(dirname(journal), constants.W_OK);
      } catch (err) { fail(['revocation', 'journal'], `directory ${dirname(journal)} cannot be used: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`); }
    }
  }
  const adminText = adminCredentialFile !== undefined ? read(['revocation', 'adminCredentialFile'], adminCredentialFile) : undefined;
  if (adminCredentialFile !== undefined && adminText !== undefined) {
    const parsed = parseAdminCredentials(adminText);
    const wrong = malformedCredentialLines(adminCredentialFile, parsed);
    if (wrong !== undefined) fail(['revocation', 'adminCredentialFile'], wrong);
    else if (parsed.credentials.length === 0) fail(['revocation', 'adminCredentialFile'], `${adminCredentialFile} holds no credential`);
  }
  if (r.url !== undefined) {
    // Not quoted: a URL that does not parse may still carry a credential (user:pass@, ?token=).
    try { new URL(r.url); } catch { fail(['revocation', 'url'], 'is not a URL'); }
    // As for a key set: the list replaces the last one, so whoever can answer for it lifts revocations.
    if (plainHttpElsewhere(r.url) && !r.insecureHttp) fail(['revocation', 'url'], 'is plain http to a host that is not loopback: anyone on the path could serve an empty list and lift every revocation it carried; use https, or set revocation.insecureHttp: true where the path is protected (a mesh\'s mTLS)');
  }
  // Its own bound (1s) says more of 0 than "longer than 0".
  const intervalMs = duration(['revocation', 'interval'], r.interval, false, true);
  if (intervalMs < 1000) fail(['revocation', 'interval'], 'must be at least 1s');
  const revocation: RevocationConfig = Object.freeze({
    mode: r.mode, ...(file !== undefined ? { file } : {}), ...(r.url !== undefined ? { url: r.url } : {}),
    intervalMs, timeoutMs: timer(['revocation', 'timeout'], r.timeout),
    ...(journal !== undefined ? { journal } : {}), ...(adminCredentialFile !== undefined ? { adminCredentialFile } : {}),
    maxEntries: r.maxEntries,
  });

  // delegation
  const d = raw.delegation;
  const registered = new Set(raw.consumers.registry.map((x) => x.subject));
  const actors = new Map<string, ReadonlySet<string>>();
  d.consumers.forEach((entry, i) => {
    if (actors.has(entry.subject)) fail(['delegation', 'consumers', i, 'subject'], `subject "${entry.subject}" is listed twice`);
    if (!registered.has(entry.subject)) fail(['delegation', 'consumers', i, 'subject'], `"${entry.subject}" is not a subject of consumers.registry`);
    actors.set(entry.subject, new Set(entry.actors));
  });
  const delegation: DelegationConfig = Object.freeze({ mode: d.mode, maxDepth: d.maxDelegationDepth, actors, unlisted: d.unlisted });

  // monitors
  const m = raw.monitors;
  // Its value becomes the write's key: the credential (Authorization, over 255 characters, was
  // every write's 400) or the contract version's header (one key for every write of a version)
  // would make it no key at all.
  const keyHeader = m.idempotency.header.toLowerCase();
  const declaredHeader = (document.contract as { declared?: { header?: string } } | undefined)?.declared?.header?.toLowerCase();
  if (reservedHeader(keyHeader, 'idempotency-key') || keyHeader === declaredHeader) {
    fail(['monitors', 'idempotency', 'header'], `${m.idempotency.header} has a meaning of its own in HTTP or to driftguard (the contract version's header, if it is that): name a header of its own (the default is Idempotency-Key)`);
  }
  const monitors: MonitorsConfig = Object.freeze({
    kinds: new Set(m.kinds), maxConsumers: m.maxConsumers, maxBodyBytes: m.maxBodyBytes,
    bodyTimeoutMs: timer(['monitors', 'bodyTimeout'], m.bodyTimeout),
    retryStorm: Object.freeze({ mode: m.retryStorm.mode, counts: m.retryStorm.counts, maxRepeats: m.retryStorm.maxRepeats, windowMs: duration(['monitors', 'retryStorm', 'window'], m.retryStorm.window), maxFingerprints: m.retryStorm.maxFingerprints, maxFingerprintsPerConsumer: m.retryStorm.maxFingerprintsPerConsumer ?? share(m.retryStorm.maxFingerprints) }),
    idempotency: Object.freeze({ mode: m.idempotency.mode, atRank: thresholdRank(m.idempotency.at), header: m.idempotency.header.toLowerCase(), windowMs: duration(['monitors', 'idempotency', 'window'], m.idempotency.window), maxKeys: m.idempotency.maxKeys, maxKeysPerConsumer: m.idempotency.maxKeysPerConsumer ?? share(m.idempotency.maxKeys) }),
    traversal: Object.freeze({ mode: m.traversal.mode, maxOperations: m.traversal.maxOperations, windowMs: duration(['monitors', 'traversal', 'window'], m.traversal.window) }),
    quarantine: Object.freeze({
      mode: m.quarantine.mode, denials: m.quarantine.denials, windowMs: duration(['monitors', 'quarantine', 'window'], m.quarantine.window),
      periodMs: duration(['monitors', 'quarantine', 'period'], m.quarantine.period), maxQuarantined: m.quarantine.maxQuarantined,
    }),
  });

  const longestTokenMs = Math.max(parseDurationOr0(kindLimits.automation), parseDurationOr0(kindLimits.human)) + 2 * parseDurationOr0(raw.identity.clockSkew);
  return Object.freeze({ credentials, revocation, delegation, monitors, longestTokenMs });

  /** The file's text, or undefined with the problem at `path` when it cannot be read. */
  function read(path: Path, file: string): string | undefined {
    try {
      return readRegularFile(file).toString('utf8');
    } catch (err) {
      fail(path, `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      return undefined;
    }
  }
}

export interface AdminCredential {
  /** Who, for the log: the name on the line, else its line. Never the secret, nor a hash of it. */
  readonly name: string;
  readonly secret: string;
  /** The line of the file it is on, counted from 1. */
  readonly line: number;
}

/**
 * One credential per line: `name secret` or `secret`; blank lines and # comments (on lines of
 * their own) skipped. A line of more words (`name secret # rotated`, a passphrase) is neither:
 * its secret could never be presented (a bearer credential is one word), so it is no
 * credential, and its line number is returned in `malformed` for the caller to report
 * (the line itself is never quoted: it holds a secret). So is a line whose secret is shorter
 * than MIN_ADMIN_SECRET, in `short` (the admin listener is on the pod's loopback, which the app
 * shares, and an SSRF or a compromised app may guess at it as fast as it can send), or has a
 * character other than visible ASCII, in `notAscii` (clients send those in different encodings,
 * and Node reads a header as latin1: a secret that works from one client fails from another).
 */
export function parseAdminCredentials(text: string): { credentials: AdminCredential[]; malformed: number[]; short: number[]; notAscii: number[] } {
  const credentials: AdminCredential[] = [];
  const malformed: number[] = [];
  const short: number[] = [];
  const notAscii: number[] = [];
  // Split and trimmed at ASCII blanks only: a no-break space pasted into a secret split it into a
  // name and a shorter secret, silently; kept, it is a secret that is not visible ASCII. A
  // byte-order mark before the first line is no part of it.
  text.replace(/^\uFEFF/, '').split('\n').forEach((line, i) => {
    const trimmed = line.replace(/^[ \t\r]+|[ \t\r]+$/g, '');
    if (!trimmed || trimmed.startsWith('#')) return;
    const parts = trimmed.split(/[ \t]+/);
    if (parts.length > 2) malformed.push(i + 1);
    // Only visible ASCII is sent alike by every client (Node reads a header as latin1).
    else if (!/^[\x21-\x7e]+$/.test(parts.at(-1)!)) notAscii.push(i + 1);
    else if (parts.at(-1)!.length < MIN_ADMIN_SECRET) short.push(i + 1);
    else credentials.push({ name: parts.length === 2 ? parts[0]! : '', secret: parts.at(-1)!, line: i + 1 });
  });
  return { credentials, malformed, short, notAscii };
}

/**
 * The fewest characters an admin secret may have: 16 random ones (`openssl rand -hex 16` gives
 * 32) are beyond guessing at the rate one connection at a time can send; `admin`, `changeme`
 * or a word from a list are not.
 */
export const MIN_ADMIN_SECRET = 16;

const lineList = (lines: readonly number[]) => `line${lines.length > 1 ? 's' : ''} ${lines.slice(0, 5).join(', ')}${lines.length > 5 ? ', ...' : ''}`;

/** What is wrong with the lines of an admin credential file, for an operator (no secret quoted); undefined when nothing is. */
export function malformedCredentialLines(file: string, lines: { malformed: readonly number[]; short: readonly number[]; notAscii: readonly number[] }): string | undefined {
  const said: string[] = [];
  if (lines.malformed.length) said.push(`${file} ${lineList(lines.malformed)}: expected "name secret" or "secret" (a # comment goes on a line of its own)`);
  if (lines.short.length) said.push(`${file} ${lineList(lines.short)}: a secret of fewer than ${MIN_ADMIN_SECRET} characters, which the app beside the sidecar could guess at over the shared loopback: use at least ${MIN_ADMIN_SECRET} random characters (\`openssl rand -hex 16\`)`);
  if (lines.notAscii.length) said.push(`${file} ${lineList(lines.notAscii)}: a secret with a character other than visible ASCII, which clients send in different encodings: use visible ASCII (\`openssl rand -hex 16\`)`);
  return said.length ? said.join('; ') : undefined;
}

// Registered once at import: the loader then checks these sections on every load and reload.
addRulesValidator((raw, fail, base, named) => { parseLifecycle(raw, fail, base, named); });

const parsed = new WeakMap<Rules, LifecycleConfig>();

/** The typed lifecycle configuration of these rules (parsed once per rules object). */
export function configOf(rules: Rules): LifecycleConfig {
  let config = parsed.get(rules);
  if (!config) {
    const problems: string[] = [];
    config = parseLifecycle(rules.raw, (path, message) => problems.push(`${path.join('.')}: ${message}`), dirname(rules.source));
    // The loader already ran the same checks with positions; this only guards rules built elsewhere.
    if (problems.length) throw new RulesError(problems.map((message) => ({ file: rules.source, line: 0, column: 0, field: '', message })));
    parsed.set(rules, config);
  }
  return config;
}
