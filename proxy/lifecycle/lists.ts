// Revocation lists from a file and from a URL. Both are JSON or YAML:
//   revocations:
//     - { kind: jti|task|subject|kid, value: "...", reason: "...", end: 2026-12-01T00:00:00Z, id: optional }
// (a bare array works too). A list is authoritative: entries removed from it are lifted at
// the next read. The file is checked every interval and re-read when it changed; the URL is
// fetched every interval (with If-None-Match). A list that cannot be read or parsed keeps
// the last good one in force and is reported, so a flapping list server never un-revokes.

import { statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { parseDocument, LineCounter, isMap, isSeq, type Node } from 'yaml';
import { isRevocationKind, REVOCATION_KINDS, type Revocation, type RevocationStore } from './revocations.ts';
import { parseTime } from '../rules/durations.ts';
import { RulesError, fieldName, firstProblems, formatProblem, keyText, type RulesProblem } from '../rules/load.ts';
import type { Log } from '../features.ts';
import type { FeatureMode } from './config.ts';
import { getDocument } from '../lib/bounded.ts';
import { holdsToken, jsonFault, jsonFaultAt, redactUrl, yamlFault } from '../lib/redact.ts';
import { readRegularFile } from '../lib/files.ts';

const ENTRY_FIELDS: ReadonlySet<string> = new Set(['kind', 'value', 'reason', 'end', 'id']);

/** What is wrong with an entry (index) or its field (key), before its position is known. */
interface EntryProblem {
  readonly index?: number;
  readonly key?: string;
  /** The problem is the key itself (an unknown field), not its value. */
  readonly atKey?: boolean;
  readonly field: string;
  readonly message: string;
}

/**
 * Parse a list document; problems name the source, line, column and entry field.
 *
 * JSON, what list servers serve, is read with JSON.parse: a list is parsed on the request
 * thread at every change, and yaml's parser takes about ten times as long (a JSON list of
 * 10,000 entries: 25-45 ms this way, 340-420 ms through the document, measured). Only YAML,
 * or a list with problems, is parsed as a document, for the positions its problems name. A
 * name written twice in one object is a problem in both (JSON.parse keeps the second: a second
 * `revocations` emptied the list, a second `value` revoked another token), found in JSON by a
 * scan of the text (duplicateKeyAt), and so is a tag YAML does not define (`!env T` loaded as
 * the text `T`).
 *
 * The document also holds about 75 times its text in memory (a YAML list of 10,000 entries,
 * 1.4 MiB: 107 MiB of heap; JSON.parse, 8 MiB for 40,000 entries), and a 6 MiB YAML list
 * exhausted the chart's 96 MiB heap and ended the process. So no document is built for a
 * text larger than MAX_DOCUMENT_BYTES: a YAML list is refused above it, and the problems of
 * a larger JSON list are reported by entry and field, where JSON.parse cannot say a line.
 */
export function parseList(text: string, name: string, source: 'file' | 'url', now: number, maxEntries: number): Revocation[] | RulesProblem[] {
  const parsed = parse(text, name, source, now, maxEntries);
  return isProblems(parsed) ? firstProblems(parsed) : parsed;
}


/** The largest text parsed as a YAML document (see parseList): about 20 MiB of heap, for 1,700 entries. */
export const MAX_DOCUMENT_BYTES = 256 * 1024;

function parse(text: string, name: string, source: 'file' | 'url', now: number, maxEntries: number): Revocation[] | RulesProblem[] {
  const documentFits = text.length <= MAX_DOCUMENT_BYTES;
  // What JSON.parse builds follows the values in the text, not its bytes: 8 MiB of `[],`, 2.8
  // million arrays, ran the chart's heap out by itself. A text larger than a document
  // may be (so JSON) whose values are more than maxEntries entries can have is refused unparsed.
  if (!documentFits && jsonValuesOver(text, maxEntries)) {
    return [{ file: name, line: 1, column: 1, field: '', message: `the list has more entries than revocation.maxEntries (${maxEntries}) allows` }];
  }
  let json: unknown = NOT_JSON;
  let notJson: unknown;
  try { json = JSON.parse(text); } catch (err) { notJson = err; /* YAML, or broken JSON: the document says where */ }
  if (json !== NOT_JSON) {
    const twice = duplicateKeyAt(text);
    if (twice !== undefined) {
      const before = text.slice(0, twice);
      const line = (before.match(/\n/g)?.length ?? 0) + 1;
      return [{ file: name, line, column: twice - before.lastIndexOf('\n'), field: '', message: 'a name written twice in the same object: JSON.parse would keep the second and silently drop the first' }];
    }
    const entries = readEntries(json, source, now, maxEntries);
    if (!isEntryProblems(entries)) return entries;
    if (!documentFits) return entries.map((p) => ({ file: name, line: 1, column: 1, field: p.field, message: p.message }));
  } else if (!documentFits) {
    // JSON.parse names the line and column of a JSON mistake (Node 24); a YAML list this large
    // is not read. Never its quote of the text around it (jsonFault): a list may hold secrets.
    const at = jsonFaultAt(notJson);
    return [{
      file: name, line: at?.line ?? 1, column: at?.column ?? 1, field: '',
      message: `larger than ${MAX_DOCUMENT_BYTES / 1024} KiB, the most a YAML list may be, and ${jsonFault(notJson)}: write a larger list as JSON`,
    }];
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false });
  // A tag the parser does not know is only a warning to it: the value is loaded as its text.
  const faults = [...doc.errors, ...doc.warnings.filter((w) => w.code === 'TAG_RESOLVE_FAILED')];
  if (faults.length) return faults.map((e) => { const p = lines.linePos(e.pos[0]); return { file: name, line: p.line, column: p.col, field: '', message: `YAML: ${yamlFault(e.message, e.code)}${e.code === 'TAG_RESOLVE_FAILED' ? ': tags are not expanded; write the value itself' : ''}` }; });
  const entries = readEntries(doc.toJS(), source, now, maxEntries);
  if (!isEntryProblems(entries)) return entries;
  let seq: unknown = doc.contents;
  if (isMap(seq)) seq = seq.get('revocations', true);
  return entries.map((p) => {
    const item = isSeq(seq) && p.index !== undefined ? seq.items[p.index] as Node : undefined;
    const pair = isMap(item) && p.key !== undefined ? item.items.find((x) => String((x.key as { value?: unknown }).value) === p.key) : undefined;
    const node = (p.atKey ? pair?.key : pair?.value) as Node | undefined ?? item ?? (isSeq(seq) ? seq : doc.contents) as Node | undefined;
    const pos = lines.linePos(node?.range?.[0] ?? 0);
    return { file: name, line: pos.line, column: pos.col, field: p.field, message: p.message };
  });
}

