// Shared pieces of the injector tests: AdmissionReview and pod fixtures, and an
// HTTPS client that trusts the test certificate.

import { request } from 'node:https';
import { randomUUID } from 'node:crypto';
import { applyPatch, type PatchOperation } from '../support/json-patch.ts';

export interface HttpResult {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly text: string;
  readonly fingerprint?: string;
}

export function httpsRequest(port: number, ca: string, options: { method?: string; path?: string; body?: string | Buffer; headers?: Record<string, string>; host?: string } = {}): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: options.host ?? '127.0.0.1', port, ca, agent: false,
      method: options.method ?? 'POST', path: options.path ?? '/mutate',
      headers: { 'content-type': 'application/json', ...options.headers },
    }, (res) => {
      const chunks: Buffer[] = [];
      const fingerprint = (res.socket as import('node:tls').TLSSocket).getPeerCertificate?.()?.fingerprint256;
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8'), fingerprint }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

export interface Pod {
  apiVersion: 'v1';
  kind: 'Pod';
  metadata: { name?: string; generateName?: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string>; [k: string]: unknown };
  spec: Record<string, any>;
}

/** A pod as a ReplicaSet creates it from a typical Deployment template. */
export function appPod(overrides: { labels?: Record<string, string>; annotations?: Record<string, string>; spec?: Record<string, unknown> } = {}): Pod {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      generateName: 'orders-api-7d9c6b5f4-',
      namespace: 'shop',
      labels: { 'app.kubernetes.io/name': 'orders-api', 'pod-template-hash': '7d9c6b5f4', ...overrides.labels },
      ...(overrides.annotations ? { annotations: overrides.annotations } : {}),
      ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'orders-api-7d9c6b5f4', uid: '2f1c3a4e-0000-4000-8000-000000000001', controller: true, blockOwnerDeletion: true }],
    },
    spec: {
      serviceAccountName: 'orders-api',
      containers: [{
        name: 'app',
        image: 'registry.example.com/orders-api:1.4.2',
        ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }],
        resources: { requests: { cpu: '100m', memory: '128Mi' } },
      }],
      restartPolicy: 'Always',
      ...overrides.spec,
    },
  };
}

export function admissionReview(object: unknown, request: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    apiVersion: 'admission.k8s.io/v1',
    kind: 'AdmissionReview',
    request: {
      uid: randomUUID(),
      kind: { group: '', version: 'v1', kind: 'Pod' },
      resource: { group: '', version: 'v1', resource: 'pods' },
      requestKind: { group: '', version: 'v1', kind: 'Pod' },
      requestResource: { group: '', version: 'v1', resource: 'pods' },
      namespace: 'shop',
      operation: 'CREATE',
      userInfo: { username: 'system:serviceaccount:kube-system:replicaset-controller', groups: ['system:serviceaccounts', 'system:authenticated'] },
      object,
      oldObject: null,
      dryRun: false,
      options: { apiVersion: 'meta.k8s.io/v1', kind: 'CreateOptions' },
      ...request,
    },
  };
}

/** Decodes the response's base64 JSONPatch (empty when there is none). */
export function decodePatch(response: { patch?: string; patchType?: string }): PatchOperation[] {
  if (response.patch === undefined) return [];
  return JSON.parse(Buffer.from(response.patch, 'base64').toString('utf8')) as PatchOperation[];
}

export function patched<T>(pod: T, response: { patch?: string }): T {
  return applyPatch(pod, decodePatch(response));
}
