// The cluster as an issuer (profile: kubernetes). Service-account tokens are verified with
// the keys the API server publishes: its OIDC discovery document names a jwks_uri, and both
// are fetched with the pod's own projected token (re-read from its file on every fetch: the
// kubelet rotates it) while trusting the cluster CA (re-read too). The pod's token is an API
// credential: it is sent to the discovery origin only, never to a jwks_uri elsewhere.
//
// A kubernetes issuer must name a driftguard-specific audience. Every pod's default token
// carries the API server's audiences; accepting one of those would let any pod replay the
// token it already has.

import { rootCertificates } from 'node:tls';
import type { JWTPayload } from 'jose';
import { Agent } from 'undici';
import { RemoteKeySet, type KeySelection } from './jwks.ts';
import { getDocument } from '../lib/bounded.ts';
import { redactUrl } from '../lib/redact.ts';
import { SERVICE_ACCOUNT_DIR, isDnsLabel, isDnsSubdomain } from '../lib/kubernetes.ts';
import { readRegularFile } from '../lib/files.ts';

export const DEFAULT_TOKEN_FILE = `${SERVICE_ACCOUNT_DIR}/token`;
export const DEFAULT_CA_FILE = `${SERVICE_ACCOUNT_DIR}/ca.crt`;
export const DISCOVERY_PATH = '/.well-known/openid-configuration';
/** Where kube-apiserver serves its service-account signing keys. */
export const API_SERVER_JWKS_PATH = '/openid/v1/jwks';