const NOT_JSON = Symbol('not JSON');

/**
 * The offset of the first name written twice in one object of a JSON text JSON.parse has
 * taken (so the text is known to be valid JSON), or undefined. One pass over the text; the
 * names of the objects open at a time are held, as JSON.parse holds their values.
 */
export function duplicateKeyAt(text: string): number | undefined {
  const open: (Set<string> | undefined)[] = [];
  let expectName = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      let j = i + 1;
      let escaped = false;
      while (j < text.length && text.charCodeAt(j) !== 0x22) { if (text.charCodeAt(j) === 0x5c) { escaped = true; j++; } j++; }
      const names = open[open.length - 1];
      if (expectName && names) {
        const name = escaped ? JSON.parse(text.slice(i, j + 1)) as string : text.slice(i + 1, j);
        if (names.has(name)) return i;
        names.add(name);
        expectName = false;
      }
      i = j;
    } else if (c === 0x7b) { open.push(new Set()); expectName = true; }
    else if (c === 0x5b) { open.push(undefined); expectName = false; }
    else if (c === 0x7d || c === 0x5d) { open.pop(); expectName = false; }
    else if (c === 0x2c) expectName = open[open.length - 1] !== undefined;
  }
  return undefined;
}

function isEntryProblems(x: Revocation[] | EntryProblem[]): x is EntryProblem[] {
  return x.length > 0 && 'message' in x[0]!;
}

