// Reads, validates and freezes a rules file. Every problem is reported with the file,
// line, column and field it concerns, all at once, so one edit-run cycle fixes them all.
// A RulesError stops start-up (or a reload); it is never a request-time denial.

import { accessSync, closeSync, constants, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { createHash } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import { resolve, dirname } from 'node:path';
import { isScalar, parseDocument, visit, LineCounter, type Document } from 'yaml';
import { Ajv, type ErrorObject } from 'ajv';
import schema from '../../rules/schema.json' with { type: 'json' };
import { MAX_TIMER_MS, boundedDuration, parseDurationOr0, parseTime } from './durations.ts';
import { foldSegment, parseTemplate, type Template } from './templates.ts';
import { crossingTemplates } from './crossing.ts';
import { deepFreeze } from '../lib/freeze.ts';
import { NOT_A_REGULAR_FILE, readRegularFile } from '../lib/files.ts';
import { parseAddress } from '../lib/address.ts';
import { pathAt, positionOf } from '../lib/yaml-position.ts';
import { yamlFault } from '../lib/redact.ts';
import type { Rules, Operation, ConsumerRules, IssuerRules, ConsumerKind, Sensitivity, Threshold, IssuerProfile, JwksSource } from './types.ts';
import { inClusterApiServer, discoveryUrl, refusedAudience, DEFAULT_TOKEN_FILE, DEFAULT_CA_FILE } from '../identity/cluster.ts';
import { SVID_ALGORITHMS, jwtSvidKeys, parseSpiffeId } from '../identity/spiffe.ts';
import { parseJwks, readJwksFile } from '../identity/jwks.ts';
import { foreignSubject } from '../identity/subjects.ts';
import { OVERRIDE_KEYS, type Overrides } from './overrides.ts';

/** Headers with a meaning of their own in HTTP or to driftguard: never a contract.declared.header. */
const RESERVED_HEADERS = new Set([
  'authorization', 'proxy-authorization', 'cookie', 'host', 'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer',
  'transfer-encoding', 'upgrade', 'expect', 'forwarded', 'traceparent', 'tracestate', 'baggage', 'idempotency-key',
]);
// And every Content-*, X-Forwarded-* and Driftguard-* header (reservedHeader).

/** Whether a header (lower case) has a meaning of its own in HTTP or to driftguard, Idempotency-Key's aside: no rules setting may name it. */
export function reservedHeader(name: string, except?: string): boolean {
  return name !== except && (RESERVED_HEADERS.has(name) || /^(driftguard|content|x-forwarded)-/.test(name));
}

export interface RulesProblem {
  readonly file: string;
  readonly line: number;
  readonly column: number;
  /** Dotted path of the field, e.g. contract.operations[3].method */
  readonly field: string;
  readonly message: string;
}

export class RulesError extends Error {
  readonly code = 'ERR_RULES_INVALID';
  readonly problems: readonly RulesProblem[];
  /** The file is fine; what it names could not be reached (a new issuer's key set): the same file may load later. */
  readonly transient: boolean;
  /**
   * The files the refused rules name beside themselves (key sets, the revocation list, the admin
   * credentials), once the file itself was read: one written after the rules (a key set copied
   * in second) lets the same rules load, so a reload watches them too (reload.ts).
   */
  readonly files: readonly string[];
  constructor(problems: readonly RulesProblem[], options: { transient?: boolean; files?: readonly string[] } = {}) {
    super(problems.map(formatProblem).join('\n'));
    this.name = 'RulesError';
    this.problems = problems;
    this.transient = options.transient ?? false;
    this.files = options.files ?? [];
  }
}

/**
 * A listener that could not bind (a port in use): named at its field as a problem of the
 * rules is, but the rules are fine, so it is told apart (`driftguard: cannot start`).
 */
export class StartError extends Error {
  readonly code = 'ERR_START_FAILED';
  constructor(message: string) {
    super(message);
    this.name = 'StartError';
  }
}

/**
 * Problems as a running sidecar reports them again and again (a reload rejected, a list at
 * every refresh; /readyz at every probe): the first MAX_PROBLEMS, and how many more. A file of
 * 20,000 entries with one mistake each made a log line, and every probe's answer, of 2 MB.
 */
const MAX_PROBLEMS = 20;

export function firstProblems(problems: readonly RulesProblem[]): RulesProblem[] {
  if (problems.length <= MAX_PROBLEMS) return [...problems];
  const next = problems[MAX_PROBLEMS]!;
  return [...problems.slice(0, MAX_PROBLEMS), { ...next, field: '', message: `and ${problems.length - MAX_PROBLEMS} more problems` }];
}

export function formatProblem(p: RulesProblem): string {
  // Line 0: the problem is with the file as a whole, or the value came from a flag or a variable.
  return `${p.file}${p.line > 0 ? `:${p.line}:${p.column}` : ''}: ${p.field || '(top level)'}: ${p.message}`;
}

export type { Overrides } from './overrides.ts';

/** A problem with a field whose value a flag or a variable gave: named by it, there is no line. */
function overrideProblem(overridden: Readonly<Record<string, string>> | undefined, path: Path, message: string): RulesProblem | undefined {
  const field = fieldName(path);
  // Own keys only: a field named `constructor` or `__proto__` found Object.prototype's member,
  // and its problem was reported as the override's, with that member for a file name.
  const from = overridden !== undefined && Object.hasOwn(overridden, field) ? overridden[field] : undefined;
  return from === undefined ? undefined : { file: from, line: 0, column: 0, field, message };
}

/**
 * A problem with a field of loaded rules: where its value came from, if a flag or a variable
 * overrode the file's, else at the field's line in the file.
 */
export function problemWith(rules: Pick<Rules, 'source' | 'overridden'>, path: Path, message: string): RulesProblem {
  return overrideProblem(rules.overridden, path, message) ?? problemInFile(rules.source, path, message);
}

type Path = (string | number)[];

/**
 * Semantic checks of a feature module's own sections (e.g. proxy/lifecycle): called after the
 * core's with the validated document (defaults applied), a `fail` that records a problem at
 * the field's file:line:column, the rules file's directory for relative paths, and the files
 * the core's rules name (the rules file itself, key set files), which a module must not write.
 */
export type RulesValidator = (raw: Readonly<Record<string, unknown>>, fail: (path: Path, message: string) => void, base: string, named: readonly string[]) => void;
const validators: RulesValidator[] = [];
export function addRulesValidator(validator: RulesValidator): void {
  if (!validators.includes(validator)) validators.push(validator);
}

// verbose: a pattern error carries its schema, whose description says what the value should be.
// strictNumbers: YAML's .inf and .nan are numbers, and ajv's integer check took Infinity (a
// table bound of .inf then crashed the start with a stack trace).
const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false, strictNumbers: true, allowUnionTypes: true, verbose: true });
// "format: uri": a scheme and then only the characters RFC 3986 allows (non-ASCII
// percent-encoded), so that a deprecation link written into a Link header as <…> can neither
// break out of it nor carry a character Node refuses to write. No ajv-formats dependency needed.
ajv.addFormat('uri', /^[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9._~:/?#[\]@!$&'()*+,;=%-]+$/);
const validateSchema = ajv.compile(schema);

/** Field name as a platform engineer reads it: contract.operations[3].method */
/** identity.clockSkew at most: more would accept tokens that long after they expired. */
/** proxy.connections' schema maximum: its default follows clientConnections up to it. */
const MAX_UPSTREAM_CONNECTIONS = 1024;
const MAX_CLOCK_SKEW_MS = 5 * 60_000;

/**
 * A key the rules could have: every field of the schema is a word (and a key YAML reads as a
 * number, or a merge key, is named as written). Any other text a key holds
 * is never printed: in a file whose YAML broke, a value can be read as a key (a URL with a
 * token in its query, on a line indented wrong), and problems are logged and served on
 * /readyz. The line and column still say where.
 */
const FIELD_NAME = /^(?:[A-Za-z_$][A-Za-z0-9_$-]{0,63}|[0-9]{1,20}|<<)$/;

/** `key` as a problem may print it. */
export function keyText(key: string): string {
  return FIELD_NAME.test(key) ? `"${key}"` : '(a key that is no field name)';
}

/** The field at `path`, as problems print it: up to the first key that is no field name (keyText). */
export function fieldName(path: Path): string {
  let out = '';
  for (const part of path) {
    if (typeof part !== 'number' && !FIELD_NAME.test(part)) break;
    out += typeof part === 'number' ? `[${part}]` : (out ? '.' : '') + part;
  }
  return out;
}

class Locator {
  readonly file: string;
  readonly doc: Document;
  readonly lines: LineCounter;
  /** Fields overridden from outside the file, and where from. */
  readonly overridden: Readonly<Record<string, string>>;
  constructor(file: string, doc: Document, lines: LineCounter, overridden: Readonly<Record<string, string>> = {}) {
    this.file = file; this.doc = doc; this.lines = lines; this.overridden = overridden;
  }
  /** A problem at the deepest node that exists along `path` (the key, where the path ends on one). */
  problem(path: Path, message: string): RulesProblem {
    const overridden = overrideProblem(this.overridden, path, message);
    if (overridden) return overridden;
    const pos = positionOf(this.doc, this.lines, path);
    return { file: this.file, line: pos.line, column: pos.col, field: fieldName(path), message };
  }
}

function pointerToPath(pointer: string): Path {
  if (!pointer) return [];
  return pointer.slice(1).split('/').map((raw) => {
    const part = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    return /^\d+$/.test(part) ? Number(part) : part;
  });
}

/**
 * For each failed oneOf (jwks): the branch the value picks by its required key ({ discovery }
 * picks the discovery branch), when exactly one does. That branch's own errors (a bad refresh,
 * an unknown field) say what is wrong; without one, the oneOf's summary does.
 */
function chosenBranches(errors: readonly ErrorObject[]): Map<ErrorObject, number | undefined> {
  const chosen = new Map<ErrorObject, number | undefined>();
  for (const o of errors) {
    if (o.keyword !== 'oneOf') continue;
    const prefix = `${o.schemaPath}/`;
    // This value's branches only: every issuer's jwks shares the schema path.
    const inside = errors.filter((x) => x.schemaPath.startsWith(prefix) && (x.instancePath === o.instancePath || x.instancePath.startsWith(o.instancePath + '/')));
    // Every branch (a branch whose only errors came through a $ref has none under its own path).
    const count = Array.isArray(o.schema) ? o.schema.length : 0;
    const viable = Array.from({ length: count }, (_, b) => b).filter((b) => !inside.some((x) => x.schemaPath.startsWith(`${prefix}${b}/required`)));
    chosen.set(o, viable.length === 1 ? viable[0] : undefined);
  }
  return chosen;
}

function schemaProblems(errors: ErrorObject[], at: Locator, data: unknown): RulesProblem[] {
  const chosen = chosenBranches(errors);
  /** Whether `e` is a branch error of a failed oneOf that is left to the oneOf (or to another branch). */
  const leftOut = (e: ErrorObject): boolean => {
    for (const [o, branch] of chosen) {
      if (e === o) return branch !== undefined;
      if (e.instancePath !== o.instancePath && !e.instancePath.startsWith(o.instancePath + '/')) continue;
      if (branch === undefined) return true;
      // An error through a $ref (a duration) carries the definition's path, not the branch's: kept.
      const prefix = `${o.schemaPath}/`;
      if (e.schemaPath.startsWith(prefix)) return Number(e.schemaPath.slice(prefix.length).split('/')[0]) !== branch;
    }
    return false;
  };
  const out: RulesProblem[] = [];
  const seen = new Set<string>();
  for (const e of errors) {
    if (e.keyword === 'if') continue;
    if (leftOut(e)) continue;
    const path = pointerToPath(e.instancePath);
    let message: string;
    if (e.keyword === 'required') {
      const missing = (e.params as { missingProperty: string }).missingProperty;
      const p = at.problem(path, `missing required field "${missing}"`);
      push({ ...p, field: fieldName([...path, missing]) });
      continue;
    } else if (e.keyword === 'additionalProperties') {
      const extra = (e.params as { additionalProperty: string }).additionalProperty;
      push(at.problem([...path, extra], `unknown field ${keyText(extra)}`));
      continue;
    } else if (e.keyword === 'enum') {
      message = `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}`;
    } else if (e.keyword === 'oneOf') {
      message = 'must be exactly one of { file: PATH }, { url: URL, refresh?, cooldown?, timeout? } or { discovery: URL, tokenFile?, caFile?, refresh?, cooldown?, timeout? }';
    } else if (e.keyword === 'pattern' && (e.parentSchema as { description?: string })?.description) {
      message = `${quotable(valueAt(data, path))}is not valid: ${(e.parentSchema as { description: string }).description}`;
    } else {
      message = e.message ?? 'is invalid';
    }
    push(at.problem(path, message));
  }
  return out;

  function push(p: RulesProblem) {
    // Where, too: two unknown keys that are no field names print the same field and message.
    const key = `${p.file}:${p.line}:${p.column}|${p.field}|${p.message}`;
    if (!seen.has(key)) { seen.add(key); out.push(p); }
  }
}

/** The value validated at `path` (an override's, where one replaced the file's). */
function valueAt(data: unknown, path: Path): unknown {
  let v = data;
  for (const k of path) v = typeof v === 'object' && v !== null ? (v as Record<string | number, unknown>)[k] : undefined;
  return v;
}

/**
 * The value quoted before "is not valid", or nothing: a URL or anything with an `@` may carry
 * a credential (user:pass@, ?token=), and the message goes to logs.
 */
function quotable(value: unknown): string {
  if (typeof value !== 'string' || value.length > 64 || /@|:\/\/|[?&=]/.test(value)) return '';
  return `${JSON.stringify(value)} `;
}

/**
 * A problem found after loading (a reload that changes a field only a restart may change), at
 * the field's line in the rules file as it reads now.
 */
export function problemInFile(file: string, path: Path, message: string): RulesProblem {
  try {
    const lines = new LineCounter();
    const doc = parseDocument(readRegularFile(file).toString('utf8'), { lineCounter: lines, prettyErrors: false });
    return new Locator(file, doc, lines).problem(path, message);
  } catch {
    return { file, line: 0, column: 0, field: fieldName(path), message };
  }
}

function wholeSecond(ms: number): number {
  return Math.floor(ms / 1000) * 1000;
}

/**
 * Heap a rules file takes while it loads, per byte of the file: the YAML document (kept so that
 * every problem names its line) holds about 51-56 times the file, measured (README, Memory
 * while a file loads); a little more, as a margin.
 */
const HEAP_PER_FILE_BYTE = 64;
/** Files up to this size are loaded without asking the heap: what the README says is safe under the chart's heap. */
const ALWAYS_ROOM_BYTES = 256 * 1024;

/**
 * A rules file too large for the heap left: refused before it is read. Parsed, it ran V8 out of
 * its heap and the process died (SIGABRT); at a reload that is a serving pod, and with a
 * ConfigMap every pod at once. The heap's figures are read now, so this is an estimate.
 */
function roomFor(size: number): string | undefined {
  if (size <= ALWAYS_ROOM_BYTES) return undefined;
  const need = size * HEAP_PER_FILE_BYTE;
  let { heap_size_limit: limit, used_heap_size: used } = getHeapStatistics();
  if (need <= limit - used) return undefined;
  // The used heap counts garbage not collected yet (tens of MiB under load, between major
  // collections): a file that fits was refused on a busy pod. Collected, then weighed again;
  // a major collection only for a large file that seemed not to fit.
  collectGarbage();
  ({ heap_size_limit: limit, used_heap_size: used } = getHeapStatistics());
  if (need <= limit - used) return undefined;
  const mib = (n: number) => Math.ceil(n / 1024 / 1024);
  return `the rules file is ${Math.ceil(size / 1024)} KiB: loading it takes about ${mib(need)} MiB of heap, and ${mib(Math.max(0, limit - used))} of the heap's ${mib(limit)} MiB are free; make the file smaller, or raise the heap (--max-old-space-size in NODE_OPTIONS, the chart's sidecar.nodeOptions) and the memory limit with it`;
}

/**
 * A file of unknown size (`check`'s pipe, a device), read a piece at a time and weighed each
 * time what was read doubles: read whole first, one that never ends (/dev/zero, `<(yes)`)
 * grew until the kernel killed the process, with no message.
 */
function readWeighed(source: string, weigh: (size: number) => void): Buffer {
  const fd = openSync(source, 'r');
  try {
    const pieces: Buffer[] = [];
    let size = 0;
    let next = ALWAYS_ROOM_BYTES;
    // One buffer read into, and only what each read brought copied out: a slow writer's ten
    // bytes a read kept a 64 KiB buffer each, hundreds of MiB for 2 MB of text.
    const piece = Buffer.allocUnsafe(64 * 1024);
    for (;;) {
      const n = readSync(fd, piece, 0, piece.length, null);
      if (n === 0) break;
      pieces.push(Buffer.from(piece.subarray(0, n)));
      size += n;
      if (size > next) { weigh(size); next *= 2; }
    }
    return Buffer.concat(pieces, size);
  } finally {
    closeSync(fd);
  }
}

let gc: (() => void) | undefined;
/** A full garbage collection: V8's `gc`, exposed once for it (Node's flag, set at run time). */
function collectGarbage(): void {
  try {
    if (!gc) { setFlagsFromString('--expose-gc'); gc = runInNewContext('gc') as () => void; }
    gc();
  } catch { /* not exposed: weighed as it is */ }
}

export interface LoadOptions {
  /** The file may be a named pipe, read once (`check`); `run` reads its file again at each reload, and refuses one. */
  readonly pipe?: boolean;
}

/** Load, validate and freeze the rules in `file`. Throws RulesError with every problem found. */
export function loadRules(file: string, overrides: Overrides = {}, options: LoadOptions = {}): Rules {
  const source = resolve(file);
  let bytes: Buffer;
  const tooLarge = (size: number) => { const m = roomFor(size); if (m !== undefined) throw new RulesError([{ file: source, line: 0, column: 0, field: '', message: m }]); };
  try {
    bytes = options.pipe ? readWeighed(source, tooLarge) : readRegularFile(source, tooLarge);
  } catch (err) {
    if (err instanceof RulesError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    // `run` reads the file again at each reload: a named pipe would hold every request until something wrote to it.
    const why = code === NOT_A_REGULAR_FILE ? `is ${NOT_A_REGULAR_FILE}: driftguard run reads its rules file again at each reload; give a regular file` : `cannot read the rules file: ${code ?? (err as Error).message}`;
    throw new RulesError([{ file: source, line: 0, column: 0, field: '', message: why }]);
  }
  if (options.pipe) tooLarge(bytes.length);
  // Not UTF-8 (a Latin-1 editor): decoded, each bad byte would be U+FFFD, and a subject or
  // owner written so could never match a token's.
  const text = bytes.toString('utf8');
  const bad = firstDifference(Buffer.from(text, 'utf8'), bytes);
  if (bad !== undefined) {
    const before = bytes.subarray(0, bad);
    const line = before.filter((b) => b === 0x0a).length + 1;
    const column = bad - (before.lastIndexOf(0x0a) + 1) + 1;
    throw new RulesError([{ file: source, line, column, field: '', message: 'not UTF-8: save the rules file as UTF-8' }]);
  }
  return parseRules(text, source, overrides, bytes);
}

/**
 * Whether two listeners' hosts on one port would clash: the same address (however written),
 * `::` (every address, both families, as Node binds it), 0.0.0.0 and any IPv4 address, or
 * localhost and a loopback address.
 */
function sameSocket(x: string, y: string): boolean {
  const norm = (h: string) => {
    const bare = h.replace(/^\[|\]$/g, '').toLowerCase();
    // Node binds localhost to what it resolves to first here: 127.0.0.1.
    if (bare === 'localhost') return '127.0.0.1';
    // An IPv4 address however written (127.1, 0, 0x7f.0.0.1), as the resolver that binds it
    // reads it: the URL parser reads them alike.
    if (!isIPv6(bare)) { try { return new URL(`http://${bare}`).hostname; } catch { return bare; } }
    const v6 = new URL(`http://[${bare}]`).hostname.slice(1, -1);
    // An IPv4-mapped address is that IPv4 address's socket, however written (::ffff:7f00:1,
    // 0:0:0:0:0:ffff:127.0.0.1): read from the URL parser's form, ::ffff: and two hex groups.
    const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(v6);
    if (!mapped) return v6;
    const [hi, lo] = [parseInt(mapped[1]!, 16), parseInt(mapped[2]!, 16)];
    return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
  };
  const [a, b] = [norm(x), norm(y)];
  if (a === b || a === '::' || b === '::') return true;
  return (a === '0.0.0.0' && isIPv4(b)) || (b === '0.0.0.0' && isIPv4(a));
}

/**
 * Why `file` (absolute), which driftguard writes, is not a file of its own: it is one of
 * `read`, the files the rules read (the rules file first), or undefined. Named by mistake, a
 * journal emptied the rules file at its compaction, a decision log appended to it.
 */
export function readByRules(file: string, read: readonly (string | undefined)[], what: string): string | undefined {
  const other = read.find((f) => f !== undefined && resolve(f) === file);
  return other === undefined ? undefined : `${file} is a file the rules read (${other === read[0] ? 'the rules file' : 'named elsewhere in the rules'}), not a ${what} of its own`;
}

/** An http:// URL whose host is not loopback (localhost, 127.0.0.0/8, ::1). */
export function plainHttpElsewhere(url: string): boolean {
  let u: URL;
  try { u = new URL(url); } catch { return false; }
  if (u.protocol !== 'http:') return false;
  const host = u.hostname;
  return !(host === 'localhost' || host === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(host));
}

/** The first offset at which two buffers differ, or undefined when they are equal. */
function firstDifference(a: Buffer, b: Buffer): number | undefined {
  if (a.equals(b)) return undefined;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

/**
 * How far aliases may expand (the yaml package's measure: its default of 100 refused a registry
 * of 150 entries sharing an owner and a list of operations by anchors); a "billion laughs"
 * file still fails long before it could fill the heap.
 */
const MAX_ALIASES = 10_000;

/**
 * Keys the rules cannot take, where each is written: a merge key (`<<: *anchor`, YAML 1.1),
 * which YAML 1.2 reads as a field named `<<`; and a key that is no word (a list or mapping,
 * `? [a]`; an alias, `*k`; null, `~`). Such a key was named at its parent's line ("unknown
 * field"), and a collection key made the yaml package print a warning of its own into the
 * JSON log.
 */
function oddKeys(doc: Document): { offset: number; message: string }[] {
  const at: { offset: number; message: string }[] = [];
  visit(doc, { Pair(_key, pair) {
    const key = pair.key as { value?: unknown; range?: [number, number, number] } | null;
    const offset = key?.range?.[0];
    if (offset === undefined) return;
    if (key!.value === '<<') at.push({ offset, message: 'YAML merge keys (<<) are not read: write the fields, or alias the whole value' });
    else if (!isScalar(key) || key.value === null) at.push({ offset, message: 'a key must be a word: not a list, a mapping, an alias or null' });
  } });
  return at;
}

export function parseRules(text: string, source: string, overrides: Overrides = {}, bytes: Buffer = Buffer.from(text)): Rules {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false });
  // A tag the parser does not know (!env, !include, !Ref) is only a warning to it, and the
  // value was loaded as its literal text: an owner or an audience other than the one written.
  const unresolved = doc.warnings.filter((w) => w.code === 'TAG_RESOLVE_FAILED');
  const merges = oddKeys(doc);
  // A %YAML 1.1 directive makes the parser read the file as YAML 1.1: merge keys applied (the
  // refusal above looks for the 1.2 reading's `<<` field), `yes` and `y` booleans, 4:16 the
  // number 256. The rules are YAML 1.2, as the schema and this reference describe them.
  if (doc.directives?.yaml.explicit === true && doc.directives.yaml.version !== '1.2') {
    merges.unshift({ offset: Math.max(0, text.search(/^%YAML/m)), message: `a %YAML ${doc.directives.yaml.version} directive: the rules are read as YAML 1.2 only (1.1 reads yes as true, 4:16 as 256 and applies merge keys); remove the directive` });
  }
  if (doc.errors.length > 0 || unresolved.length > 0 || merges.length > 0) {
    throw new RulesError([...doc.errors, ...unresolved].map((e) => {
      const pos = lines.linePos(e.pos[0]);
      // A key written twice is named, and so is a tag's field. A syntax error, near the field
      // the parse had reached: the node just before it, in what was parsed (`near
      // consumers.registry[0]` for a line indented one space short there), else the one at
      // it; the top level when neither has a name.
      const named = e.code === 'DUPLICATE_KEY' || e.code === 'TAG_RESOLVE_FAILED';
      // A tag's warning is at the tag; its node, the value, just after it.
      const path = e.code === 'MULTIPLE_DOCS' ? [] : e.code === 'TAG_RESOLVE_FAILED' ? pathAt(doc, e.pos[1] + 1) : named ? pathAt(doc, e.pos[0]) : [pathAt(doc, Math.max(0, e.pos[0] - 1)), pathAt(doc, e.pos[0])].find((p) => p.length > 0) ?? [];
      const name = fieldName(path);
      const field = name === '' ? '' : named ? name : `near ${name}`;
      const message = e.code === 'DUPLICATE_KEY' ? 'written twice in the same mapping: the second would silently replace the first'
        : e.code === 'TAG_RESOLVE_FAILED' ? `YAML: ${yamlFault(e.message, e.code)}: driftguard does not expand tags; write the value itself`
        : e.code === 'MULTIPLE_DOCS' ? 'YAML: a second document starts here (---): the rules file holds one'
        : `YAML: ${yamlFault(e.message, e.code)}`;
      return { file: source, line: pos.line, column: pos.col, field, message };
    }).concat(merges.map(({ offset, message }) => {
      const pos = lines.linePos(offset);
      return { file: source, line: pos.line, column: pos.col, field: fieldName(pathAt(doc, offset)), message };
    })));
  }
  let data: Record<string, unknown> | null;
  try {
    data = doc.toJS({ maxAliasCount: MAX_ALIASES }) as Record<string, unknown> | null;
  } catch (err) {
    // An alias whose anchor is not set before it, or aliases that expand too far (a "billion
    // laughs" file): named at the first alias that cannot be resolved, else the first alias.
    let at: number | undefined;
    let first: number | undefined;
    visit(doc, { Alias(_key, node) {
      first ??= node.range?.[0];
      if (node.resolve(doc) === undefined) { at = node.range?.[0]; return visit.BREAK; }
      return undefined;
    } });
    const offset = at ?? first ?? 0;
    const pos = lines.linePos(offset);
    const path = pathAt(doc, offset);
    throw new RulesError([{ file: source, line: pos.line, column: pos.col, field: path.length > 0 ? fieldName(path) : '', message: `YAML: ${yamlFault((err as Error).message)}` }]);
  }
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new RulesError([{ file: source, line: 1, column: 1, field: '', message: 'the rules file must be a YAML mapping' }]);
  }
  const overridden: Record<string, string> = {};
  // A `proxy:` that is not a mapping takes no override: the schema names it (`proxy: must be
  // object`), where setting a field on it threw a TypeError with no file, line or field.
  const proxy = data.proxy ?? {};
  const takes = typeof proxy === 'object' && !Array.isArray(proxy);
  for (const key of OVERRIDE_KEYS) {
    const value = overrides[key];
    if (value === undefined || !takes) continue;
    ((data.proxy = proxy) as Record<string, unknown>)[key] = value;
    overridden[`proxy.${key}`] = overrides.from?.[key] ?? `the ${key} override`;
  }
  const at = new Locator(source, doc, lines, overridden);
  if (!validateSchema(data)) throw new RulesError(schemaProblems(validateSchema.errors ?? [], at, data));
  return build(data as unknown as RawRules, source, bytes, at);
}

/** A template's shape decoded, as a router that decodes compares it (canonical literals decode). */
function decodedShape(shape: string): string {
  try { return decodeURIComponent(shape); } catch { return shape; }
}

// ---- the shape the schema guarantees (defaults applied) ----
interface RawRules {
  proxy: { listen: string; upstream: string; admin: string; probes?: string; mode: 'enforce' | 'audit'; timeouts: { connect: string; response: string; clientIdle?: string; clientKeepAlive: string; request: string; clientRead: string; tunnelIdle: string; upstreamIdle: string }; connections?: number; clientConnections: number; ignoredCookies: string[]; upstreamHost?: string };
  identity: {
    issuers: { issuer: string; profile: IssuerProfile; trustDomain?: string; audiences: string[]; algorithms: string[]; typ?: string; jwks?: { file?: string; url?: string; discovery?: string; tokenFile?: string; caFile?: string; refresh?: string; cooldown?: string; timeout?: string; insecureHttp?: boolean } }[];
    clockSkew: string; maxTokenLifetime: { automation: string; human: string }; cache: { maxEntries: number; maxTokenBytes: number; maxBytes: number };
  };
  consumers: { unknown: 'deny' | 'allow'; defaultKind: ConsumerKind; registry: { subject: string; issuer?: string; kind: ConsumerKind; owner?: string; operations?: string[] }[] };
  contract: {
    versions: string[]; minimum?: string; declared: { claim: string; header: string }; blockAt: Threshold;
    operations: { id: string; method: string; path: string; scopes: string[]; sensitivity: Sensitivity; changedIn?: string; public: boolean; deprecated?: { since: string; sunset?: string; replacement?: string; link?: string } }[];
  };
}

function build(raw: RawRules, source: string, bytes: Buffer, at: Locator): Rules {
  const problems: RulesProblem[] = [];
  const fail = (path: Path, message: string) => problems.push(at.problem(path, message));
  /** A duration, or undefined once its problem is reported (so that no second one follows). */
  const duration = (path: Path, text: string): number | undefined => {
    const ms = boundedDuration(text);
    if (typeof ms === 'string') { fail(path, ms); return undefined; }
    return ms;
  };
  /** A duration that becomes a timer: at most MAX_TIMER_MS. */
  // `noLimit`: the field documents 0s as no limit. Elsewhere 0 would turn a timeout off (an
  // upstream that hangs holds its connection for good) or refetch keys every millisecond.
  const timer = (path: Path, text: string, noLimit = false) => {
    const ms = boundedDuration(text, true);
    if (typeof ms === 'string') { fail(path, ms); return 0; }
    if (ms === 0 && /[1-9]/.test(text)) fail(path, `${text} rounds to 0ms: write at least 1ms${noLimit ? ', or 0s for no limit' : ''}`);
    else if (ms === 0 && !noLimit) fail(path, 'must be at least 1ms');
    return ms;
  };
  /**
   * Whole seconds: jose takes its tolerance in seconds, and 1500ms made it 1s for a fresh check
   * but 1.5 s for a token served from the cache, which then took what a fresh check refused.
   */
  const clockSkew = (text: string) => {
    const ms = duration(['identity', 'clockSkew'], text);
    if (ms === undefined) return 0;
    if (ms % 1000 !== 0) fail(['identity', 'clockSkew'], `${text} is not a whole number of seconds, as the times in a token are: write ${Math.floor(ms / 1000)}s or ${Math.ceil(ms / 1000)}s`);
    // A clock that far off needs fixing, not tolerating: every token would pass for that long after it expired.
    else if (ms > MAX_CLOCK_SKEW_MS) fail(['identity', 'clockSkew'], `${text} is more than 5m: a token would be accepted that long after it expired`);
    return ms;
  };
  /** A lifetime no token can stay under (0s) refuses every token of that kind. */
  const lifetime = (kind: 'automation' | 'human', text: string) => {
    const ms = duration(['identity', 'maxTokenLifetime', kind], text);
    if (ms === undefined) return 0;
    if (ms === 0 && !/[1-9]/.test(text)) fail(['identity', 'maxTokenLifetime', kind], 'must be more than 0s: no token could pass');
    else if (ms < 1000) fail(['identity', 'maxTokenLifetime', kind], `${text} is less than 1s, the unit of the times in a token: no token could pass`);
    return ms;
  };
  const time = (path: Path, text: string) => {
    try { return parseTime(text); } catch (err) { fail(path, (err as Error).message); return 0; }
  };
  const base = dirname(source);

  // proxy
  for (const key of ['listen', 'admin', 'probes'] as const) {
    const value = raw.proxy[key];
    if (value !== undefined && !parseAddress(value)) fail(['proxy', key], `"${value}" is not host:port`);
  }
  // Two listeners on one port: the second could never bind (a wildcard address takes the port
  // on every address). Said here, so that `check` says it, not only a failed start.
  const listeners = (['listen', 'admin', 'probes'] as const).flatMap((key) => {
    const a = raw.proxy[key] !== undefined ? parseAddress(raw.proxy[key]) : undefined;
    return a && a.port !== 0 ? [{ key, ...a }] : [];
  });
  listeners.forEach((b, i) => {
    const a = listeners.slice(0, i).find((x) => x.port === b.port && sameSocket(x.host, b.host));
    if (!a) return;
    // Blamed on the one a flag or variable set, where only one was: the file's line is right.
    const [blamed, other] = Object.hasOwn(at.overridden, `proxy.${a.key}`) && !Object.hasOwn(at.overridden, `proxy.${b.key}`) ? [a, b] : [b, a];
    fail(['proxy', blamed.key], `must differ from proxy.${other.key}: both listen on port ${b.port}`);
  });
  try {
    const u = new URL(raw.proxy.upstream);
    if (u.pathname !== '/' || u.search || u.hash || u.username || u.password) fail(['proxy', 'upstream'], 'must be an origin only (scheme, host, port), without path, query or credentials');
    // Not quoted: a URL that does not parse may still carry a credential (user:pass@, ?token=).
  } catch { fail(['proxy', 'upstream'], 'is not a URL'); }
  // While the upstream prepares its answer the client's connection is silent: an idle limit
  // shorter than that wait would cut answers the response timeout allows.
  const idleMs = raw.proxy.timeouts.clientIdle === undefined ? 0 : parseDurationOr0(raw.proxy.timeouts.clientIdle);
  if (idleMs > 0 && idleMs <= parseDurationOr0(raw.proxy.timeouts.response)) {
    fail(['proxy', 'timeouts', 'clientIdle'], 'must be longer than proxy.timeouts.response (the client waits that long for an answer in silence), or 0s for no limit');
  }

  // identity
  const issuers: IssuerRules[] = [];
  /**
   * A key set file is read here, once, with the rules: a missing, broken or keyless one stops
   * start-up (or the reload) at its field, not with a bare parse error, and a pod never turns
   * ready refusing every token. The key set is built from what was read here.
   */
  const fileJwks = (file: string, iss: RawRules['identity']['issuers'][number], path: Path): JwksSource => {
    try {
      return { kind: 'file', file, keys: parseJwks(readJwksFile(file), file, iss.profile === 'spiffe' ? jwtSvidKeys : undefined, iss.algorithms) };
    } catch (err) {
      fail(path, (err as Error).message);
      return { kind: 'file', file, keys: { keys: [] } };
    }
  };
  /**
   * A file a key set's discovery reads at every fetch (the token, the CA), written in the rules:
   * missing or unreadable, the pod never turned ready, with nothing saying why at start-up.
   * The in-cluster paths are not checked here: they exist in the pod, not where `check` runs.
   */
  const fetchReads = (file: string, path: Path): void => {
    try {
      if (!statSync(file).isFile()) fail(path, `${file} is not a regular file`);
      else accessSync(file, constants.R_OK);
    } catch (err) {
      fail(path, `${file} cannot be read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  };
  const issuerNames = new Set<string>();
  raw.identity.issuers.forEach((iss, i) => {
    if (issuerNames.has(iss.issuer)) fail(['identity', 'issuers', i, 'issuer'], `issuer "${iss.issuer}" is listed twice`);
    issuerNames.add(iss.issuer);
    const here: Path = ['identity', 'issuers', i];
    // Profile kubernetes may leave jwks out: discovery from the API server, with the pod's token and CA.
    const j = iss.jwks ?? { discovery: inClusterApiServer(), tokenFile: DEFAULT_TOKEN_FILE, caFile: DEFAULT_CA_FILE };
    // The background refresh at least a second apart, as revocation.interval: at 1ms one pod
    // fetched its keys 637 times a second (with profile kubernetes, two API server requests
    // each). The cooldown spaces the fetches that tokens ask for (an unknown kid, a signature
    // no key verifies): under 1s, anyone sending forged tokens sets how often the key server is hit.
    const aSecondAtLeast = (field: 'refresh' | 'cooldown', text: string, why: string) => {
      const ms = timer([...here, 'jwks', field], text);
      if (ms > 0 && ms < 1000) fail([...here, 'jwks', field], `${text} is less than 1s: ${why}`);
      return ms;
    };
    const timing = () => ({
      refreshMs: aSecondAtLeast('refresh', j.refresh ?? '5m', 'every pod would fetch the keys that often, without a single token asking'),
      cooldownMs: aSecondAtLeast('cooldown', j.cooldown ?? '30s', 'tokens naming unknown key ids would make every pod fetch the keys that often'),
      timeoutMs: timer([...here, 'jwks', 'timeout'], j.timeout ?? '5s'),
    });
    const jwks: JwksSource = j.file !== undefined
      ? fileJwks(resolve(base, j.file), iss, [...here, 'jwks', 'file'])
      : j.url !== undefined ? { kind: 'url' as const, url: j.url, ...timing() }
      : {
          kind: 'discovery' as const, discovery: discoveryUrl(j.discovery!),
          ...(j.tokenFile !== undefined ? { tokenFile: resolve(base, j.tokenFile) } : {}),
          ...(j.caFile !== undefined ? { caFile: resolve(base, j.caFile) } : {}),
          ...timing(),
        };
    // The pod's own projected token and CA, written out as the README shows: read in the pod,
    // not where `check` runs (a CI machine has neither).
    const tokenFile = iss.jwks?.tokenFile !== undefined ? resolve(base, iss.jwks.tokenFile) : undefined;
    const caFile = iss.jwks?.caFile !== undefined ? resolve(base, iss.jwks.caFile) : undefined;
    if (tokenFile !== undefined && tokenFile !== DEFAULT_TOKEN_FILE) fetchReads(tokenFile, [...here, 'jwks', 'tokenFile']);
    if (caFile !== undefined && caFile !== DEFAULT_CA_FILE) fetchReads(caFile, [...here, 'jwks', 'caFile']);
    // Keys fetched over plain http from another host can be swapped by anyone on the path, and
    // with them every token forged (OpenID Connect Discovery: jwks_uri MUST be https). On
    // loopback, or where the operator says the path is protected (a mesh's mTLS), allowed.
    const fetched = j.url ?? j.discovery;
    // Not quoted, as proxy.upstream: a URL that does not parse may still carry a credential. A
    // bad one was taken, and every token then refused as identity-unavailable for good (its
    // fetch failed, read as a passing outage, and a reload to it retried every 30 s).
    if (fetched !== undefined && !URL.canParse(fetched)) fail([...here, 'jwks', j.url !== undefined ? 'url' : 'discovery'], 'is not a URL');
    else if (fetched !== undefined && plainHttpElsewhere(fetched) && j.insecureHttp !== true) {
      fail([...here, 'jwks', j.url !== undefined ? 'url' : 'discovery'], 'is plain http to a host that is not loopback: anyone on the path could substitute the keys and forge any token; use https, or set insecureHttp: true where the path is protected (a mesh\'s mTLS)');
    }
    if (jwks.kind === 'discovery' && jwks.tokenFile !== undefined && !jwks.discovery.startsWith('https://')) {
      fail([...here, 'jwks', 'tokenFile'], 'a bearer token is only sent over https: the discovery URL must be https');
    }
    if (iss.profile === 'kubernetes') {
      iss.audiences.forEach((a, k) => {
        const why = refusedAudience(a, iss.issuer, jwks.kind === 'discovery' ? jwks.discovery : undefined);
        if (why) fail([...here, 'audiences', k], why);
      });
    }
    if (iss.profile === 'spiffe') {
      iss.algorithms.forEach((a, k) => {
        if (!SVID_ALGORITHMS.has(a)) fail([...here, 'algorithms', k], `${a} is not allowed for JWT-SVIDs (the JWT-SVID specification allows RS, ES and PS algorithms only)`);
      });
    } else if (iss.trustDomain !== undefined) {
      fail([...here, 'trustDomain'], 'only for profile spiffe');
    }
    issuers.push(Object.freeze({
      issuer: iss.issuer, profile: iss.profile, ...(iss.trustDomain !== undefined ? { trustDomain: iss.trustDomain } : {}),
      audiences: Object.freeze([...iss.audiences]), algorithms: Object.freeze([...iss.algorithms]), ...(iss.typ ? { typ: iss.typ } : {}), jwks: Object.freeze(jwks),
    }));
  });
  // Two spiffe issuers for one trust domain would make an SVID without iss ambiguous.
  const domains = new Map<string, number>();
  raw.identity.issuers.forEach((iss, i) => {
    if (iss.profile !== 'spiffe' || iss.trustDomain === undefined) return;
    if (domains.has(iss.trustDomain)) fail(['identity', 'issuers', i, 'trustDomain'], `trust domain "${iss.trustDomain}" is already identity.issuers[${domains.get(iss.trustDomain)}]'s`);
    else domains.set(iss.trustDomain, i);
  });

  // contract
  const versions = raw.contract.versions;
  const rank = new Map(versions.map((v, i) => [v, i]));
  const minimum = raw.contract.minimum ?? versions[0]!;
  if (!rank.has(minimum)) fail(['contract', 'minimum'], `"${minimum}" is not one of contract.versions`);
  const ids = new Set<string>();
  const routes = new Map<string, number>();
  const foldedRoutes = new Map<string, { i: number; slashed: boolean; shape: string }>();
  /** Literals by method, the path before them (as written) and their fold: `GET /|admin` → `Admin` of operation 3. */
  const foldedLiterals = new Map<string, { literal: string; i: number }>();
  const operations: Operation[] = [];
  /** Each operation's parsed template (undefined where it was refused), for the crossing check. */
  const templates: (Template | undefined)[] = [];
  raw.contract.operations.forEach((op, i) => {
    const here: Path = ['contract', 'operations', i];
    if (ids.has(op.id)) fail([...here, 'id'], `operation id "${op.id}" is used twice`);
    ids.add(op.id);
    const template = parseTemplate(op.path);
    templates[i] = typeof template === 'string' ? undefined : template;
    if (typeof template === 'string') fail([...here, 'path'], template);
    else {
      const key = `${op.method} ${template.shape}`;
      const other = routes.get(key);
      if (other !== undefined) fail([...here, 'path'], `${op.method} ${op.path} matches the same requests as contract.operations[${other}]`);
      routes.set(key, i);
      // Literals that differ only in case (/items/{id} and /Items/{id}): an upstream router that
      // ignores case (Express, Spring's default) may run the other's handler, whose scopes and
      // sensitivity driftguard did not apply.
      // And paths that differ only by a trailing slash (/items and /items/): a router that
      // ignores one (Express's default) may run either for both, and the operation check would
      // refuse both (proxy/checks/operation.ts, decideSlash).
      // Decoded too: /p/a:b and /p/a%3Ab are one path to a router that decodes (Django, Spring).
      // HEAD is decided among the HEAD and GET operations together (operation.ts), and
      // routers serve HEAD from GET routes: the two are weighed as one method here. A HEAD and
      // a GET of the very same path are two operations, not twins.
      const weighedAs = op.method === 'HEAD' ? 'GET' : op.method;
      const slashed = template.shape.length > 1 && template.shape.endsWith('/');
      const folded = `${weighedAs} ${decodedShape(slashed ? template.shape.slice(0, -1) : template.shape).toLowerCase()}`;
      const twin = foldedRoutes.get(folded);
      if (other === undefined && twin !== undefined && twin.shape !== template.shape) {
        fail([...here, 'path'], twin.slashed !== slashed
          ? `${op.method} ${op.path} differs only by a trailing / from contract.operations[${twin.i}]'s path: an upstream that ignores trailing slashes would take one for the other, and driftguard refuses both`
          : `${op.method} ${op.path} differs only in case or percent-encoding from contract.operations[${twin.i}]'s path: an upstream that ignores case or decodes would take one for the other`);
      }
      foldedRoutes.set(folded, { i, slashed, shape: template.shape });
      // Two literals of one fold at one place (/Admin/{page} and /admin/view; /p/a:b/{x} and
      // /p/a%3Ab/view): a router that ignores case or decodes cannot tell which the request
      // names, and the operation check cannot say which it would run.
      let prefix = '';
      for (const segment of template.segments) {
        if ('literal' in segment) {
          const key = `${weighedAs} ${prefix}\u0000${foldSegment(segment.literal)}`;
          const seen = foldedLiterals.get(key);
          if (seen && seen.literal !== segment.literal && twin === undefined) {
            fail([...here, 'path'], `${op.method} ${op.path}: its segment "${segment.literal}" differs only in case or percent-encoding from "${seen.literal}" of contract.operations[${seen.i}] at the same place: an upstream that ignores case or decodes could run either for both`);
            break;
          }
          if (!seen) foldedLiterals.set(key, { literal: segment.literal, i });
          prefix += `/${segment.literal}`;
        } else prefix += '/{}';
      }
    }
    if (op.public && op.scopes.length > 0) fail([...here, 'scopes'], 'a public operation needs no credential, so its scopes would never be checked: drop public, or the scopes');
    if (op.changedIn !== undefined && !rank.has(op.changedIn)) fail([...here, 'changedIn'], `"${op.changedIn}" is not one of contract.versions`);
    let deprecated: Operation['deprecated'];
    if (op.deprecated) {
      const d = op.deprecated;
      // To the whole second, as the Deprecation (@seconds) and Sunset (HTTP-date) headers say
      // them: a deprecation enforced half a second after the instant its header names would
      // contradict it.
      const sinceMs = wholeSecond(time([...here, 'deprecated', 'since'], d.since));
      const sunsetMs = d.sunset !== undefined ? wholeSecond(time([...here, 'deprecated', 'sunset'], d.sunset)) : undefined;
      if (sunsetMs !== undefined && sunsetMs < sinceMs) fail([...here, 'deprecated', 'sunset'], 'sunset is before since');
      deprecated = Object.freeze({ sinceMs, ...(sunsetMs !== undefined ? { sunsetMs } : {}), ...(d.replacement ? { replacement: d.replacement } : {}), ...(d.link ? { link: d.link } : {}) });
    }
    operations.push(Object.freeze({
      id: op.id, method: op.method, path: op.path, scopes: Object.freeze([...op.scopes]), sensitivity: op.sensitivity,
      ...(op.changedIn !== undefined ? { changedIn: op.changedIn } : {}), public: op.public, ...(deprecated ? { deprecated } : {}),
    }));
  });
  crossingTemplates(raw.contract.operations, templates, fail);
  raw.contract.operations.forEach((op, i) => {
    const r = op.deprecated?.replacement;
    if (r !== undefined && !ids.has(r)) fail(['contract', 'operations', i, 'deprecated', 'replacement'], `"${r}" is not an operation id`);
    if (r === op.id) fail(['contract', 'operations', i, 'deprecated', 'replacement'], 'an operation cannot replace itself');
    // Callers are told to move to it: not to one that is going too (a sunset: gone, answering
    // 410, at a date) or that names its own replacement (the end of that chain is where to go).
    // One whose deprecation is only announced, with neither, may be where callers go for now.
    else if (r !== undefined) {
      const next = raw.contract.operations.find((o) => o.id === r)?.deprecated;
      if (next?.sunset !== undefined || next?.replacement !== undefined) {
        fail(['contract', 'operations', i, 'deprecated', 'replacement'], `"${r}" is deprecated itself, with ${next.sunset !== undefined ? 'a sunset' : `a replacement (${next.replacement})`}: name the operation callers should move to now`);
      }
    }
  });
  // The header a caller declares its contract version in must be one with no other meaning:
  // Authorization or Connection there made every request with a token claim a conflict.
  const declaredHeader = raw.contract.declared.header.toLowerCase();
  if (reservedHeader(declaredHeader)) {
    fail(['contract', 'declared', 'header'], `${raw.contract.declared.header} has a meaning of its own in HTTP or to driftguard: name a header of its own (the default is Contract-Version)`);
  }

  // consumers
  /**
   * The one issuer that vouches for a registered subject. A subject is a string any issuer
   * could put in sub: without this, an OAuth provider's token with sub
   * spiffe://…/agent, or a dev cluster's system:serviceaccount:shop:checkout, was the
   * production consumer, with its kind, owner and declared operations.
   */
  const consumerIssuer = (c: RawRules['consumers']['registry'][number], i: number): string => {
    if (c.issuer !== undefined) {
      const named = issuers.find((iss) => iss.issuer === c.issuer);
      const why = named && foreignSubject(named, c.subject, issuers);
      if (!named) fail(['consumers', 'registry', i, 'issuer'], `"${c.issuer}" is not an identity.issuers[].issuer`);
      else if (why) fail(['consumers', 'registry', i, 'issuer'], `issuer "${c.issuer}" cannot vouch for subject "${c.subject}": ${why}`);
      return c.issuer;
    }
    const can = issuers.filter((iss) => foreignSubject(iss, c.subject, issuers) === undefined);
    // None: no token can carry the subject (the verifier applies the same rule), so the entry
    // is bound to no issuer and matches nothing, as before. It is not an error: an issuer
    // swapped out of the rules leaves its consumers listed until the registry catches up.
    if (can.length <= 1) return can[0]?.issuer ?? '';
    fail(['consumers', 'registry', i, 'subject'], `${can.length} issuers can vouch for subject "${c.subject}" (${can.map((iss) => iss.issuer).join(', ')}): set issuer`);
    return '';
  };
  const registry = new Map<string, ConsumerRules>();
  raw.consumers.registry.forEach((c, i) => {
    if (registry.has(c.subject)) fail(['consumers', 'registry', i, 'subject'], `subject "${c.subject}" is listed twice`);
    c.operations?.forEach((id, k) => { if (!ids.has(id)) fail(['consumers', 'registry', i, 'operations', k], `"${id}" is not an operation id`); });
    const issuer = consumerIssuer(c, i);
    // A JWT-SVID's subject is its SPIFFE ID, which the verifier refuses unless valid: an entry
    // a spiffe issuer can never vouch for would be silently dead, its kind and owner with it.
    if (issuers.find((iss) => iss.issuer === issuer)?.profile === 'spiffe') {
      const parsed = parseSpiffeId(c.subject);
      if ('problem' in parsed) fail(['consumers', 'registry', i, 'subject'], `is not a SPIFFE ID a JWT-SVID can carry (${parsed.problem}), so issuer "${issuer}" can never vouch for it`);
    }
    registry.set(c.subject, Object.freeze({ subject: c.subject, issuer, kind: c.kind, ...(c.owner ? { owner: c.owner } : {}), ...(c.operations ? { operations: new Set(c.operations) } : {}) }));
  });

  const rules: Rules = {
    source,
    hash: createHash('sha256').update(bytes).digest('hex').slice(0, 16),
    proxy: Object.freeze({
      listen: raw.proxy.listen, upstream: raw.proxy.upstream.replace(/\/$/, ''), admin: raw.proxy.admin, ...(raw.proxy.probes !== undefined ? { probes: raw.proxy.probes } : {}), mode: raw.proxy.mode,
      timeouts: Object.freeze({
        connectMs: timer(['proxy', 'timeouts', 'connect'], raw.proxy.timeouts.connect),
        responseMs: timer(['proxy', 'timeouts', 'response'], raw.proxy.timeouts.response),
        clientIdleMs: raw.proxy.timeouts.clientIdle !== undefined
          ? timer(['proxy', 'timeouts', 'clientIdle'], raw.proxy.timeouts.clientIdle, true)
          : Math.min(MAX_TIMER_MS, Math.max(60_000, 2 * parseDurationOr0(raw.proxy.timeouts.response))),
        requestMs: timer(['proxy', 'timeouts', 'request'], raw.proxy.timeouts.request, true),
        clientReadMs: timer(['proxy', 'timeouts', 'clientRead'], raw.proxy.timeouts.clientRead, true),
        clientKeepAliveMs: timer(['proxy', 'timeouts', 'clientKeepAlive'], raw.proxy.timeouts.clientKeepAlive),
        tunnelIdleMs: timer(['proxy', 'timeouts', 'tunnelIdle'], raw.proxy.timeouts.tunnelIdle, true),
        upstreamIdleMs: timer(['proxy', 'timeouts', 'upstreamIdle'], raw.proxy.timeouts.upstreamIdle),
      }),
      // Each client connection forwards one request at a time: by default the pool is never the limit.
      connections: raw.proxy.connections ?? Math.min(MAX_UPSTREAM_CONNECTIONS, raw.proxy.clientConnections),
      clientConnections: raw.proxy.clientConnections,
      ignoredCookies: Object.freeze([...raw.proxy.ignoredCookies]),
      ...(raw.proxy.upstreamHost !== undefined ? { upstreamHost: raw.proxy.upstreamHost } : {}),
    }),
    identity: Object.freeze({
      issuers: Object.freeze(issuers),
      clockSkewMs: clockSkew(raw.identity.clockSkew),
      maxTokenLifetimeMs: Object.freeze({
        automation: lifetime('automation', raw.identity.maxTokenLifetime.automation),
        human: lifetime('human', raw.identity.maxTokenLifetime.human),
      }),
      cache: Object.freeze({ ...raw.identity.cache }),
    }),
    consumers: Object.freeze({ unknown: raw.consumers.unknown, defaultKind: raw.consumers.defaultKind, registry }),
    contract: Object.freeze({
      versions: Object.freeze([...versions]), rank, current: versions[versions.length - 1]!, minimum,
      declared: Object.freeze({ ...raw.contract.declared }), blockAt: raw.contract.blockAt, operations: Object.freeze(operations),
    }),
    raw: deepFreeze(raw as unknown as Record<string, unknown>),
    ...(Object.keys(at.overridden).length > 0 ? { overridden: at.overridden } : {}),
  };
  const named = [source, ...rules.identity.issuers.flatMap((i) => i.jwks.kind === 'file' ? [i.jwks.file] : i.jwks.kind === 'discovery' ? [i.jwks.tokenFile, i.jwks.caFile].filter((f) => f !== undefined) : [])];
  for (const validate of validators) {
    // A validator that throws is a defect: still a problem of this file, beside the others
    // found, never a crash of `check`, the start or a reload.
    try { validate(raw as unknown as Record<string, unknown>, fail, base, named); } catch (err) { fail([], `could not be checked (${(err as Error).name}: ${(err as Error).message}); this is a defect of driftguard's, please report it`); }
  }
  if (problems.length > 0) {
    const revocation = (raw as unknown as { revocation?: Record<string, unknown> }).revocation ?? {};
    const lists = ['file', 'adminCredentialFile'].flatMap((k) => typeof revocation[k] === 'string' ? [resolve(base, revocation[k])] : []);
    throw new RulesError(problems, { files: [...named.slice(1), ...lists] });
  }
  return Object.freeze(rules);
}
