// A minimal kube-apiserver for `helm template --dry-run=server`, which performs the chart's
// `lookup` as `helm upgrade` does: discovery for the kinds the chart renders, and GET of the
// Secrets it is given (404 for any other). Listens on loopback; the kubeconfig points at it.

import { createServer, type Server } from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listen, close } from './servers.ts';

export interface FakeSecret {
  readonly metadata: { readonly name: string; readonly namespace: string; readonly labels?: Record<string, string>; readonly annotations?: Record<string, string> };
  readonly data: Record<string, string>;
}

export interface FakeKube {
  /** Path of a kubeconfig for KUBECONFIG. */
  readonly kubeconfig: string;
  /** The Secrets served from now on (replacing the earlier ones). */
  serve(secrets: readonly FakeSecret[]): void;
  close(): Promise<void>;
}

const GROUPS: Record<string, [resource: string, kind: string, namespaced: boolean][]> = {
  apps: [['deployments', 'Deployment', true]],
  policy: [['poddisruptionbudgets', 'PodDisruptionBudget', true]],
  'admissionregistration.k8s.io': [['mutatingwebhookconfigurations', 'MutatingWebhookConfiguration', false]],
};
const CORE: [string, string][] = [['secrets', 'Secret'], ['configmaps', 'ConfigMap'], ['services', 'Service'], ['serviceaccounts', 'ServiceAccount']];

export async function fakeKube(minor = 33): Promise<FakeKube> {
  let secrets: readonly FakeSecret[] = [];
  const server: Server = createServer((req, res) => {
    const send = (o: unknown, code = 200) => { res.writeHead(code, { 'content-type': 'application/json' }); res.end(JSON.stringify(o)); };
    const path = (req.url ?? '').split('?')[0];
    if (path === '/version') return send({ major: '1', minor: String(minor), gitVersion: `v1.${minor}.0`, platform: 'linux/amd64' });
    if (path === '/api') return send({ kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [] });
    if (path === '/apis') return send({ kind: 'APIGroupList', apiVersion: 'v1', groups: Object.keys(GROUPS).map((g) => ({ name: g, versions: [{ groupVersion: `${g}/v1`, version: 'v1' }], preferredVersion: { groupVersion: `${g}/v1`, version: 'v1' } })) });
    const resources = (list: [string, string, boolean][]) => list.map(([name, kind, namespaced]) => ({ name, singularName: kind.toLowerCase(), namespaced, kind, verbs: ['get', 'list', 'create'] }));
    for (const [g, list] of Object.entries(GROUPS)) if (path === `/apis/${g}/v1`) return send({ kind: 'APIResourceList', apiVersion: 'v1', groupVersion: `${g}/v1`, resources: resources(list) });
    if (path === '/api/v1') return send({ kind: 'APIResourceList', groupVersion: 'v1', resources: resources(CORE.map(([r, k]) => [r, k, true])) });
    const secret = secrets.find((s) => path === `/api/v1/namespaces/${s.metadata.namespace}/secrets/${s.metadata.name}`);
    if (secret) return send({ apiVersion: 'v1', kind: 'Secret', type: 'kubernetes.io/tls', ...secret });
    send({ kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'NotFound', code: 404 }, 404);
  });
  const port = await listen(server);
  const kubeconfig = join(mkdtempSync(join(tmpdir(), 'driftguard-fakekube-')), 'kubeconfig');
  writeFileSync(kubeconfig, [
    'apiVersion: v1',
    'kind: Config',
    `clusters: [{name: fake, cluster: {server: "http://127.0.0.1:${port}"}}]`,
    'users: [{name: fake, user: {token: fake}}]',
    'contexts: [{name: fake, context: {cluster: fake, user: fake}}]',
    'current-context: fake',
    '',
  ].join('\n'));
  return { kubeconfig, serve: (s) => { secrets = s; }, close: () => close(server) };
}