/** A list's entries as plain values (from JSON.parse or the YAML document), or what is wrong with them. */
function readEntries(data: unknown, source: 'file' | 'url', now: number, maxEntries: number): Revocation[] | EntryProblem[] {
  const list = isRecord(data) ? data.revocations : data;
  if (!Array.isArray(list)) return [{ field: 'revocations', message: 'must be a list of revocations (or a mapping with one)' }];
  // Before an entry is built: a revocation (its id hashed) or a problem for each was the heap
  // that ended the process for a list far over the bound.
  if (list.length > maxEntries) return [{ field: 'revocations', message: `the list has ${list.length} entries, more than revocation.maxEntries (${maxEntries})` }];
  const problems: EntryProblem[] = [];
  const out: Revocation[] = [];
  const ids = new Set<string>();
  list.forEach((item: unknown, index) => {
    const problem = (key: string | undefined, message: string, atKey = false) => problems.push({ index, ...(key !== undefined ? { key } : {}), atKey, field: fieldName(['revocations', index, ...(key !== undefined ? [key] : [])]), message });
    if (!isRecord(item)) { problem(undefined, 'must be a mapping with kind, value and reason'); return; }
    // Never the key's text unless it is a word (keyText): a token whose `value:` was left out
    // of an entry is read as a key.
    for (const key of Object.keys(item)) if (!ENTRY_FIELDS.has(key)) problem(key, `unknown field ${keyText(key)}`, true);
    const { kind, value, reason, end, id: given } = item;
    if (!isRevocationKind(kind)) { problem('kind', `must be one of ${REVOCATION_KINDS.join(', ')}`); return; }
    if (typeof value !== 'string' || value === '') { problem('value', 'must be a non-empty string'); return; }
    // A token pasted as the value matches nothing (a jti is the claim, not the token), and it
    // would be listed by GET /revocations: the entry is refused, and the value never quoted.
    if (holdsToken(value)) { problem('value', 'holds a whole token: driftguard never stores a token; name what it names instead (its jti, its subject or its key id)'); return; }
    if (typeof reason !== 'string' || reason === '') { problem('reason', 'must be a non-empty string (why, for operators)'); return; }
    // Told not to paste the token as the value, an operator pastes it as the evidence.
    if (holdsToken(reason)) { problem('reason', 'holds a whole token: driftguard never stores a token; say where it leaked instead'); return; }
    // A string or a number (an incident number written bare); String() made every object "[object Object]".
    if (given !== undefined && !(typeof given === 'string' && given !== '') && !(typeof given === 'number' && Number.isFinite(given))) { problem('id', 'must be a non-empty string or a number'); return; }
    if (given !== undefined && holdsToken(String(given))) { problem('id', 'holds a whole token: driftguard never stores a token'); return; }
    let endMs = Infinity;
    if (end !== undefined) {
      // A Date is a YAML timestamp (a %YAML 1.1 document, a !!timestamp tag), which the parser
      // read without an offset as UTC and rolled 2027-02-30 over to March: quoted, as the rules file wants it.
      if (end instanceof Date) { problem('end', 'must be a quoted string, as in the rules file: a YAML timestamp is read as UTC, and 2027-02-30 as March 2'); return; }
      if (typeof end !== 'string') { problem('end', 'must be a string: an ISO 8601 date or date-time with an offset'); return; }
      try { endMs = parseTime(end); } catch (err) { problem('end', (err as Error).message); return; }
    }
    const id = given !== undefined ? String(given) : `${source}-${createHash('sha256').update(`${kind}\n${value}`).digest('hex').slice(0, 16)}`;
    if (ids.has(id)) { problem('id', `id "${id}" is used twice`); return; }
    ids.add(id);
    out.push({ id, kind, value, reason, endMs, createdMs: now, source });
  });
  return problems.length ? problems : out;
}

/**
 * Room for what a list's wrapper may carry beside its `revocations` (a generator's metadata,
 * other lists of its own): a list at maxEntries whose wrapper held a few objects was refused.
 * A thousand more small values cost nothing to parse.
 */
export const WRAPPER_VALUES = 1_024;

/**
 * Whether JSON `text` holds more values than a list of `maxEntries` entries can: an entry is
 * one mapping of at most five fields, so at most one `{` and six `,`, outside strings, and
 * its wrapper WRAPPER_VALUES more of each. One pass over the characters, without building anything.
 */
