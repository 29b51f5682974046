// Which headers cross driftguard. Hop-by-hop headers (RFC 9110 §7.6.1), every header the
// Connection header names, override headers (a stale client must not turn an allowed POST
// into a DELETE, or one path into another, behind our back), and anything claiming to come
// from driftguard are dropped; X-Forwarded-* are rewritten. A request header whose name has
// an underscore is dropped too, as nginx and Apache do: CGI-style upstreams (WSGI, Rack, PHP)
// read `Driftguard_Consumer` as `Driftguard-Consumer`, and `X_HTTP_Method_Override` as the
// override, so removing the hyphenated spelling alone would let a caller forge either.

const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer',
  'upgrade', 'expect', 'proxy-authorization', 'proxy-authenticate',
]);
/**
 * Method overrides, the URL overrides IIS, Symfony and Zend route by, and the original-request
 * headers a proxy in front sets and an app behind it may route by (nginx's X-Original-URI,
 * Traefik's X-Forwarded-Uri and X-Forwarded-Method, Spring's and ASP.NET's X-Forwarded-Prefix):
 * from a caller, each names a request other than the one driftguard decided.
 */
const OVERRIDE = new Set(['x-http-method-override', 'x-http-method', 'x-method-override', 'x-original-url', 'x-rewrite-url', 'x-override-url',
  'x-original-uri', 'x-original-method', 'x-forwarded-uri', 'x-forwarded-method', 'x-forwarded-prefix', 'x-forwarded-path']);
const REWRITTEN = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded']);

/** The headers a Connection header names, lowercased (the forwarder removes them; the canonical-path check reads them). */
export function connectionNamed(value: string | string[] | undefined): Set<string> | undefined {
  if (value === undefined) return undefined;
  const names = new Set<string>();
  for (const v of Array.isArray(value) ? value : [value]) for (const n of v.split(',')) { const t = n.trim().toLowerCase(); if (t) names.add(t); }
  return names;
}

/**
 * Request headers for the upstream as a flat [name, value, ...] list (duplicates kept, in
 * order), plus driftguard's own. `raw` is req.rawHeaders.
 */
export function upstreamRequestHeaders(raw: readonly string[], connection: string | string[] | undefined, remoteAddress: string | undefined, own: Record<string, string>, upstreamHost?: string): string[] {
  const named = connectionNamed(connection);
  // A tracestate belongs to the traceparent it came with (W3C Trace Context §3.3): when
  // driftguard sends its own traceparent, the caller's tracestate goes only if driftguard
  // continued the caller's trace, as its own (below); under a new trace it is dropped.
  const ownTrace = own['traceparent'] !== undefined;
  const out: string[] = [];
  let forwardedFor: string | undefined;
  let host: string | undefined;
  let proto: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = name.toLowerCase();
    // proxy.upstreamHost, where set, replaces it (below): an upstream that routes by Host
    // serves the app the rules describe, whatever Host the caller named.
    if (lower === 'host') { host = raw[i + 1]!; if (upstreamHost === undefined) out.push(name, raw[i + 1]!); continue; }
    if (lower === 'x-forwarded-for') { forwardedFor = forwardedFor ? `${forwardedFor}, ${raw[i + 1]}` : raw[i + 1]; continue; }
    // The scheme a TLS-terminating proxy in front says the client used: an app that redirects
    // plain http to https (Rails' force_ssl) looped when driftguard said http. Its lines are
    // one comma list (RFC 9110 §5.3), read below.
    if (lower === 'x-forwarded-proto') { proto = proto === undefined ? raw[i + 1]! : `${proto},${raw[i + 1]}`; continue; }
    // A header driftguard sets itself (traceparent, tracestate) replaces the caller's.
    // A name with `_` or `.`: CGI-style upstreams read both as `-` (Driftguard.Consumer).
    if (HOP_BY_HOP.has(lower) || OVERRIDE.has(lower) || REWRITTEN.has(lower) || lower.startsWith('driftguard-') || lower.includes('_') || lower.includes('.') || named?.has(lower) || Object.hasOwn(own, lower) || (ownTrace && lower === 'tracestate')) continue;
    out.push(name, raw[i + 1]!);
  }
  const client = remoteAddress ?? 'unknown';
  out.push('x-forwarded-for', forwardedFor ? `${forwardedFor}, ${client}` : client);
  // Only a single value, and only the two schemes: in a list (`https, http`, on one line or
  // two), the first may be the client's own and the last a proxy's, and nothing says which.
  const scheme = proto?.trim().toLowerCase();
  out.push('x-forwarded-proto', scheme === 'https' || scheme === 'http' ? scheme : 'http');
  // Pinned, it is X-Forwarded-Host too: Rails, and Express or Django when told to trust a
  // proxy, take the host from X-Forwarded-Host first, and would route by the caller's.
  if (upstreamHost !== undefined) out.push('host', upstreamHost, 'x-forwarded-host', upstreamHost);
  else if (host !== undefined) out.push('x-forwarded-host', host);
  for (const [name, value] of Object.entries(own)) out.push(name, value);
  return out;
}

