// A token beside the Authorization header's, in a header an upstream may authenticate from
// instead: a Cookie (a JWT kept in a cookie, which Django REST framework's cookie
// authenticators and SPA-backing APIs read, some before the header) or Sec-WebSocket-Protocol
// (the Kubernetes API server's bearer subprotocol; `access_token, <jwt>` from WebSocket
// clients that cannot set headers). That token would be the credential the upstream acts on,
// one driftguard never judged: refused, as a second token in the query is (canonical-path.ts).
//
// Cookie parsers split and decode a header in many ways (Python's SimpleCookie ends a value at
// a space and splits at commas, Express's cookie-parser reads `j:"…"` as JSON, Rack reads `+` as
// a space), so no one parser is modelled: the header is scanned for a token wherever it sits,
// as sent and percent-decoded. A run of dotted base64url counts only when it is a compact JWS
// or JWE as a JWT library reads it (its first part a JSON object with a string `alg`): random
// values that hold `eyJ` and two dots (Cloudflare's cookies) are no token. The Authorization
// header's own token there is no second credential.

import type { IncomingHttpHeaders } from 'node:http';
import { bearerToken } from './credential.ts';

/** The subprotocol the Kubernetes API server reads a bearer token from, base64url-encoded after it (a JWT or not). */
const K8S_BEARER_PROTOCOL = 'base64url.bearer.authorization.k8s.io.';
/**
 * Runs of base64url and dots: where a compact token can sit. One character class, so a match
 * never backtracks (`[…]*(\.[…]*)+` took 0.1 s for 16 KiB without a dot).
 */
const RUN = /[A-Za-z0-9._-]+/g;
/**
 * Candidate headers parsed at most, per request, each text once. Only one that decodes to text
 * opening an object and holding `alg` (or a `\u` escape) is parsed, so no client reaches it;
 * without a bound, a 16 KiB header of such junk cost milliseconds of the one thread for each
 * request.
 */
const MAX_PARSED = 16;
/** `{"alg":""}` encoded: no JWS or JWE header is shorter. */
const MIN_HEADER = 14;
/**
 * The first base64url character of text that opens with `{` (e), a byte-order mark (7), a space
 * (I), a tab or line feed (C) or a carriage return (D): no other part is decoded.
 */