export function jsonValuesOver(text: string, maxEntries: number): boolean {
  const maxOpen = maxEntries + WRAPPER_VALUES;
  const maxCommas = 6 * maxEntries + WRAPPER_VALUES;
  let open = 0;
  let commas = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // a backslash: the next character is escaped
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) { if (++open > maxOpen) return true; }
    else if (c === 0x2c) { if (++commas > maxCommas) return true; }
  }
  return false;
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x) && !(x instanceof Date);
}

/**
 * Larger lists are refused, and the last good one stays in force (so are lists with more
 * entries than revocation.maxEntries allows, with the other sources'). A list is held whole
 * and parsed on the request thread, so a list server gone wrong must not be able to fill the
 * sidecar's memory or stall it for seconds. While a changed list is read, its text and entries
 * are held beside the list in force: a list of the default 20,000 entries at 4 MiB, read again
 * while every other table was full, stays within the chart's heap; at 7.6 MiB it did not.
 */
export const MAX_LIST_BYTES = 4 * 1024 * 1024;
/** How soon a list URL that has never been read is tried again (at most its interval). */
export const UNREAD_RETRY_MS = 5_000;
const TOO_LARGE = `the list is larger than ${MAX_LIST_BYTES / 2 ** 20} MiB`;
/** How a list URL is fetched, by its source and by a reload's check of a new one (listUrlProblem). */
const LIST_FETCH = { accept: 'application/json, application/yaml;q=0.9', maxBytes: MAX_LIST_BYTES, tooLarge: () => new Error(TOO_LARGE) } as const;

function isProblems(x: Revocation[] | RulesProblem[]): x is RulesProblem[] {
  return x.length > 0 && 'line' in x[0]!;
}

export interface SourceStatus {
  location: string;
  entries: number;
  lastSuccessAt?: string;
  lastErrorAt?: string;
  lastError?: string;
}

/**
 * Fetch and parse a list URL without applying it: why it cannot be read, or undefined. A reload
 * that names a URL while no list has been read from one is checked so (lifecycle/index.ts):
 * taken unread, it refused every request with a credential and took every pod it reached out of
 * service, for a typo or a list server not deployed yet.
 */
export async function listUrlProblem(url: string, timeoutMs: number, maxEntries: number, now: number): Promise<string | undefined> {
  try {
    const { status, text } = await getDocument(new URL(url), { ...LIST_FETCH, timeoutMs });
    if (text === undefined) return `HTTP ${status}`;
    const parsed = parseList(text, redactUrl(url), 'url', now, maxEntries);
    return isProblems(parsed) ? parsed.map(formatProblem).join('; ') : undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? (err as Error).message;
  }
}

/**
 * Read and parse a list file without applying it: a reload to rules naming a list file that
 * is broken is refused with the list's file:line, as start-up is, instead of being taken
 * while the old list silently stays in force. Throws a RulesError.
 */