/**
 * Response headers for the client: upstream's minus hop-by-hop and Connection-named ones, and
 * minus any `driftguard-` header: the client must be able to trust that driftguard wrote those
 * (an upstream echoing request headers back must not forge or hide a warning).
 */
export function clientResponseHeaders(headers: Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  const named = connectionNamed(headers['connection']);
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || OVERRIDE.has(lower) || named?.has(lower) || lower.startsWith('driftguard-')) continue;
    out[lower] = value;
  }
  return out;
}

/**
 * The client's response head: the upstream's headers (as clientResponseHeaders leaves them)
 * with driftguard's over them, except where both speak:
 * - Link is a list of links (RFC 8288 §3.5): the upstream's (pagination, say) stay and
 *   driftguard's deprecation and sunset links are added.
 * - Vary is a list of request headers: the upstream's and driftguard's (the credential and the
 *   contract version, which decided the answer), or `*` if the upstream says so.
 * - Sunset and Deprecation are dates: the earlier one stands, so a client learns the soonest
 *   point at which its call stops working, whichever side knows it (RFC 8594 §3, RFC 9745).
 * - Cache-Control, on an answer whose Vary names Authorization (one that depends on the
 *   caller's credential, driftguard's decision among it): see privateCacheControl.
 */
export function withOwnHeaders(upstream: Record<string, string | string[]>, own: Record<string, string | string[]>): Record<string, string | string[]> {
  const head = { ...upstream, ...own };
  const theirs = upstream['link'];
  const ours = own['link'];
  if (theirs !== undefined && ours !== undefined) head['link'] = [...list(theirs), ...list(ours)];
  if (upstream['vary'] !== undefined && own['vary'] !== undefined) head['vary'] = varyUnion(upstream['vary'], own['vary']);
  if (upstream['cache-control'] !== undefined && own['vary'] !== undefined && BY_CREDENTIAL.test(list(own['vary']).join(','))) {
    const cc = privateCacheControl(upstream['cache-control']);
    if (cc !== undefined) head['cache-control'] = cc;
  }
  for (const name of ['sunset', 'deprecation'] as const) {
    const their = upstream[name];
    const our = own[name];
    if (their === undefined || our === undefined) continue;
    // Two fields of a single-value header make it invalid (RFC 9745 §2.1, RFC 8594 §3): ours stand.
    const theirMs = list(their).length === 1 ? dateOf(name, list(their)[0]!) : undefined;
    const ourMs = dateOf(name, list(our)[0]!);
    if (theirMs !== undefined && ourMs !== undefined && theirMs < ourMs) head[name] = their;
  }
  // The earlier of each may make a pair out of order: an upstream's Sunset before the rules'
  // Deprecation. A Sunset MUST NOT be earlier than the Deprecation (RFC 9745 §4): the
  // operation is deprecated at the latest when it goes.
  if (own['deprecation'] !== undefined && typeof head['sunset'] === 'string' && typeof head['deprecation'] === 'string') {
    const sunsetMs = dateOf('sunset', head['sunset']);
    const deprecationMs = dateOf('deprecation', head['deprecation']);
    if (sunsetMs !== undefined && deprecationMs !== undefined && sunsetMs < deprecationMs) head['deprecation'] = `@${Math.floor(sunsetMs / 1000)}`;
  }
  return head;
}

function list(v: string | string[]): string[] { return Array.isArray(v) ? v : [v]; }

const BY_CREDENTIAL = /(?:^|,)\s*authorization\s*(?:,|$)/i;
/** Cache directives that let a shared cache store an answer to a request with Authorization (RFC 9111 §3.5). */
const SHARED_STORE = new Set(['public', 's-maxage', 'must-revalidate']);
/**
 * Cache-Control's directives, split at commas outside quoted strings (`no-cache="a, b"`), in one
 * pass: a quote left open runs to the end of the value as one directive (undici reads it so).
 */
function directives(value: string): string[] {
  const out: string[] = [];
  let start = 0;
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (quoted) {
      if (c === 0x5c) i++; // a quoted-pair: the next character is taken as it is
      else if (c === 0x22) quoted = false;
    } else if (c === 0x22) quoted = true;
    else if (c === 0x2c) { out.push(value.slice(start, i)); start = i + 1; }
  }
  out.push(value.slice(start));
  return out.map((d) => d.trim()).filter((d) => d !== '');
}

