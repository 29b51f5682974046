// The one canonical form of a request-target that driftguard authorizes and forwards.
// Anything an upstream, a framework or another proxy might read differently from us is
// refused rather than normalised: normalising would authorize one path and let the
// upstream act on another.

// pchar = unreserved / pct-encoded / sub-delims / ":" / "@"  (RFC 3986), minus ";"
// (path parameters: Tomcat and Spring strip them, so /admin;x=1 can reach /admin).
const PCHAR = new Uint8Array(128);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&\'()*+,=:@') PCHAR[c.charCodeAt(0)] = 1;

/**
 * Unreserved characters (RFC 3986 §2.3): one percent-encoded has one plain spelling, which
 * is the canonical one (§6.2.2.2), and `%2E` is a dot to a decoder. Refused encoded.
 */
const UNRESERVED = new Uint8Array(128);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~') UNRESERVED[c.charCodeAt(0)] = 1;

function hex(code: number): number {
  if (code >= 48 && code <= 57) return code - 48;
  if (code >= 65 && code <= 70) return code - 55;
  if (code >= 97 && code <= 102) return code - 87;
  return -1;
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

/** A hex digit in the one spelling RFC 3986 §6.2.2.1 calls canonical: 0-9, A-F. */
function upperHex(code: number): number {
  if (code >= 48 && code <= 57) return code - 48;
  if (code >= 65 && code <= 70) return code - 55;
  return -1;
}

// What is wrong with a segment, as the 400's detail says it (README, Canonical paths).
const EMPTY = 'is empty (//)';
const DOTS = 'is a dot segment (. or ..), which the upstream would resolve';
const BAD_PERCENT = 'holds a % that is not followed by two hex digits';
const LOWER_HEX = 'spells a percent-encoded byte in lowercase hex: write %C3%A9, not %c3%a9';
const ENCODED_SEPARATOR = 'holds an encoded /, \\, ;, #, ? or control character, which a decoder reads as another path';
const DOUBLE = 'is encoded twice (%25 followed by two hex digits)';
const ENCODED_UNRESERVED = 'percent-encodes a letter, a digit or one of - . _ ~: write it as it is';
const NOT_UTF8 = 'holds percent-encoded bytes that are not UTF-8';
const PARAMETER = 'holds a ; (a path parameter, which Tomcat and Spring strip)';
const RAW = 'holds a character that must be percent-encoded (a space, a quote, \\, a control or non-ASCII character)';

/**
 * What keeps `segment` (one path segment, without slashes) from being canonical, or
 * undefined. Refused: empty, `.` or `..` in any spelling, `;` and `#` in any spelling, `%3F`
 * (a decoder that reads the path again ends it there, as at a decoded `#`), `\`,
 * control and raw non-ASCII characters, malformed `%`, lowercase hex in `%xx` (a second
 * spelling of the same byte), percent-encoded `/` `\` `%XX` (double encoding) and controls,
 * percent-encoded unreserved characters (letters, digits, `-._~`: one plain spelling), and
 * percent-encoded bytes that are not UTF-8 (overlong `%C0%AE` is a dot to lenient decoders).
 * Sub-delims, `:` and `@` are taken both ways (`%3A` and `:`), as encodeURIComponent and
 * Python's quote write them: a router that decodes them could only route such a segment
 * elsewhere if a literal of the contract holds the decoded spelling, which the operation check
 * refuses (a segment that reaches a literal only decoded, as one that reaches it only folded).
 */
export function segmentProblem(segment: string): string | undefined {
  if (segment.length === 0) return EMPTY;
  let decodedDots = 0;
  let decodedLength = 0;
  let nonAscii: number[] | undefined;
  for (let i = 0; i < segment.length; i++) {
    const c = segment.charCodeAt(i);
    if (c === 37 /* % */) {
      const [a, b] = [segment.charCodeAt(i + 1), segment.charCodeAt(i + 2)];
      const hi = upperHex(a);
      const lo = upperHex(b);
      if (hi < 0 || lo < 0) return hex(a) >= 0 && hex(b) >= 0 ? LOWER_HEX : BAD_PERCENT;
      const byte = hi * 16 + lo;
      if (byte < 0x20 || byte === 0x7f || byte === 0x2f || byte === 0x5c || byte === 0x3b || byte === 0x23 || byte === 0x3f) return ENCODED_SEPARATOR;
      if (byte === 0x25 && hex(segment.charCodeAt(i + 3)) >= 0 && hex(segment.charCodeAt(i + 4)) >= 0) return DOUBLE;
      if (byte < 0x80 && UNRESERVED[byte]) return ENCODED_UNRESERVED;
      if (byte >= 0x80) (nonAscii ??= []).push(byte);
      else if (nonAscii) { if (!utf8(nonAscii)) return NOT_UTF8; nonAscii = undefined; }
      i += 2;
      decodedLength++;
      continue;
    }
    if (nonAscii) { if (!utf8(nonAscii)) return NOT_UTF8; nonAscii = undefined; }
    if (c === 59 /* ; */) return PARAMETER;
    if (c >= 128 || !PCHAR[c]) return RAW;
    if (c === 46 /* . */) decodedDots++;
    decodedLength++;
  }
  if (nonAscii && !utf8(nonAscii)) return NOT_UTF8;
  // Encoded dots were already refused (they have a plain spelling), so only plain `.` and `..` are left.
  if (decodedDots === decodedLength && decodedLength <= 2) return DOTS;
  return undefined;
}

/** Whether `segment` is canonical (segmentProblem). */
export function isCanonicalSegment(segment: string): boolean {
  return segmentProblem(segment) === undefined;
}

function utf8(bytes: number[]): boolean {
  try { UTF8.decode(new Uint8Array(bytes)); return true; } catch { return false; }
}

export interface Target {
  readonly path: string;
  /** Path split into segments (no leading empty segment; a trailing slash is a last empty one); [] for `/`. */
  readonly segments: readonly string[];
  /** Query string including its leading `?`, or ''. */
  readonly query: string;
}

/**
 * The query is forwarded untouched and never matched, but it must still be plain visible
 * ASCII: a `#` or a raw control would be read differently downstream.
 */
function plainQuery(query: string): boolean {
  for (let i = 0; i < query.length; i++) {
    const c = query.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f || c === 35 /* # */ || c === 92 /* \ */) return false;
  }
  return true;
}