/** The API server as a pod reaches it (the variables the kubelet sets, as client-go reads them). */
export function inClusterApiServer(env: NodeJS.ProcessEnv = process.env): string {
  const host = env.KUBERNETES_SERVICE_HOST;
  if (!host) return 'https://kubernetes.default.svc';
  const port = env.KUBERNETES_SERVICE_PORT || '443';
  return `https://${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/** URL of the discovery document under `base` (which may already be that URL). */
export function discoveryUrl(base: string): string {
  const trimmed = base.replace(/\/+$/, '');
  return trimmed.endsWith(DISCOVERY_PATH) ? trimmed : trimmed + DISCOVERY_PATH;
}

// https://kubernetes.default.svc:443/ is the same audience to a reader, and to a replay; so
// is https://[fd00:10:96::1]:443 (read as a URL: a pattern missed the bracketed host).
const normalise = (s: string): string => {
  const t = s.trim().toLowerCase().replace(/\/+$/, '');
  if (!t.startsWith('https://')) return t;
  try {
    const u = new URL(t);
    return (u.origin + u.pathname + u.search).replace(/\/+$/, '');
  } catch { return t; }
};

const WELL_KNOWN: Readonly<Record<string, string>> = {
  'https://kubernetes.default.svc': 'the API server\'s default audience',
  'https://kubernetes.default.svc.cluster.local': 'the API server\'s default audience',
  'https://kubernetes.default': 'an API server audience',
  'kubernetes.default.svc': 'an API server audience',
  'kubernetes.default.svc.cluster.local': 'an API server audience',
  'kubernetes': 'an API server audience',
  'sts.amazonaws.com': 'the audience of EKS IRSA tokens, mounted into every pod that uses IRSA',
  'api://azureadtokenexchange': 'the audience of AKS workload identity tokens, mounted into every pod that uses it',
};

/** GKE workload identity pools are named <project>.svc.id.goog: tokens exchanged for Google credentials carry it. */
const GKE_WORKLOAD_IDENTITY = /^[a-z0-9.-]+\.svc\.id\.goog$/;

/**
 * Why `audience` must not be accepted from this cluster issuer, or undefined when it may.
 * `apiServer` is the discovery origin (the API server itself).
 */
export function refusedAudience(audience: string, issuer: string, apiServer?: string): string | undefined {
  const a = normalise(audience);
  let what: string | undefined;
  if (a === normalise(issuer)) what = 'the issuer URL, which the API server accepts as its own audience by default';
  else if (apiServer !== undefined && a === normalise(new URL(apiServer).origin)) what = 'the API server\'s own URL';
  else what = WELL_KNOWN[a] ?? (GKE_WORKLOAD_IDENTITY.test(a) ? 'the audience of GKE workload identity tokens, exchanged for Google credentials' : undefined);
  if (what === undefined) return undefined;
  return `audience "${audience}" is ${what}: tokens that pods already hold carry it, so any pod could replay its own token here. `
    + 'Use an audience only driftguard accepts (e.g. driftguard.io/<api>) and have callers request it with a projected serviceAccountToken volume';
}

export interface DiscoveredKeySetOptions {
  /** URL of the discovery document. */
  readonly discovery: string;
  readonly issuer: string;
  readonly tokenFile?: string;
  readonly caFile?: string;
  readonly refreshMs: number;
  readonly cooldownMs: number;
  readonly timeoutMs: number;
  readonly select?: KeySelection;
  /** The issuer's algorithms: a fetched set without a key for them is a failed fetch. */
  readonly algorithms?: readonly string[];
  readonly now?: () => number;
}

const MAX_DOCUMENT_BYTES = 256 * 1024;

function readOrThrow(file: string, what: string): string {
  try {
    return readRegularFile(file).toString('utf8');
  } catch (err) {
    throw new Error(`cannot read the ${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/**
 * The CAs trusted for a fetch under discovery `discovery` with CA file `caFile` (read per
 * fetch: the kubelet rotates it). The API server, which gets the pod's service-account token:
 * the cluster CA only, never the system's. A jwks_uri elsewhere (a managed cluster's public
 * OIDC endpoint): the system's CAs as well. No CA file: the system's (undefined).
 */
export function trustFor(discovery: string, caFile: string | undefined): (url: URL) => string | string[] | undefined {
  const origin = new URL(discovery).origin;
  return (url) => {
    if (caFile === undefined) return undefined;
    const ca = readOrThrow(caFile, 'CA file');
    return url.origin === origin ? ca : [...rootCertificates, ca];
  };
}

/**
 * Keys found through OIDC discovery: every fetch reads the discovery document, then its
 * jwks_uri, so a moved jwks_uri and a rotated token or CA are picked up without a restart.
 */
export function discoveredKeySet(o: DiscoveredKeySetOptions): RemoteKeySet {
  const origin = new URL(o.discovery).origin;
  const sameOrigin = (url: URL) => url.origin === origin;
  // Read per fetch; the token's text goes into a header and nowhere else (never a message).
  const bearer = (): Record<string, string> => o.tokenFile === undefined ? {} : { authorization: `Bearer ${readOrThrow(o.tokenFile, 'service-account token file').trim()}` };
  const caFor = trustFor(o.discovery, o.caFile);

  async function locate(): Promise<string> {
    const url = new URL(o.discovery);
    const ca = caFor(url);
    const agent = ca !== undefined ? new Agent({ connect: { ca } }) : undefined;
    try {
      const { status, text } = await getDocument(url, {
        accept: 'application/json', headers: bearer(), timeoutMs: o.timeoutMs, ...(agent ? { dispatcher: agent } : {}),
        maxBytes: MAX_DOCUMENT_BYTES, tooLarge: () => new Error(`discovery ${redactUrl(url.href)}: document larger than 256 KiB`),
      });
      if (text === undefined) {
        throw new Error(`discovery ${redactUrl(url.href)}: HTTP ${status}${status === 401 || status === 403 ? ' (the service account needs the system:service-account-issuer-discovery ClusterRole)' : ''}`);
      }
      let doc: { issuer?: unknown; jwks_uri?: unknown };
      try { doc = JSON.parse(text) as typeof doc; } catch { throw new Error(`discovery ${redactUrl(url.href)}: not JSON`); }
      if (doc.issuer !== o.issuer) {
        throw new Error(`discovery ${redactUrl(url.href)}: the document's issuer is ${JSON.stringify(doc.issuer)}, the rules say ${JSON.stringify(o.issuer)}`);
      }
      if (typeof doc.jwks_uri !== 'string') throw new Error(`discovery ${redactUrl(url.href)}: no jwks_uri`);
      let jwks: URL;
      try { jwks = new URL(doc.jwks_uri); } catch { throw new Error(`discovery ${redactUrl(url.href)}: jwks_uri is not a URL`); }
      // Keys fetched in clear from an https discovery could be swapped by anyone on the path.
      if (jwks.protocol !== 'https:' && !(url.protocol === 'http:' && jwks.protocol === 'http:')) {
        throw new Error(`discovery ${redactUrl(url.href)}: jwks_uri ${redactUrl(jwks.href)} is not https`);
      }
      // kube-apiserver names its jwks_uri under the address it advertises (kubeadm, kind:
      // https://<advertise-address>:6443/openid/v1/jwks), while a pod reaches it by the service
      // address: the same server under another origin, which gets no token and refuses without
      // one. Its keys are read where it was reached, with the token, which goes nowhere else.
      if (o.tokenFile !== undefined && jwks.origin !== url.origin && jwks.pathname === API_SERVER_JWKS_PATH) {
        return new URL(API_SERVER_JWKS_PATH, url.origin).href;
      }
      return jwks.href;
    } finally {
      void agent?.close();
    }
  }

  return new RemoteKeySet({
    url: o.discovery,
    refreshMs: o.refreshMs, cooldownMs: o.cooldownMs, timeoutMs: o.timeoutMs,
    locate,
    ca: (url) => caFor(url),
    headers: (url) => (sameOrigin(url) ? bearer() : {}),
    ...(o.select ? { select: o.select } : {}),
    ...(o.algorithms ? { algorithms: o.algorithms } : {}),
    ...(o.now ? { now: o.now } : {}),
  });
}

/**
 * The consumer subject of a verified service-account token: system:serviceaccount:<ns>:<name>
 * from its `kubernetes.io` claim, which must agree with `sub`. A detail string when it cannot.
 */
export function kubernetesSubject(payload: JWTPayload): { subject: string } | { detail: string } {
  const k = payload['kubernetes.io'] as { namespace?: unknown; serviceaccount?: { name?: unknown } } | undefined;
  if (typeof k !== 'object' || k === null) return { detail: 'no kubernetes.io claim: not a service-account token' };
  const namespace = k.namespace;
  const name = k.serviceaccount?.name;
  if (!isDnsLabel(namespace)) return { detail: 'kubernetes.io.namespace is not a namespace name' };
  if (!isDnsSubdomain(name)) return { detail: 'kubernetes.io.serviceaccount.name is not a service account name' };
  const subject = `system:serviceaccount:${namespace}:${name}`;
  if (payload.sub !== subject) return { detail: 'sub does not match the kubernetes.io claim' };
  return { subject };
}
