// First check: the request-target must be origin-form and canonical, and the request must
// carry at most one Authorization header, exactly one Host header (none for HTTP/1.0) holding
// a host and port, a Content-Length undici can read exactly, no transfer coding but chunked,
// and no Connection header naming a header the decision reads.
// Node keeps only the first of two Authorization headers in req.headers, so duplicates are
// counted on the raw headers.
// Runs even in audit mode: a request we cannot read the same way as the upstream is never
// forwarded.

import { isIPv6 } from 'node:net';
import type { Check } from '../pipeline/types.ts';
import { canonicalTarget, targetProblem } from '../pipeline/canonical.ts';
import { connectionNamed } from '../forward/headers.ts';
import { secondCredential } from './second-credential.ts';

/**
 * uri-host [ ":" port ] (RFC 9110 §7.2), the host an IP literal, an IPv4 address or a DNS name
 * (which may be empty). Not the rest of reg-name: Node's legacy url.parse, which upstreams still
 * build URLs with, reads a path out of `a%2F..%2Fadmin%3F` or `a;admin`.
 */
const HOST = /^(?:\[([0-9A-Fa-f:.]+)\]|(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?)?)(?::([0-9]{0,5}))?$/;

/** A Host the upstream reads as driftguard does: an IP literal that is one, no empty labels, a port up to 65535. */
function validHost(value: string): boolean {
  const m = HOST.exec(value);
  if (!m) return false;
  if (m[1] !== undefined && !isIPv6(m[1])) return false;
  const port = m[2];
  // `:80` names no host; `host:` (an empty port) is RFC 3986's.
  if (port !== undefined && (value.startsWith(':') || Number(port) > 65535)) return false;
  return true;
}

/**
 * Query parameters web frameworks take as the request's method (Rails, Laravel, Symfony and
 * Express's method-override read `_method`): driftguard decides by the method on the request
 * line, so POST /items/1?_method=DELETE would reach a refused DELETE as the POST it allowed.
 */
const METHOD_OVERRIDE_PARAMS = new Set(['_method', 'x-http-method-override', 'x-http-method', 'x-method-override']);
/**
 * The query parameter a bearer token may travel in (RFC 6750 §2.3), which upstreams read
 * (ASP.NET Core's SignalR hook, over the header's token; Spring's allowUriQueryParameter):
 * driftguard decides by the Authorization header, so a second token there would be the one the
 * upstream authenticates, a consumer driftguard never judged. RFC 6750 §2: one method only.
 * (A token in the query alone is no credential to driftguard: refused as missing.)
 */
const CREDENTIAL_PARAMS = new Set(['access_token']);

/**
 * The parameter of `names` a query carries, if any (its name as a framework decodes it). Split
 * at `;` too, as Rack 2, Django before 3.2 and Python's parse_qs before 3.9.2 split it.
 */
function namedParameter(query: string, names: ReadonlySet<string>): string | undefined {
  for (const name of new URLSearchParams(query.slice(1).replaceAll(';', '&')).keys()) {
    const read = asFrameworksRead(name);
    if (names.has(read)) return read;
  }
  return undefined;
}

/**
 * A parameter name as the frameworks that read overrides see it. PHP (Laravel, Symfony)
 * ends a name at a NUL (`_method%00x` is `_method`), drops leading spaces, reads `_method[]`
 * as `_method`, and turns `.`, a space and a lone `[` into `_`: `?.method=DELETE` is
 * `_method` there.
 */
