// What the injector adds to a pod: the driftguard container and its volumes (rules, /tmp,
// and the service-account token for cluster-issuer discovery).
// The container follows the sidecar contract of the core (proxy/cli.ts `run`):
// rules file under RULES_DIR, DRIFTGUARD_LISTEN / DRIFTGUARD_UPSTREAM / DRIFTGUARD_ADMIN,
// /healthz (alive) and /readyz (rules loaded, keys fetched) on the admin port.

import { RULES_DIR, type InjectorConfig } from './config.ts';
import { SERVICE_ACCOUNT_DIR } from '../lib/kubernetes.ts';

export const SIDECAR_NAME = 'driftguard';
/** The sidecar's ports by name: a Service's targetPort names the first (README, step 4). */
export const SIDECAR_PORT_NAMES: readonly string[] = ['driftguard', 'dg-probes'];
export const RULES_VOLUME = 'driftguard-rules';
export const TMP_VOLUME = 'driftguard-tmp';
export const IDENTITY_VOLUME = 'driftguard-identity';
export const ADMIN_VOLUME = 'driftguard-admin';
/**
 * Where the Secret of admin credentials (driftguard.io/admin-credential-secret) is mounted:
 * the rules name a file in it, `revocation.adminCredentialFile: /etc/driftguard/admin/<key>`.
 */
export const ADMIN_DIR = '/etc/driftguard/admin';
/**
 * The CLI inside the image: the build stage's JavaScript (Dockerfile, tsconfig.build.json),
 * not the TypeScript source. test/build/build.test.ts checks that the build lays it out here.
 */
export const IMAGE_CLI = '/app/proxy/cli.js';

export interface SidecarSettings {
  readonly rulesConfigMap: string;
  readonly listenPort: number;
  readonly upstreamPort: number;
  /** The sidecar's DRIFTGUARD_GRACE for this pod (podStop in mutate.ts). */
  readonly grace: string;
  /** Its DRIFTGUARD_DRAIN_DELAY, when it has one (a regular container: podStop). */
  readonly drainDelay?: string;
  /** A Secret of the pod's namespace mounted at ADMIN_DIR, for revocation.adminCredentialFile. */
  readonly adminCredentialSecret?: string;
}

/** Every address of the pod's family, as a listener address's host part. */
function anyAddress(config: InjectorConfig): string {
  return config.ipFamily === 'IPv6' ? '[::]' : '0.0.0.0';
}

/** The container object, in the shape of a Kubernetes core/v1 Container. */
export function sidecarContainer(config: InjectorConfig, settings: SidecarSettings): Record<string, unknown> {
  const container: Record<string, unknown> = {
    name: SIDECAR_NAME,
    image: config.image,
    imagePullPolicy: config.imagePullPolicy,
    command: ['node', IMAGE_CLI, 'run', '--config', `${RULES_DIR}/${config.rulesFile}`],
    env: [
      { name: 'DRIFTGUARD_LISTEN', value: `${anyAddress(config)}:${settings.listenPort}` },
      // The app is reached over the pod's loopback: it shares the network namespace.
      { name: 'DRIFTGUARD_UPSTREAM', value: `http://127.0.0.1:${settings.upstreamPort}` },
      // The full admin listener (decision ring, owner view, revocations) stays on loopback;
      // the kubelet and Prometheus get a probe listener with health, readiness and metrics only.
      { name: 'DRIFTGUARD_ADMIN', value: `127.0.0.1:${config.adminLocalPort}` },
      { name: 'DRIFTGUARD_PROBES', value: `${anyAddress(config)}:${config.adminPort}` },
      { name: 'DRIFTGUARD_GRACE', value: settings.grace },
      ...(settings.drainDelay !== undefined ? [{ name: 'DRIFTGUARD_DRAIN_DELAY', value: settings.drainDelay }] : []),
      { name: 'NODE_OPTIONS', value: config.nodeOptions },
      // In the form the API server stores (apiVersion defaulted), as the next review sees it.
      { name: 'POD_NAME', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.name' } } },
      { name: 'POD_NAMESPACE', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.namespace' } } },
      // Read by the OpenTelemetry SDK's environment resource detector.
      { name: 'OTEL_RESOURCE_ATTRIBUTES', value: 'k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)' },
      // The operator's own (sidecar.env): a collector's endpoint, headers, CA.
      ...config.env.map((e) => ({ ...e })),
    ],
    ports: [
      { name: SIDECAR_PORT_NAMES[0]!, containerPort: settings.listenPort, protocol: 'TCP' },
      { name: SIDECAR_PORT_NAMES[1]!, containerPort: config.adminPort, protocol: 'TCP' },
    ],
    // Startup: up to 2 minutes to load the rules and fetch the issuers' keys. For a
    // native sidecar this also holds back the app containers until driftguard is ready.
    startupProbe: probe('/readyz', config.adminPort, { periodSeconds: 1, failureThreshold: 120, timeoutSeconds: 1 }),
    readinessProbe: probe('/readyz', config.adminPort, { periodSeconds: 5, failureThreshold: 3, timeoutSeconds: 2 }),
    livenessProbe: probe('/healthz', config.adminPort, { periodSeconds: 10, failureThreshold: 3, timeoutSeconds: 2 }),
    resources: structuredClone(config.resources),
    securityContext: {
      runAsNonRoot: true,
      runAsUser: config.runAsUser,
      runAsGroup: config.runAsUser,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      privileged: false,
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    },
    volumeMounts: [
      // A directory mount, never subPath: the kubelet then swaps in ConfigMap updates.
      { name: RULES_VOLUME, mountPath: RULES_DIR, readOnly: true },
      { name: TMP_VOLUME, mountPath: '/tmp' },
      ...(config.serviceAccountToken ? [{ name: IDENTITY_VOLUME, mountPath: SERVICE_ACCOUNT_DIR, readOnly: true }] : []),
      ...(settings.adminCredentialSecret !== undefined ? [{ name: ADMIN_VOLUME, mountPath: ADMIN_DIR, readOnly: true }] : []),
    ],
    terminationMessagePolicy: 'FallbackToLogsOnError',
  };
  if (config.nativeSidecar) container.restartPolicy = 'Always';
  return container;
}

export function sidecarVolumes(config: InjectorConfig, settings: SidecarSettings): Record<string, unknown>[] {
  return [
    { name: RULES_VOLUME, configMap: { name: settings.rulesConfigMap, optional: false } },
    { name: TMP_VOLUME, emptyDir: { sizeLimit: config.tmpSizeLimit } },
    ...(config.serviceAccountToken ? [{
      // The same shape as the kube-api-access volume Kubernetes gives app containers: a
      // kubelet-rotated token (re-read by driftguard on every JWKS fetch) and the cluster CA.
      name: IDENTITY_VOLUME,
      projected: {
        defaultMode: 0o444,
        sources: [
          { serviceAccountToken: { path: 'token', expirationSeconds: 3607 } },
          { configMap: { name: 'kube-root-ca.crt', items: [{ key: 'ca.crt', path: 'ca.crt' }] } },
        ],
      },
    }] : []),
    // The admin credentials: in the sidecar only (no other container mounts the volume). Readable
    // by its user: a Secret's files are root's, and the sidecar runs as runAsUser.
    ...(settings.adminCredentialSecret !== undefined ? [{ name: ADMIN_VOLUME, secret: { secretName: settings.adminCredentialSecret, optional: false, defaultMode: 0o444 } }] : []),
  ];
}

function probe(path: string, port: number, timing: Record<string, number>): Record<string, unknown> {
  return { httpGet: { path, port, scheme: 'HTTP' }, ...timing };
}
