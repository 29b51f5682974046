// First check: the request-target must be origin-form and canonical, and the request must
// carry at most one Authorization and one Host header, and no transfer coding but chunked.
// Node keeps only the first of two Authorization headers in req.headers, so duplicates are
// counted on the raw headers.
// Runs even in audit mode: a request we cannot read the same way as the upstream is never
// forwarded.

import type { Check } from '../pipeline/types.ts';
import { canonicalTarget } from '../pipeline/canonical.ts';

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