/**
 * The upstream's Cache-Control for an answer driftguard decided on the caller's credential:
 * unchanged, unless it lets a shared cache store the answer (`public`, `s-maxage`,
 * `must-revalidate`), which that cache would then serve to the same token for as long as it
 * is fresh, past a revocation, a quarantine or a reload that refuses the call. Then `public`,
 * `s-maxage` and any `private` are dropped and a bare `private` added (a shared cache MUST NOT
 * store it, RFC 9111 §5.2.2.7; the caller's own cache still may), unless `no-store` says more.
 */
function privateCacheControl(value: string | string[]): string | undefined {
  const all = directives(list(value).join(','));
  const name = (d: string) => d.split('=', 1)[0]!.trim().toLowerCase();
  if (!all.some((d) => SHARED_STORE.has(name(d)))) return undefined;
  const kept = all.filter((d) => !['public', 's-maxage', 'private'].includes(name(d)));
  if (!kept.some((d) => name(d) === 'no-store')) kept.push('private');
  return kept.join(', ');
}

function varyUnion(theirs: string | string[], ours: string | string[]): string {
  const names: string[] = [];
  const seen = new Set<string>();
  for (const v of [...list(theirs), ...list(ours)]) {
    for (const n of v.split(',')) {
      const name = n.trim();
      if (name === '*') return '*';
      if (name && !seen.has(name.toLowerCase())) { seen.add(name.toLowerCase()); names.push(name); }
    }
  }
  return names.join(', ');
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
/** The three HTTP-date forms (RFC 9110 §5.6.7): IMF-fixdate, and the obsolete rfc850-date and asctime-date. */
const IMF_FIXDATE = /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d{2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT$/;
const RFC850_DATE = /^(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (\d{2})-(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-(\d{2}) (\d{2}):(\d{2}):(\d{2}) GMT$/;
const ASCTIME_DATE = /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4})$/;

/**
 * An HTTP-date in any of its three forms as epoch ms, as a recipient must read them (RFC 9110
 * §5.6.7); anything else is unreadable. Not Date.parse, which reads `1` or `see changelog 2`
 * as a date in 2001, and an asctime date (no zone) in the machine's local time.
 */
export function httpDate(v: string, nowMs = Date.now()): number | undefined {
  let m = IMF_FIXDATE.exec(v);
  if (m) return utc(Number(m[3]), m[2]!, m[1]!, m[4]!, m[5]!, m[6]!);
  m = RFC850_DATE.exec(v);
  if (m) {
    // A two-digit year more than 50 years ahead is the latest past year that ends so (§5.6.7).
    const thisYear = new Date(nowMs).getUTCFullYear();
    let year = Math.floor(thisYear / 100) * 100 + Number(m[3]);
    if (year > thisYear + 50) year -= 100;
    return utc(year, m[2]!, m[1]!, m[4]!, m[5]!, m[6]!);
  }
  m = ASCTIME_DATE.exec(v);
  if (m) return utc(Number(m[6]), m[1]!, m[2]!.trim(), m[3]!, m[4]!, m[5]!);
  return undefined;
}

function utc(year: number, month: string, day: string, h: string, min: string, sec: string): number | undefined {
  const ms = Date.UTC(year, MONTHS.indexOf(month), Number(day), Number(h), Number(min), Number(sec));
  // A day or time out of range (31 Feb, 25:00) names no date: Date.UTC would roll it over.
  const d = new Date(ms);
  return d.getUTCDate() === Number(day) && d.getUTCHours() === Number(h) && d.getUTCMinutes() === Number(min) && d.getUTCSeconds() === Number(sec) ? ms : undefined;
}

/** A Deprecation (`@<unix seconds>`, RFC 9745) or Sunset (an HTTP-date, RFC 8594) value as epoch ms; anything else is unreadable. */
function dateOf(name: 'sunset' | 'deprecation', value: string): number | undefined {
  const v = value.trim();
  const ms = name === 'deprecation' ? (/^@-?\d{1,15}$/.test(v) ? Number(v.slice(1)) * 1000 : NaN) : httpDate(v) ?? NaN;
  return Number.isFinite(ms) ? ms : undefined;
}

/** Anything but visible ASCII, and `%` itself (the escape). */
const NOT_VERBATIM = /[^\x21-\x24\x26-\x7e]/;

/**
 * A value taken from a token (the subject) as a header value: visible ASCII other than `%`
 * stays as it is, anything else is percent-encoded as UTF-8, so the upstream can decode it
 * losslessly (decodeURIComponent). SPIFFE IDs, service-account names and most OAuth subjects
 * pass unchanged. Written raw, a subject with a character Node refuses failed the forwarding
 * (a 502 for a request the upstream never saw); one with spaces would lose its edges.
 */
export function headerSafe(value: string): string {
  if (!NOT_VERBATIM.test(value)) return value;
  let out = '';
  // A lone surrogate (JSON allows one) becomes U+FFFD rather than make encodeURIComponent throw.
  for (const ch of value.toWellFormed()) out += NOT_VERBATIM.test(ch) ? encodeURIComponent(ch) : ch;
  return out;
}
