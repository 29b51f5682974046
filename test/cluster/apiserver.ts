// A loopback HTTPS server that plays the Kubernetes API server's service-account issuer
// discovery: /.well-known/openid-configuration and /openid/v1/jwks, each requiring a bearer
// token (the pod's own service-account token) and recording the one it was sent. Its
// certificate is self-signed (test/support/tls.ts) and is the "cluster CA".

import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { JWK } from 'jose';
import { selfSignedCertificate } from '../support/tls.ts';

export const CLUSTER_ISSUER = 'https://kubernetes.default.svc.cluster.local';

export interface FakeApiServer {
  readonly origin: string;
  /** PEM of the self-signed certificate: the cluster CA. */
  readonly ca: string;
  /** The bearer token the pod must present; requests with another get 401. */
  expectedToken: string;
  keys: JWK[];
  /** What the discovery document says the issuer is. */
  issuer: string;
  /** Override jwks_uri (default: this server's /openid/v1/jwks). */
  jwksUri?: string;
  /** Answer this many ms late (a slow API server). */
  delayMs?: number;
  /** Every request: path and the bearer token it carried (or undefined). */
  readonly seen: { path: string; bearer?: string }[];
  close(): Promise<void>;
}

export async function fakeApiServer(keys: JWK[], expectedToken: string, commonName = 'kube-apiserver'): Promise<FakeApiServer> {
  // The name matters: two trusted certificates with one subject would shadow each other.
  const { cert, key } = selfSignedCertificate({ commonName, dnsNames: ['kubernetes.default.svc'], ips: ['127.0.0.1'] });
  const api = { keys, expectedToken, issuer: CLUSTER_ISSUER, seen: [], ca: cert } as unknown as FakeApiServer & { origin: string };
  const server = createServer({ cert, key }, (req, res) => {
    if (api.delayMs) setTimeout(() => answer(req, res), api.delayMs);
    else answer(req, res);
  });
  function answer(req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse): void {
    const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
    api.seen.push({ path: req.url ?? '', ...(m ? { bearer: m[1] } : {}) });
    if (!m || m[1] !== api.expectedToken) {
      res.writeHead(401, { 'content-type': 'application/json' }).end('{"kind":"Status","code":401,"reason":"Unauthorized"}');
      return;
    }
    if (req.url === '/.well-known/openid-configuration') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({
        issuer: api.issuer,
        jwks_uri: api.jwksUri ?? `${api.origin}/openid/v1/jwks`,
        response_types_supported: ['id_token'],
        subject_types_supported: ['public'],
        id_token_signing_alg_values_supported: ['RS256'],
      }));
      return;
    }
    if (req.url === '/openid/v1/jwks') {
      res.writeHead(200, { 'content-type': 'application/jwk-set+json' }).end(JSON.stringify({ keys: api.keys }));
      return;
    }
    res.writeHead(404).end();
  }
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  Object.assign(api, {
    origin: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise<void>((resolve) => { server.close(() => resolve()); server.closeAllConnections(); }),
  });
  return api;
}
