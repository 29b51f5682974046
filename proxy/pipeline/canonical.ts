// The one canonical form of a request-target that driftguard authorizes and forwards.
// Anything an upstream, a framework or another proxy might read differently from us is
// refused rather than normalised: normalising would authorize one path and let the
// upstream act on another.

// pchar = unreserved / pct-encoded / sub-delims / ":" / "@"  (RFC 3986), minus ";"
// (path parameters: Tomcat and Spring strip them, so /admin;x=1 can reach /admin).
const PCHAR = new Uint8Array(128);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&\'()*+,=:@') PCHAR[c.charCodeAt(0)] = 1;

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

/**
 * Is `segment` (one path segment, without slashes) canonical?
 * Refused: empty, `.` or `..` in any spelling, `;` and `#` in any spelling, `\`, control and
 * raw non-ASCII characters, malformed `%`, lowercase hex in `%xx` (a second spelling of the
 * same byte), percent-encoded `/` `\` `%XX` (double encoding) and controls, percent-encoded
 * characters that are allowed as they are (unreserved, sub-delims, `:`, `@`: frameworks decode
 * them, so `/a%3Ab` would match a variable here and the literal `/a:b` upstream), and
 * percent-encoded bytes that are not UTF-8 (overlong `%C0%AE` is a dot to lenient decoders).
 */
export function isCanonicalSegment(segment: string): boolean {
  if (segment.length === 0) return false;
  let decodedDots = 0;
  let decodedLength = 0;
  let nonAscii: number[] | undefined;
  for (let i = 0; i < segment.length; i++) {
    const c = segment.charCodeAt(i);
    if (c === 37 /* % */) {
      const hi = upperHex(segment.charCodeAt(i + 1));
      const lo = upperHex(segment.charCodeAt(i + 2));
      if (hi < 0 || lo < 0) return false;
      const byte = hi * 16 + lo;
      if (byte < 0x20 || byte === 0x7f || byte === 0x2f || byte === 0x5c || byte === 0x3b || byte === 0x23) return false;
      if (byte === 0x25 && hex(segment.charCodeAt(i + 3)) >= 0 && hex(segment.charCodeAt(i + 4)) >= 0) return false;
      if (byte < 0x80 && PCHAR[byte]) return false;
      if (byte >= 0x80) (nonAscii ??= []).push(byte);
      else if (nonAscii) { if (!utf8(nonAscii)) return false; nonAscii = undefined; }
      i += 2;
      decodedLength++;
      continue;
    }
    if (nonAscii) { if (!utf8(nonAscii)) return false; nonAscii = undefined; }
    if (c >= 128 || !PCHAR[c]) return false;
    if (c === 46 /* . */) decodedDots++;
    decodedLength++;
  }
  if (nonAscii && !utf8(nonAscii)) return false;
  // Encoded dots were already refused (they have a plain spelling), so only plain `.` and `..` are left.
  if (decodedDots === decodedLength && decodedLength <= 2) return false;
  return true;
}

function utf8(bytes: number[]): boolean {
  try { UTF8.decode(new Uint8Array(bytes)); return true; } catch { return false; }
}

export interface Target {
  readonly path: string;
  /** Path split into segments (no leading empty segment); [] for `/`. */
  readonly segments: readonly string[];
  /** Query string including its leading `?`, or ''. */
  readonly query: string;
}

/** Split and check a request-target; undefined when it is not origin-form and canonical. */
export function canonicalTarget(url: string | undefined): Target | undefined {
  if (!url || url.charCodeAt(0) !== 47 /* / */) return undefined; // not origin-form: absolute, authority or asterisk
  const q = url.indexOf('?');
  const path = q < 0 ? url : url.slice(0, q);
  const query = q < 0 ? '' : url.slice(q);
  for (let i = 0; i < query.length; i++) {
    const c = query.charCodeAt(i);
    // The query is forwarded untouched and never matched, but it must still be plain
    // visible ASCII: a `#` or a raw control would be read differently downstream.
    if (c <= 0x20 || c >= 0x7f || c === 35 /* # */ || c === 92 /* \ */) return undefined;
  }
  if (path === '/') return { path, segments: [], query };
  const segments = path.slice(1).split('/');
  for (const s of segments) if (!isCanonicalSegment(s)) return undefined;
  return { path, segments, query };
}
