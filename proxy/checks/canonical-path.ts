// First check: the request-target must be origin-form and canonical, and the request must
// carry at most one Authorization header, exactly one Host header (none for HTTP/1.0) holding
// a host and port, a Content-Length undici can read exactly, and no transfer coding but chunked.
// Node keeps only the first of two Authorization headers in req.headers, so duplicates are
// counted on the raw headers.
// Runs even in audit mode: a request we cannot read the same way as the upstream is never
// forwarded.

import type { Check } from '../pipeline/types.ts';
import { canonicalTarget } from '../pipeline/canonical.ts';

/** RFC 9110 §7.2: uri-host [ ":" port ], the host an IP literal, an IPv4 address or a reg-name (which may be empty). */
const HOST = /^(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?$/;

export function canonicalPath(): Check {
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
      if (host > 1) return { reason: 'malformed-request', detail: 'more than one Host header' };
      // HTTP/1.1 requires one (RFC 9112 §3.2); Node's own check would answer a bare 400 with no
      // decision, so the server leaves it to this one.
      if (host === 0 && ctx.req.httpVersion !== '1.0') return { reason: 'malformed-request', detail: 'no Host header' };
      // undici asserts on a Host it cannot split (`[::1`: a 502 for a healthy upstream), and an
      // upstream that builds its URL from Host would read `x/admin?` as a path.
      const hostValue = ctx.req.headers.host;
      if (hostValue !== undefined && !HOST.test(hostValue)) return { reason: 'malformed-request', detail: 'the Host header is not a host and port' };
      // Beyond 2^53 undici reads the length as a rounded number: the upstream would frame the
      // body differently from the client.
      const length = ctx.req.headers['content-length'];
      if (length !== undefined && !Number.isSafeInteger(Number(length))) return { reason: 'malformed-request', detail: 'Content-Length is too large' };
      // Node takes `gzip, chunked` and removes only the chunking: the upstream would get the
      // gzip bytes as the body, without the header that says so, and the monitors would
      // fingerprint them. A transfer coding driftguard does not decode is refused (RFC 9112 §6.1).
      const te = ctx.req.headers['transfer-encoding'];
      if (te !== undefined && te.trim().toLowerCase() !== 'chunked') return { reason: 'malformed-request', detail: 'a transfer coding other than chunked' };
      const target = canonicalTarget(ctx.req.url);
      if (!target) return { reason: 'malformed-request', detail: 'the request-target is not origin-form and canonical' };
      ctx.target = target;
      return undefined;
    },
  };
}