/** Split and check a request-target; undefined when it is not origin-form and canonical (targetProblem says why). */
export function canonicalTarget(url: string | undefined): Target | undefined {
  if (!url || url.charCodeAt(0) !== 47 /* / */) return undefined; // not origin-form: absolute, authority or asterisk
  const q = url.indexOf('?');
  const path = q < 0 ? url : url.slice(0, q);
  const query = q < 0 ? '' : url.slice(q);
  if (!plainQuery(query)) return undefined;
  if (path === '/') return { path, segments: [], query };
  const segments = path.slice(1).split('/');
  // The last segment may be empty: a trailing slash (/api/users/, Django's routes), which
  // matches only a template that ends in one.
  const last = segments.length - 1;
  for (let i = 0; i < last; i++) if (!isCanonicalSegment(segments[i]!)) return undefined;
  if (segments[last] !== '' && !isCanonicalSegment(segments[last]!)) return undefined;
  return { path, segments, query };
}

/**
 * Why canonicalTarget refused `url`, for the 400's detail: which segment and what to send
 * instead. Only on a refusal: the request path reads the boolean form.
 */
export function targetProblem(url: string | undefined): string {
  if (!url || url.charCodeAt(0) !== 47 /* / */) return 'the request-target is not origin-form (a path from /: not an absolute URL, an authority or *)';
  const q = url.indexOf('?');
  if (q >= 0 && !plainQuery(url.slice(q))) return 'the query holds a character other than visible ASCII, or a # or \\';
  const segments = (q < 0 ? url : url.slice(0, q)).slice(1).split('/');
  for (let i = 0; i < segments.length; i++) {
    if (i === segments.length - 1 && segments[i] === '') break;
    const problem = segmentProblem(segments[i]!);
    if (problem !== undefined) return `path segment ${i + 1} ${problem}`;
  }
  return 'the request-target is not canonical';
}