const OPENING_CHARACTERS = 'e7ICD';
/** A run with a part that starts so. */
const MAY_OPEN = new RegExp(`(?:^|\\.)[${OPENING_CHARACTERS}]`);
/** An alg key as a lenient JSON reader takes it: quoted either way or bare. */
const LENIENT_ALG = /["']?alg["']?\s*:/;
/** JSON text that opens an object, and text that may still (blank so far). */
const OPENS = /^\uFEFF?[ \t\n\r]*\{/;
const BLANK = /^\uFEFF?[ \t\n\r]*$/;

/** Percent-decodings searched at most: as sent, decoded, decoded again, and a third time. */
const MAX_DECODES = 3;

type Found = 'token' | 'too many' | undefined;
/** Parses spent on this request's headers, and what each header text parsed was. */
interface Budget { parsed: number; readonly kinds: Map<string, 'jws' | 'jwe' | false> }

/**
 * What `part` is as a token's first part: `jws` (a JSON object with a string alg), `jwe` (and a
 * string enc), or not one. `budget` counts the parses, each text once.
 */
function headerKind(part: string, budget: Budget): 'jws' | 'jwe' | 'too many' | undefined {
  if (part.length < MIN_HEADER || !OPENING_CHARACTERS.includes(part[0]!)) return undefined;
  // JSON may start with whitespace (and TextDecoder drops a BOM), and spell a key's letters as
  // \u escapes. Its first 18 bytes first: most dotted text is no JSON, and is not decoded whole.
  const start = Buffer.from(part.slice(0, 24), 'base64url').toString('utf8');
  if (!OPENS.test(start) && !BLANK.test(start)) return undefined;
  const text = part.length <= 24 ? start : Buffer.from(part, 'base64url').toString('utf8');
  if (!OPENS.test(text) || !(text.includes('alg') || text.includes('\\u'))) return undefined;
  // A part met again (in another decoding of the header, or the judged token's own) is not parsed again.
  const known = budget.kinds.get(text);
  if (known !== undefined) return known || undefined;
  if (++budget.parsed > MAX_PARSED) return 'too many';
  const kind = parsedKind(text);
  budget.kinds.set(text, kind ?? false);
  return kind;
}

/** What `text`, which opens an object, is as a token's header (headerKind). */
function parsedKind(text: string): 'jws' | 'jwe' | undefined {
  try {
    const header = JSON.parse(text.replace(/^\uFEFF/, '')) as { alg?: unknown; enc?: unknown } | null;
    if (typeof header !== 'object' || header === null || typeof header.alg !== 'string') return undefined;
    return typeof header.enc === 'string' ? 'jwe' : 'jws';
  } catch {
    // Not JSON to JSON.parse, yet an object with an alg key to a lenient parser (Python's json
    // takes NaN, Gson unquoted keys and single quotes): a header all the same.
    return LENIENT_ALG.test(text) ? 'jws' : undefined;
  }
}

/** A token in `text` other than `judged`: a part of a dotted run that is a header starts one, of three parts (JWS) or five (JWE). */
function scan(text: string, judged: string | undefined, budget: Budget): Found {
  for (const [run] of text.matchAll(RUN)) {
    // A header part is followed by a dot, and starts as OPENING_CHARACTERS say.
    if (run.length < MIN_HEADER + 2 || !run.includes('.') || !MAY_OPEN.test(run)) continue;
    const parts = run.split('.');
    for (let i = 0; i + 2 < parts.length; i++) {
      const kind = headerKind(parts[i]!, budget);
      if (kind === 'too many') return 'too many';
      const n = kind === 'jwe' && i + 5 <= parts.length ? 5 : kind ? 3 : 0;
      if (n === 0 || i + n > parts.length) continue;
      if (parts.slice(i, i + n).join('.') !== judged) return 'token';
    }
  }
  return undefined;
}

/** `text` with every percent-escape decoded, bytes that are not UTF-8 as U+FFFD. */
function percentDecoded(text: string): string {
  // Every escape decoded, bytes that are not UTF-8 as U+FFFD (outside RUN), as lenient decoders
  // (Python's unquote, PHP's urldecode, Java's URLDecoder) read them: none is left as sent.
  // And `%uXXXX`, as JavaScript's unescape() and .NET's HttpUtility.UrlDecode read it.
  const unicode = text.includes('%u') || text.includes('%U') ? text.replace(/%u([0-9A-Fa-f]{4})/gi, (_, hex: string) => String.fromCharCode(parseInt(hex, 16))) : text;
  // Whole, at once, where it decodes (most text: the same result); else each run of escapes.
  try { return decodeURIComponent(unicode); } catch { /* a stray % or bytes that are not UTF-8 */ }
  return unicode.replace(/(?:%[0-9A-Fa-f]{2})+/g, (escaped) => {
    const byte = escaped.length === 3 ? parseInt(escaped.slice(1), 16) : 0x80;
    return byte < 0x80 ? String.fromCharCode(byte) : Buffer.from(escaped.replaceAll('%', ''), 'hex').toString('utf8');
  });
}

/** A token in `text`, as sent or percent-decoded, other than `judged`. */
function carries(text: string, judged: string | undefined, budget: Budget): Found {
  let found = scan(text, judged, budget);
  // Decoded again while escapes remain (up to MAX_DECODES): an app that decodes a cookie its
  // framework already decoded reads `%252E` as a dot.
  for (let decodes = 0, read = text; !found && decodes < MAX_DECODES && read.includes('%'); decodes++) {
    const decoded = percentDecoded(read);
    if (decoded === read) break;
    read = decoded;
    found = scan(read, judged, budget);
  }
  return found;
}

/**
 * `cookie` without the cookies the upstream never reads (proxy.ignoredCookies). Split wherever
 * any parser splits (`;`, `,`, whitespace), so that a cookie another parser reads cannot hide
 * inside an ignored one's value: what is left of such a value is searched like the rest.
 */
function withoutIgnored(cookie: string, ignored: ReadonlySet<string>): string {
  return cookie.split(/[;,\s]+/).filter((piece) => {
    const eq = piece.indexOf('=');
    if (eq <= 0) return true;
    // A cookie split into chunks (`NAME.0`, `NAME.1`: Auth.js's sessions over 4 KiB) is the named one.
    const name = piece.slice(0, eq);
    return !ignored.has(name) && !ignored.has(name.replace(/\.\d{1,3}$/, ''));
  }).join(';');
}

/**
 * The name of the header that carries a token other than the Authorization header's, if any,
 * and why (`too many`: more candidate token headers than any request has; `backslash`: a Cookie
 * with one, which parsers unescape).
 */
export function secondCredential(headers: IncomingHttpHeaders, ignoredCookies: ReadonlySet<string> = new Set()): { header: string; found: 'token' | 'too many' | 'backslash' } | undefined {
  const { cookie } = headers;
  const protocols = headers['sec-websocket-protocol'];
  if (cookie === undefined && protocols === undefined) return undefined;
  // The token the credential check judges (none when the header is no bearer token: refused there).
  const judged = bearerToken(headers.authorization) ?? undefined;
  const budget: Budget = { parsed: 0, kinds: new Map() };
  if (cookie !== undefined) {
    // A cookie's octets exclude the backslash (RFC 6265 §4.1.1), and parsers unescape one where
    // it is: Python's in a quoted value (`"\145yJ…"`), cookie-parser's JSON cookies (`j:"\u0065yJ…"`).
    if (cookie.includes('\\')) return { header: 'Cookie', found: 'backslash' };
    const found = carries(ignoredCookies.size ? withoutIgnored(cookie, ignoredCookies) : cookie, judged, budget);
    if (found) return { header: 'Cookie', found };
  }
  if (protocols !== undefined) {
    for (const element of protocols.split(',')) {
      const protocol = element.trim();
      // The prefix says a bearer credential follows, a JWT or an opaque token.
      if (protocol.toLowerCase().startsWith(K8S_BEARER_PROTOCOL)
        && Buffer.from(protocol.slice(K8S_BEARER_PROTOCOL.length), 'base64url').toString('utf8') !== judged) return { header: 'Sec-WebSocket-Protocol', found: 'token' };
    }
    const found = carries(protocols, judged, budget);
    if (found) return { header: 'Sec-WebSocket-Protocol', found };
  }
  return undefined;
}