export function checkListFile(file: string, now: number, maxEntries: number, others = 0): void {
  const problem = (message: string) => new RulesError([{ file, line: 1, column: 1, field: '', message }]);
  let text: string;
  try {
    // Weighed as it is opened, and read once.
    text = readRegularFile(file, (size) => { if (size > MAX_LIST_BYTES) throw problem(TOO_LARGE); }).toString('utf8');
  } catch (err) {
    if (err instanceof RulesError) throw err;
    throw problem(`cannot read the revocation list: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const parsed = parseList(text, file, 'file', now, maxEntries);
  if (isProblems(parsed)) throw new RulesError(parsed);
  // As start-up weighs it: beside what the journal's revocations take (ListSource's #apply).
  const noRoom = noRoomFor(parsed.length, others, maxEntries);
  if (noRoom !== undefined) throw problem(noRoom);
}

/** Why a list of `entries` has no room beside the `others` units the other sources take; undefined when it has. */
function noRoomFor(entries: number, others: number, maxEntries: number): string | undefined {
  return entries + others > maxEntries ? `the list has ${entries} entries; with the ${others} the other sources take, that is more than revocation.maxEntries (${maxEntries})` : undefined;
}

/** Keep a list source's revocations in the store, refreshed every interval. */
export class ListSource {
  readonly status: SourceStatus;
  readonly #kind: 'file' | 'url';
  readonly #store: RevocationStore;
  readonly #log: Log;
  readonly #now: () => number;
  readonly #timeoutMs: number;
  /** Where to read: the file, or the full URL (which may carry a credential in its query). */
  readonly #target: string;
  #timer?: NodeJS.Timeout;
  #closed = false;
  #seen = '';
  #etag?: string;
  /**
   * The file's stamp or the URL's ETag of a list found broken: not parsed again until it
   * changes. Its problems were reported once and stay in status; parsing a large list again
   * every interval would stall the request thread for nothing.
   */
  #broken?: string;
  /** Entries of the last good read, kept so that an unchanged re-read keeps their creation time. */
  #last = new Map<string, Revocation>();

  /** revocation.maxEntries: revocations held at most, this list's and every other source's together. */
  readonly #maxEntries: number;

  /** revocation.mode in force (read at each use: a reload may change it): what an unread URL means. */
  readonly #mode: () => FeatureMode;

  /** `mode`: revocation.mode in force; enforce when not given. */
  constructor(kind: 'file' | 'url', location: string, store: RevocationStore, options: { log: Log; now: () => number; timeoutMs: number; maxEntries: number; mode?: () => FeatureMode }) {
    this.#kind = kind;
    this.#mode = options.mode ?? (() => 'enforce');
    this.#store = store;
    this.#maxEntries = options.maxEntries;
    this.#log = options.log;
    this.#now = options.now;
    this.#timeoutMs = options.timeoutMs;
    this.#target = location;
    this.status = { location: kind === 'url' ? redactUrl(location) : location, entries: 0 };
    // A file is read before the source starts (start-up stops if it cannot be); a URL may
    // fail, and until it has been read once no credential passes (checks.ts, revocation).
    if (kind === 'url') store.expect('url');
  }

  /** First read. The file must be valid (a RulesError naming the list's line otherwise); the URL may fail (reported). */
  async start(intervalMs: number): Promise<void> {
    if (this.#kind === 'file') {
      const result = this.#readFile();
      if (result) throw new RulesError(result);
    } else if (this.#mode() === 'enforce') {
      await this.refresh();
    } else {
      // Nothing is refused for an unread list under audit or off: start-up does not wait for it.
      void this.refresh().then(() => this.#schedule(intervalMs));
      return;
    }
    this.#schedule(intervalMs);
  }

  /**
   * The next read, once this one is done (a slow fetch never overlaps the next). A URL never
   * read yet is tried again within UNREAD_RETRY_MS: every credential is refused until it is.
   */
  #schedule(intervalMs: number): void {
    if (this.#closed) return;
    const wait = this.#kind === 'url' && this.status.lastSuccessAt === undefined && this.#mode() !== 'off' ? Math.min(intervalMs, UNREAD_RETRY_MS) : intervalMs;
    this.#timer = setTimeout(() => { void this.refresh().then(() => this.#schedule(intervalMs)); }, wait);
    this.#timer.unref();
  }

  /** Read once now; on failure keep the last good list and report. */
  async refresh(): Promise<void> {
    const open = !this.#closed;
    try {
      const problems = this.#kind === 'file' ? this.#readFile() : await this.#fetch();
      if (problems && !(open && this.#closed)) this.#failed(problems.map(formatProblem).join('; '));
    } catch (err) {
      // A fetch retired by a reload while it ran has nothing left to report.
      if (!(open && this.#closed)) this.#failed((err as Error).message);
    }
  }

  get kind(): 'file' | 'url' { return this.#kind; }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
  }

  #readFile(): RulesProblem[] | undefined {
    const file = this.#target;
    const st = statSync(file);
    const stamp = `${st.ino}:${st.size}:${st.mtimeMs}`;
    if (stamp === this.#seen || stamp === this.#broken) return undefined;
    if (st.size > MAX_LIST_BYTES) {
      this.#broken = stamp;
      return [{ file, line: 1, column: 1, field: '', message: TOO_LARGE }];
    }
    const problems = this.#apply(readRegularFile(file).toString('utf8'), stamp);
    if (!problems) { this.#seen = stamp; this.#broken = undefined; }
    return problems;
  }

  async #fetch(): Promise<RulesProblem[] | undefined> {
    const open = !this.#closed;
    const known = this.#broken ?? this.#etag;
    const { status, headers, text } = await getDocument(new URL(this.#target), {
      ...LIST_FETCH,
      ...(known ? { headers: { 'if-none-match': known } } : {}),
      timeoutMs: this.#timeoutMs,
    });
    // Retired by a reload while this fetch ran: the old location's list must not replace (or
    // bring back) what the rules now name.
    if (open && this.#closed) return undefined;
    if (status === 304) {
      // Unchanged: still the good list, or still the broken one (already reported).
      if (this.#broken === undefined) this.#succeeded();
      return undefined;
    }
    if (text === undefined) throw new Error(`HTTP ${status}`);
    const etag = typeof headers.etag === 'string' ? headers.etag : undefined;
    const problems = this.#apply(text, etag);
    if (!problems) { this.#etag = etag; this.#broken = undefined; }
    return problems;
  }

  /**
   * Apply a list read at `version` (the file's stamp, the URL's ETag). A list with problems of
   * its own is marked broken at that version; one refused only because, with the other
   * sources', it has too many entries is not, so that it is read and counted again at the next
   * interval (parsed again rather than kept: a list refused for its size must not be held).
   */
  #apply(text: string, version: string | undefined): RulesProblem[] | undefined {
    const parsed = parseList(text, this.status.location, this.#kind, this.#now(), this.#maxEntries);
    if (isProblems(parsed)) { this.#broken = version; return parsed; }
    // Memory follows the number of entries, not the list's bytes: 8 MiB of short entries is
    // about 200,000 of them, which under the chart's 96 MiB heap ended the process at start.
    // Only revocations in force count: ended ones are dropped lazily.
    // The admin API's take a unit per KiB they hold (unitsOf); this list's entries one each.
    const noRoom = noRoomFor(parsed.length, this.#store.unitsBeside(this.#kind, this.#now()), this.#maxEntries);
    if (noRoom !== undefined) return [{ file: this.status.location, line: 1, column: 1, field: '', message: noRoom }];
    const list = parsed.map((r) => {
      const before = this.#last.get(r.id);
      return before && before.kind === r.kind && before.value === r.value && before.endMs === r.endMs ? before : r;
    });
    this.#last = new Map(list.map((r) => [r.id, r]));
    this.#store.replaceSource(this.#kind, list);
    const changed = this.status.entries !== list.length || this.status.lastSuccessAt === undefined;
    this.status.entries = list.length;
    this.#succeeded();
    if (changed) this.#log({ level: 'info', msg: 'revocation list applied', source: this.#kind, location: this.status.location, entries: list.length });
    return undefined;
  }

  #succeeded(): void {
    this.status.lastSuccessAt = new Date(this.#now()).toISOString();
    delete this.status.lastError;
  }

  #failed(error: string): void {
    this.status.lastError = error;
    this.status.lastErrorAt = new Date(this.#now()).toISOString();
    // A URL never read has no last good list: "stays in force" with 0 entries read as traffic
    // flowing, while every request with a credential is refused (checks.ts, revocation).
    if (this.#kind === 'url' && this.status.lastSuccessAt === undefined) {
      // Said as the mode in force makes it: under off nothing is refused, and an error line
      // claiming every request was, every 5 s, would page someone for nothing.
      const retry = `tried again within ${UNREAD_RETRY_MS / 1000} s`;
      const [level, msg] = {
        enforce: ['error', `revocation list not read yet: every request with a credential is refused with 503 revocation-list-unavailable until it is; ${retry}`],
        audit: ['warn', `revocation list not read yet: every request with a credential is a would-deny (revocation-list-unavailable, revocation.mode audit) until it is; ${retry}`],
        off: ['warn', 'revocation list not read yet (revocation.mode off: nothing is refused for it); tried again every interval'],
      }[this.#mode()];
      this.#log({ level, msg, source: this.#kind, location: this.status.location, error });
      return;
    }
    this.#log({ level: 'warn', msg: 'revocation list not refreshed; the last good list stays in force', source: this.#kind, location: this.status.location, entries: this.status.entries, error });
  }
}

