// A token beside the Authorization header's, in a header an upstream may authenticate from
// instead: a Cookie (a JWT kept in a cookie, which Django REST framework's cookie
// authenticators and SPA-backing APIs read, some before the header) or Sec-WebSocket-Protocol
// (the Kubernetes API server's bearer subprotocol; `access_token, <jwt>` from WebSocket
// clients that cannot set headers). That token would be the credential the upstream acts on,
// one driftguard never judged: refused, as a second token in the query is (canonical-path.ts).
// The header's own token there is no second credential, and a value that is no token (a
// random cookie that happens to hold `eyJ` and two dots) is none either: a value counts only
// when it is a compact JWS or JWE as a JWT library reads it.

import type { IncomingHttpHeaders } from 'node:http';

/** The subprotocol the Kubernetes API server reads a bearer token from, base64url-encoded after it. */
const K8S_BEARER_PROTOCOL = 'base64url.bearer.authorization.k8s.io.';

/** Whether `text` is a compact JWS or JWE: three or five parts, the first a JSON object with a string `alg`. */
function isToken(text: string): boolean {
  const first = text.indexOf('.');
  if (first <= 0) return false;
  let parts = 1;
  for (let i = first; i !== -1; i = text.indexOf('.', i + 1)) parts++;
  if (parts !== 3 && parts !== 5) return false;
  try {
    const header: unknown = JSON.parse(Buffer.from(text.slice(0, first), 'base64url').toString('utf8'));
    return typeof header === 'object' && header !== null && typeof (header as { alg?: unknown }).alg === 'string';
  } catch {
    return false;
  }
}

/** `value` as a reader may take a token from it: as sent, percent-decoded, after a `Bearer ` prefix. */
function asRead(value: string): string[] {
  const read = [value];
  if (value.includes('%')) {
    try { read.push(decodeURIComponent(value)); } catch { /* not percent-encoding: as sent only */ }
  }
  return read.map((v) => v.replace(/^bearer\s+/i, '').trim());
}

/** A token among `values` other than `judged` (the Authorization header's). */
function another(values: readonly string[], judged: string | undefined): boolean {
  return values.some((v) => v !== judged && isToken(v));
}

/** The name of the header that carries a token other than the Authorization header's, if any. */
export function secondCredential(headers: IncomingHttpHeaders): string | undefined {
  const { cookie } = headers;
  const protocols = headers['sec-websocket-protocol'];
  if (cookie === undefined && protocols === undefined) return undefined;
  const judged = /^\s*bearer\s+(\S+)\s*$/i.exec(headers.authorization ?? '')?.[1];
  if (cookie !== undefined) {
    for (const pair of cookie.split(';')) {
      let value = pair.slice(pair.indexOf('=') + 1).trim();
      if (value.length > 1 && value.startsWith('"') && value.endsWith('"')) {
        value = value.slice(1, -1);
        // Python's http.cookies (Django's parser) unescapes `\X` and `\ooo` in a quoted value:
        // `"\eyJ…\.…"` is a token there. No browser writes a backslash in a cookie.
        if (value.includes('\\')) return 'Cookie';
      }
      if (another(asRead(value), judged)) return 'Cookie';
    }
  }
  if (protocols !== undefined) {
    for (const element of protocols.split(',')) {
      const protocol = element.trim();
      const k8s = protocol.toLowerCase().startsWith(K8S_BEARER_PROTOCOL)
        ? Buffer.from(protocol.slice(K8S_BEARER_PROTOCOL.length), 'base64url').toString('utf8') : undefined;
      if (another(k8s !== undefined ? [k8s] : asRead(protocol), judged)) return 'Sec-WebSocket-Protocol';
    }
  }
  return undefined;
}