function asFrameworksRead(name: string): string {
  const nul = name.indexOf('\0');
  let n = (nul < 0 ? name : name.slice(0, nul)).trimStart().toLowerCase();
  const bracket = n.indexOf('[');
  if (bracket > 0 && n.indexOf(']', bracket) > 0) n = n.slice(0, bracket);
  return n.replace(/[ .[]/g, '_').trimEnd();
}

/**
 * The headers `Connection` names, as the forwarder will remove them, unless it holds only the
 * usual `keep-alive` or `close` (most requests that carry one).
 */
function connectionNames(value: string | undefined): Set<string> | undefined {
  if (value === undefined || value === 'keep-alive' || value === 'close' || value === 'Keep-Alive') return undefined;
  return connectionNamed(value);
}

/**
 * `decisive`: the request headers a decision reads (the credential, the contract version, the
 * idempotency key), lowercased; `ignoredCookies`: cookies the upstream never authenticates from
 * (proxy.ignoredCookies).
 */
export function canonicalPath(decisive: readonly string[], ignoredCookies: ReadonlySet<string> = new Set()): Check {
  return {
    name: 'canonical-path',
    always: true,
    run(ctx) {
      const raw = ctx.req.rawHeaders;
      let authorization = 0;
      let host = 0;
      for (let i = 0; i < raw.length; i += 2) {
        const name = raw[i]!;
        if (name.length === 13 && name.toLowerCase() === 'authorization') authorization++;
        else if (name.length === 4 && name.toLowerCase() === 'host') host++;
      }
      // CONNECT asks for a tunnel to any host: driftguard forwards to its one upstream only.
      if (ctx.req.method === 'CONNECT') return { reason: 'malformed-request', detail: 'CONNECT is not served: driftguard is not a forward proxy' };
      if (authorization > 1) return { reason: 'malformed-request', detail: 'more than one Authorization header' };
      if (authorization > 0) {
        const second = secondCredential(ctx.req.headers, ignoredCookies);
        if (second?.found === 'token') return { reason: 'malformed-request', detail: `a credential in the ${second.header} header is not served beside the Authorization header: send one, in the Authorization header only` };
        if (second?.found === 'backslash') return { reason: 'malformed-request', detail: 'the Cookie header holds a backslash, which no cookie value may (RFC 6265 §4.1.1) and cookie parsers unescape: a credential could hide there' };
        if (second !== undefined) return { reason: 'malformed-request', detail: `the ${second.header} header holds more token-like values than any request carries` };
      }
      if (host > 1) return { reason: 'malformed-request', detail: 'more than one Host header' };
      // HTTP/1.1 requires one (RFC 9112 §3.2); Node's own check would answer a bare 400 with no
      // decision, so the server leaves it to this one.
      if (host === 0 && ctx.req.httpVersion !== '1.0') return { reason: 'malformed-request', detail: 'no Host header' };
      // undici asserts on a Host it cannot split (`[::1`: a 502 for a healthy upstream), and an
      // upstream that builds its URL from Host would read `x/admin?` as a path.
      const hostValue = ctx.req.headers.host;
      if (hostValue !== undefined && !validHost(hostValue)) return { reason: 'malformed-request', detail: 'the Host header is not a host and port' };
      // Beyond 2^53 undici reads the length as a rounded number: the upstream would frame the
      // body differently from the client.
      const length = ctx.req.headers['content-length'];
      if (length !== undefined && !Number.isSafeInteger(Number(length))) return { reason: 'malformed-request', detail: 'Content-Length is too large' };
      // Node takes `gzip, chunked` and removes only the chunking: the upstream would get the
      // gzip bytes as the body, without the header that says so, and the monitors would
      // fingerprint them. A transfer coding driftguard does not decode is refused (RFC 9112 §6.1).
      const te = ctx.req.headers['transfer-encoding'];
      if (te !== undefined && te.trim().toLowerCase() !== 'chunked') return { reason: 'malformed-request', detail: 'a transfer coding other than chunked' };
      // Faulty framing in HTTP/1.0 (RFC 9112 §6.1), which a proxy in front may read otherwise.
      if (te !== undefined && ctx.req.httpVersion === '1.0') return { reason: 'malformed-request', detail: 'Transfer-Encoding in an HTTP/1.0 request' };
      // A header Connection names is hop-by-hop, and driftguard removes it (RFC 9110 §7.6.1): a
      // request decided on Contract-Version 2026-09 that named it there reached the upstream
      // with none, and the upstream served its default version.
      const names = connectionNames(ctx.req.headers.connection);
      const named = names && decisive.find((n) => names.has(n));
      if (named !== undefined) return { reason: 'malformed-request', detail: `the Connection header names ${named}, which driftguard decides requests by: the upstream would not get it` };
      const target = canonicalTarget(ctx.req.url);
      if (!target) return { reason: 'malformed-request', detail: `the request-target is not origin-form and canonical: ${targetProblem(ctx.req.url)}` };
      // Cheap for the usual query: a name can only spell these openly or percent-encoded.
      const query = target.query;
      if (query.length > 1 && /method|token|%/i.test(query)) {
        const override = namedParameter(query, METHOD_OVERRIDE_PARAMS);
        if (override !== undefined) return { reason: 'malformed-request', detail: `a method override in the query (${override}) is not served: send the method itself` };
        // Beside an Authorization header: two credentials. Alone, the query's is never read, and
        // the credential check answers 401 missing-credential with its challenge.
        const credential = authorization > 0 ? namedParameter(query, CREDENTIAL_PARAMS) : undefined;
        if (credential !== undefined) return { reason: 'malformed-request', detail: `a credential in the query (${credential}) is not served: send it in the Authorization header only` };
      }
      ctx.target = target;
      return undefined;
    },
  };
}
