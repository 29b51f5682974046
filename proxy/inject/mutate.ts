// The admission decision, as a pure function: an AdmissionReview (parsed JSON) in,
// an AdmissionReview response with a base64 JSONPatch out. No I/O, no clock, no
// globals, so it is tested directly and the HTTPS server stays a thin shell.
//
// Outcomes:
//   malformed  the body is not an AdmissionReview we can answer (no request.uid):
//              the server replies HTTP 400 with the message.
//   rejected   an opted-in pod cannot get a working sidecar (bad annotation, port clash,
//              no containers): allowed: false with a status message naming the cause.
//   skipped    nothing to do (opted out, already injected, host network, not a pod
//              CREATE): allowed: true without a patch.
//   injected   allowed: true with the JSONPatch that adds the sidecar.

import { posix } from 'node:path';
import { quantityValue, type InjectorConfig } from './config.ts';
import { sidecarContainer, sidecarVolumes, IMAGE_CLI, SIDECAR_NAME, SIDECAR_PORT_NAMES, RULES_VOLUME, TMP_VOLUME, IDENTITY_VOLUME, ADMIN_VOLUME, type SidecarSettings } from './sidecar.ts';
import { isDnsSubdomain } from '../lib/kubernetes.ts';
import { parseDuration } from '../rules/durations.ts';

export const LABEL_INJECT = 'driftguard.io/inject';
export const ANNOTATION_RULES = 'driftguard.io/rules';
export const ANNOTATION_LISTEN_PORT = 'driftguard.io/listen-port';
export const ANNOTATION_UPSTREAM_PORT = 'driftguard.io/upstream-port';
export const ANNOTATION_STATUS = 'driftguard.io/status';
export const ANNOTATION_ADMIN_SECRET = 'driftguard.io/admin-credential-secret';
const ANNOTATION_DEFAULT_CONTAINER = 'kubectl.kubernetes.io/default-container';

export type Outcome = 'malformed' | 'rejected' | 'skipped' | 'injected';

export interface JsonPatchOp {
  readonly op: 'add' | 'replace' | 'remove' | 'test';
  readonly path: string;
  readonly value?: unknown;
}

export interface AdmissionResponse {
  readonly uid: string;
  readonly allowed: boolean;
  readonly patchType?: 'JSONPatch';
  /** base64 of the JSON-encoded JsonPatchOp[] */
  readonly patch?: string;
  readonly status?: { readonly code: number; readonly message: string };
  readonly warnings?: readonly string[];
}

export interface AdmissionReviewOut {
  readonly apiVersion: 'admission.k8s.io/v1';
  readonly kind: 'AdmissionReview';
  readonly response: AdmissionResponse;
}

export type MutationResult =
  | { readonly outcome: 'malformed'; readonly message: string }
  | {
    readonly outcome: Exclude<Outcome, 'malformed'>;
    /** Why (skipped, rejected) or what (injected): for the log line. */
    readonly reason: string;
    readonly review: AdmissionReviewOut;
    /** The patch operations, undecoded (injected only). */
    readonly patch?: readonly JsonPatchOp[];
    readonly namespace?: string;
    readonly pod?: string;
  };

type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** RFC 6901: '~' and '/' in a key are escaped in a JSON Pointer. */
export function pointerEscape(key: string): string {
  return key.replaceAll('~', '~0').replaceAll('/', '~1');
}

/** An image reference without its tag or digest: registry/name. */
function repository(image: unknown): string | undefined {
  if (typeof image !== 'string') return undefined;
  const bare = image.split('@')[0]!;
  const slash = bare.lastIndexOf('/');
  const colon = bare.lastIndexOf(':');
  return colon > slash ? bare.slice(0, colon) : bare;
}

/** The OS labels a Windows node carries, the current one and the one before it. */
const OS_LABELS = ['kubernetes.io/os', 'beta.kubernetes.io/os'];

/**
 * A pod that can only run on Windows nodes: by spec.os, by a node selector, or by a required
 * node affinity whose every term asks for Windows (the Linux sidecar would not start there).
 */
function isWindowsPod(spec: Obj): boolean {
  if (isObj(spec.os) && spec.os.name === 'windows') return true;
  if (isObj(spec.nodeSelector) && OS_LABELS.some((l) => (spec.nodeSelector as Obj)[l] === 'windows')) return true;
  const required = isObj(spec.affinity) && isObj(spec.affinity.nodeAffinity) ? spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution : undefined;
  const terms = isObj(required) && Array.isArray(required.nodeSelectorTerms) ? required.nodeSelectorTerms.filter(isObj) : [];
  // Terms are ORed, a term's expressions ANDed: Windows only when every term has an expression
  // that admits windows alone.
  return terms.length > 0 && terms.every((term) => (Array.isArray(term.matchExpressions) ? term.matchExpressions.filter(isObj) : []).some((e) =>
    OS_LABELS.includes(String(e.key)) && e.operator === 'In' && Array.isArray(e.values) && e.values.length > 0 && e.values.every((v) => v === 'windows')));
}

/**
 * The sidecar an injector of this image adds (its repository, its command), as opposed to a
 * container that only bears the name. Any tag of the repository: a pod that opts in by its
 * label in a namespace that opts in too is reviewed twice, and during an upgrade the second
 * review may reach a replica of the new image, which refused the old one's sidecar.
 */
function isOwnSidecar(c: Obj, config: InjectorConfig): boolean {
  const command = c.command;
  return ownRepository(c.image, config) && Array.isArray(command) && command[0] === 'node' && command[1] === IMAGE_CLI && command[2] === 'run';
}

/**
 * Whether an image is of the injector's repository: as configured, or moved to one of the
 * mirrors the operator names (imageMirrors). A webhook that runs after the injector may rewrite
 * every image to a mirror (`mirror.corp/ghcr.io/x`, or `mirror.corp/x` for `ghcr.io/x`), and the
 * sidecar it rewrote was refused as a foreign container, for every pod. Only named mirrors: a
 * repository of any registry would let a pod bring its own image as the guard, taken for the
 * injector's. The rest of the sidecar is still compared whole (sameSidecar).
 */
function ownRepository(image: unknown, config: InjectorConfig): boolean {
  const [found, own] = [repository(image), repository(config.image)];
  if (found === undefined || own === undefined) return false;
  if (found === own) return true;
  // Its path without the registry host (a first part with a dot or a port, or localhost).
  const [first, ...rest] = own.split('/');
  const path = /[.:]/.test(first!) || first === 'localhost' ? rest.join('/') : own;
  return config.imageMirrors.some((mirror) => found === `${mirror}/${own}` || found === `${mirror}/${path}`);
}

/**
 * Variables a later webhook may not add beside the injector's, by name: each changes what the
 * sidecar's process runs or trusts (PATH: the command's bare `node` is looked up through the
 * container's own PATH; Node's options and module path, the dynamic loader, OpenSSL's
 * configuration, name resolution, a proxy for its key fetches), or driftguard's own settings.
 */
const GUARDED_ENV = /^(?:DRIFTGUARD_|NODE_|OTEL_|LD_|OPENSSL_|SSL_|UV_|MALLOC_)|^(?:PATH|GCONV_PATH|LOCPATH|HOSTALIASES|RES_OPTIONS|LOCALDOMAIN|HTTPS?_PROXY|ALL_PROXY|NO_PROXY|GLIBC_TUNABLES|SSLKEYLOGFILE)$/i;
/** The image's trees a mount a later webhook adds may not cover, or sit in: driftguard's code, Node and its libraries, the system. */
const IMAGE_TREES = ['/app', '/usr', '/bin', '/sbin', '/lib', '/lib64', '/etc', '/proc', '/sys', '/dev'];

/** Whether two absolute paths are one, or one is inside the other. */
function overlaps(a: string, b: string): boolean {
  const [x, y] = [posix.normalize(a).replace(/(.)\/$/, '$1'), posix.normalize(b).replace(/(.)\/$/, '$1')];
  return x === y || x === '/' || y === '/' || x.startsWith(`${y}/`) || y.startsWith(`${x}/`);
}

/**
 * An env var or a volume mount as the API server hands it back: it defaults a fieldRef's
 * apiVersion to v1 after each webhook's patch, and drops an empty value or a false readOnly
 * (omitempty). Compared as written, the injector's own sidecar, once defaulted, was taken for
 * a look-alike at its second review (a pod opted in by its label and its namespace, or asked
 * again after a later webhook), and every such pod was refused.
 */
function asStored(x: unknown): unknown {
  if (!isObj(x)) return x;
  const out: Obj = { ...x };
  if (out.value === '') delete out.value;
  if (out.readOnly === false) delete out.readOnly;
  const from = out.valueFrom;
  if (isObj(from) && isObj(from.fieldRef) && from.fieldRef.apiVersion === undefined) out.valueFrom = { ...from, fieldRef: { ...from.fieldRef, apiVersion: 'v1' } };
  // A divisor is a quantity the API server stores as a string (1 comes back "1"), and 0 means none.
  if (isObj(from) && isObj(from.resourceFieldRef)) {
    const { divisor, ...rest } = from.resourceFieldRef;
    out.valueFrom = { ...from, resourceFieldRef: divisor === undefined || divisor === 0 || divisor === '0' ? rest : { ...rest, divisor: String(divisor) } };
  }
  return canonicalJson(out);
}

/**
 * Whether `actual` holds every entry of `expected` (by `key`, once, as stored), and beside them
 * only entries `added` accepts: what a later webhook adds to every container (EKS's IRSA
 * variables and token mount, Vault's secrets mount).
 */
function holds(actual: unknown, expected: unknown, key: (x: Obj) => unknown, added: (x: Obj) => boolean): boolean {
  const want = new Map((Array.isArray(expected) ? expected : []).filter(isObj).map((e) => [key(e), asStored(e)]));
  const found = new Set<unknown>();
  for (const x of Array.isArray(actual) ? actual : []) {
    if (!isObj(x)) return false;
    const k = key(x);
    if (!want.has(k)) { if (!added(x)) return false; continue; }
    if (found.has(k) || asStored(x) !== want.get(k)) return false;
    found.add(k);
  }
  return found.size === want.size;
}

/**
 * Whether a container is the sidecar `expected` for this pod in all that decides what runs and
 * what it guards: its command (the rules file), its ports, its environment (NODE_OPTIONS can run
 * any code before driftguard's), its volume mounts, and nothing added that changes them (args,
 * envFrom, lifecycle hooks, a guarded variable, a mount over its own or the image's trees). Not
 * its image's tag (isOwnSidecar) nor its probes and resources.
 */
function sameSidecar(c: Obj, expected: Record<string, unknown>): boolean {
  const ports = (x: unknown) => JSON.stringify((Array.isArray(x) ? x : []).map((p) => (isObj(p) ? [p.name, p.containerPort, p.protocol ?? 'TCP'] : p)));
  const mounts = (Array.isArray(expected.volumeMounts) ? expected.volumeMounts : []).filter(isObj).map((m) => String(m.mountPath));
  const addedEnv = (e: Obj) => typeof e.name === 'string' && !GUARDED_ENV.test(e.name);
  const addedMount = (m: Obj) => typeof m.mountPath === 'string' && m.mountPath.startsWith('/') && ![...mounts, ...IMAGE_TREES].some((p) => overlaps(p, m.mountPath as string));
  return JSON.stringify(c.command) === JSON.stringify(expected.command) && ports(c.ports) === ports(expected.ports)
    && holds(c.env, expected.env, (e) => e.name, addedEnv)
    && holds(c.volumeMounts, expected.volumeMounts, (m) => m.mountPath, addedMount)
    && c.args === undefined && c.envFrom === undefined && c.lifecycle === undefined;
}

/** JSON with every object's keys sorted: the API server may hand fields back in another order. */
function canonicalJson(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => (isObj(x) && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : 1))) : x));
}

/** Whether a container has a network probe that names its port (a probe of the app itself). */
function hasNamedProbe(c: Obj): boolean {
  return networkProbes(c).some((h) => typeof h.port === 'string');
}

/** The numbered pod ports a container's probes use (httpGet, tcpSocket, grpc; not a probe of another host). */
function probePorts(c: Obj): number[] {
  return networkProbes(c).flatMap((h) => (typeof h.port === 'number' && h.host === undefined ? [h.port] : []));
}

/** A container's network probe handlers: httpGet, tcpSocket and grpc, of its readiness, liveness and startup probes. */
function networkProbes(c: Obj): Obj[] {
  return [c.readinessProbe, c.livenessProbe, c.startupProbe].filter(isObj)
    .flatMap((probe) => [probe.httpGet, probe.tcpSocket, probe.grpc].filter(isObj));
}

export function mutate(body: unknown, config: InjectorConfig): MutationResult {
  if (!isObj(body)) return { outcome: 'malformed', message: 'the body must be a JSON object (an AdmissionReview)' };
  if (body.apiVersion !== 'admission.k8s.io/v1' || body.kind !== 'AdmissionReview') {
    return {
      outcome: 'malformed',
      message: `expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got ${JSON.stringify(body.apiVersion)} and ${JSON.stringify(body.kind)}`,
    };
  }
  const request = body.request;
  if (!isObj(request)) return { outcome: 'malformed', message: 'AdmissionReview has no request object' };
  const uid = request.uid;
  if (typeof uid !== 'string' || uid === '') return { outcome: 'malformed', message: 'AdmissionReview request.uid must be a non-empty string' };

  const namespace = typeof request.namespace === 'string' ? request.namespace : undefined;
  const answer = (outcome: 'rejected' | 'skipped' | 'injected', reason: string, response: Omit<AdmissionResponse, 'uid'>, pod?: string, patch?: readonly JsonPatchOp[]): MutationResult => ({
    outcome, reason, namespace, pod, patch,
    review: { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response: { uid, ...response } },
  });
  const reject = (message: string, pod?: string) =>
    answer('rejected', message, { allowed: false, status: { code: 400, message: `driftguard injector: ${message}` } }, pod);

  // The webhook is registered for pod CREATE only; anything else is not ours to judge.
  const kind = request.kind;
  const isPodCreate = isObj(kind) && kind.group === '' && kind.kind === 'Pod' && request.operation === 'CREATE' && !request.subResource;
  if (!isPodCreate) return answer('skipped', 'not a pod CREATE', { allowed: true });

  const pod = request.object;
  if (!isObj(pod)) return reject('request.object must be a Pod object');
  const metadata = pod.metadata === undefined ? {} : pod.metadata;
  if (!isObj(metadata)) return reject('pod metadata must be an object');
  const podName = typeof metadata.name === 'string' && metadata.name ? metadata.name
    : typeof metadata.generateName === 'string' ? `${metadata.generateName}*` : undefined;
  const labels = metadata.labels === undefined ? {} : metadata.labels;
  const annotations = metadata.annotations === undefined ? {} : metadata.annotations;
  if (!isObj(labels) || !isObj(annotations)) return reject('pod labels and annotations must be objects', podName);
  const spec = pod.spec;
  if (!isObj(spec)) return reject('pod has no spec', podName);
  const containers = spec.containers;
  if (!Array.isArray(containers) || containers.length === 0 || !containers.every(isObj)) {
    return reject('pod spec.containers must be a non-empty list of containers', podName);
  }
  const initContainers = spec.initContainers ?? [];
  const volumes = spec.volumes ?? [];
  if (!Array.isArray(initContainers) || !initContainers.every(isObj)) return reject('pod spec.initContainers must be a list of containers', podName);
  if (!Array.isArray(volumes) || !volumes.every(isObj)) return reject('pod spec.volumes must be a list of volumes', podName);

  // Opt-in is decided by the webhook's selectors (pod label, or namespace label);
  // the pod's own "false" always wins, even in an opted-in namespace.
  const warnings: string[] = [];
  const injectLabel = labels[LABEL_INJECT];
  if (injectLabel === 'false') return answer('skipped', 'pod opted out', { allowed: true }, podName);
  if (injectLabel !== undefined && injectLabel !== 'true') {
    warnings.push(`label ${LABEL_INJECT}=${JSON.stringify(injectLabel)} is neither "true" nor "false"; injecting because the namespace opted in`);
  }

  // Idempotent: a pod that already has the sidecar (reinvocation, a re-applied manifest that
  // carries it) is left exactly as it is. Only the injector's own sidecar counts: a container
  // of that name with another image or command, or a driftguard.io/status annotation the pod
  // wrote itself, would otherwise run the pod unguarded while looking injected.
  // Its ports are checked against the other containers' all the same: a later webhook (Istio's,
  // when its configuration's name sorts after this one's) may have added a container that
  // clashes, and webhook.reinvocationPolicy IfNeeded asks again after it.
  const named = [...containers, ...initContainers].filter((c) => c.name === SIDECAR_NAME);
  const injected = named.length === 1 && isOwnSidecar(named[0]!, config);
  if (named.length > 0 && !injected) {
    return reject(`the pod already has a container named ${SIDECAR_NAME} that is not the injector's (image ${config.image}, command node ${IMAGE_CLI} run): remove it, the injector adds the sidecar`, podName);
  }
  if (spec.hostNetwork === true) {
    return answer('skipped', 'host network', { allowed: true, warnings: ['driftguard sidecar not injected: pods with hostNetwork are not supported'] }, podName);
  }
  // The sidecar's securityContext (seccomp, runAsUser, capabilities) is Linux's: the API
  // server would refuse the injected Windows pod.
  // Windows by spec.os, or by the node selector that is all older manifests set.
  if (isWindowsPod(spec)) {
    return answer('skipped', 'windows', { allowed: true, warnings: ['driftguard sidecar not injected: Windows pods are not supported'] }, podName);
  }

  const others = containers.filter((c) => c.name !== SIDECAR_NAME);
  const otherInits = initContainers.filter((c) => c.name !== SIDECAR_NAME);
  // A Service's targetPort names the sidecar's port: an app port of that name would take the
  // traffic around driftguard (Kubernetes resolves a name to the first container that has it).
  for (const c of [...others, ...otherInits]) {
    const port = (Array.isArray(c.ports) ? c.ports : []).find((p) => isObj(p) && SIDECAR_PORT_NAMES.includes(p.name as string));
    if (port) return reject(`container ${JSON.stringify(String(c.name))} declares a port named ${String(port.name)}, the sidecar's: a Service whose targetPort names it could reach the app around driftguard; rename that port`, podName);
  }

  // Per-pod settings from annotations, each validated with a message naming it.
  const settingsOrError = readSettings(annotations, config);
  if (typeof settingsOrError === 'string') return reject(settingsOrError, podName);
  const stop = podStop(spec, config);
  if (stop.warning !== undefined) warnings.push(stop.warning);
  const settings: SidecarSettings = { ...settingsOrError, grace: stop.grace, ...(stop.drainDelay !== undefined ? { drainDelay: stop.drainDelay } : {}) };
  // A pod that turned the token off (automountServiceAccountToken: false) gets none in the
  // sidecar either: its owner chose that no container holds the pod's API credential. The
  // service account's own setting is not visible here (the webhook reads no API objects).
  const tokenless = config.serviceAccountToken && spec.automountServiceAccountToken === false;
  const sidecarConfig = tokenless ? { ...config, serviceAccountToken: false } : config;
  // A container that only looks like the injector's (its image, its command's start) with other
  // rules, ports, environment or mounts: `--config /dev/null`, a port named driftguard on the
  // app's own port (a Service's targetPort would reach the app around the checks), a
  // NODE_OPTIONS that runs code first.
  // A regular container injected before drain delays existed (no DRIFTGUARD_DRAIN_DELAY, and
  // the whole period's room for its grace) is still the injector's own: during an upgrade its
  // pods are reviewed again.
  const older = (): Record<string, unknown> => sidecarContainer(sidecarConfig, { ...settingsOrError, grace: podStop(spec, { ...config, drainDelay: '0s' }).grace });
  if (injected && !sameSidecar(named[0]!, sidecarContainer(sidecarConfig, settings)) && (config.nativeSidecar || !sameSidecar(named[0]!, older()))) {
    return reject(`the pod's ${SIDECAR_NAME} container is not the sidecar the injector adds for it (its command, ports, environment or mounts differ, or it has args, envFrom or lifecycle hooks: a policy that adds a preStop hook to every container must leave ${SIDECAR_NAME} out): remove it, the injector adds the sidecar`, podName);
  }

  // The sidecar shares the pod's network namespace: its ports must be free.
  const taken = new Map<number, string>();
  // Init containers run beside a native sidecar (it starts first); as a regular container,
  // it starts after they have exited, except other native sidecars (restartPolicy Always).
  const beside = config.nativeSidecar ? otherInits : otherInits.filter((c) => c.restartPolicy === 'Always');
  for (const c of [...others, ...beside]) {
    for (const p of Array.isArray(c.ports) ? c.ports : []) {
      // driftguard listens on TCP: an app's UDP or SCTP port of the same number is no conflict.
      if (!isObj(p) || typeof p.containerPort !== 'number') continue;
      if (p.protocol === undefined || p.protocol === 'TCP') taken.set(p.containerPort, String(c.name));
    }
    // A port only a probe names is in use too: Istio's proxy declares 15090 alone and is
    // probed on 15021, driftguard's default probe port. Not the listen port: a probe of a
    // public operation through driftguard, as the README suggests, aims there.
    for (const port of probePorts(c)) if (!taken.has(port) && port !== settings.listenPort) taken.set(port, String(c.name));
  }
  for (const [what, port, remedy] of [
    ['listen port', settings.listenPort, `set ${ANNOTATION_LISTEN_PORT} to a free port`],
    ['probe port', config.adminPort, 'set sidecar.adminPort in the chart\'s values to a free port'],
    ['local admin port', config.adminLocalPort, 'set sidecar.adminLocalPort in the chart\'s values to a free port'],
  ] as const) {
    const owner = taken.get(port);
    if (owner !== undefined) {
      return reject(`the driftguard ${what} ${port} is already used by container ${JSON.stringify(owner)}; ${remedy}`, podName);
    }
  }
  if (injected) return answer('skipped', 'already injected', { allowed: true }, podName);
  // The kubelet probes the pod IP: an app bound to 127.0.0.1, as the README advises, fails
  // these probes once driftguard fronts it.
  const probed = containers.filter((c) => probePorts(c).includes(settings.upstreamPort) || hasNamedProbe(c));
  if (probed.length > 0) {
    warnings.push(`container ${JSON.stringify(String(probed[0]!.name))} has an HTTP, TCP or gRPC probe: the kubelet sends it to the pod IP, so it fails if the app listens on 127.0.0.1 only; use exec probes, or probe a public operation through driftguard's port`);
  }
  // The sidecar runs as a non-root user with every capability dropped: it binds a port below
  // 1024 only where the node's runtime lets anyone (net.ipv4.ip_unprivileged_port_start=0, as
  // containerd and Docker set it); elsewhere it stops with EACCES and the pod never serves.
  const privileged = [['listen port', settings.listenPort], ['probe port', config.adminPort], ['local admin port', config.adminLocalPort]].filter(([, port]) => (port as number) < 1024);
  for (const [what, port] of privileged) warnings.push(`the driftguard ${what} ${port} is below 1024: the sidecar runs as a non-root user without capabilities and binds it only where the node's runtime sets net.ipv4.ip_unprivileged_port_start to 0; else it stops with EACCES`);
  if (taken.size > 0 && !taken.has(settings.upstreamPort)) {
    warnings.push(`no container declares port ${settings.upstreamPort}, where driftguard forwards traffic; set ${ANNOTATION_UPSTREAM_PORT} to the app's port`);
  }
  const volumeNames = new Set(volumes.map((v) => v.name));
  for (const name of [RULES_VOLUME, TMP_VOLUME, IDENTITY_VOLUME, ADMIN_VOLUME]) {
    if (volumeNames.has(name)) return reject(`the pod already has a volume named ${name}`, podName);
  }
  // One process namespace: a container running as the sidecar's user reads its files through
  // /proc/<pid>/root (the admin credential) and its environment through /proc/<pid>/environ,
  // and can signal it. Said, not refused: a debugging pod may want it, and the cluster admin
  // can tell whether its containers share the user.
  const shared = spec.shareProcessNamespace === true ? 'shareProcessNamespace' : spec.hostPID === true ? 'hostPID' : undefined;
  if (shared) {
    warnings.push(`the pod sets ${shared}: true, so any container running as the driftguard sidecar's user (${sidecarConfig.runAsUser}) can read its admin credential and environment through /proc and stop it; run the app as another user, or do not share the process namespace`);
  }
  if (!config.nativeSidecar && (spec.restartPolicy === 'Never' || spec.restartPolicy === 'OnFailure')) {
    warnings.push('driftguard runs as a regular container on this cluster: a pod that is meant to complete (a Job) will keep running until driftguard is stopped');
  }

  const patch: JsonPatchOp[] = [];
  if (pod.metadata === undefined) patch.push({ op: 'add', path: '/metadata', value: {} });
  const status = config.nativeSidecar ? 'injected-native' : 'injected';
  const newAnnotations: Obj = { [ANNOTATION_STATUS]: status };
  // kubectl logs/exec should keep landing in the app, not in the sidecar.
  if (!config.nativeSidecar && annotations[ANNOTATION_DEFAULT_CONTAINER] === undefined && typeof containers[0].name === 'string') {
    newAnnotations[ANNOTATION_DEFAULT_CONTAINER] = containers[0].name;
  }
  if (metadata.annotations === undefined) {
    patch.push({ op: 'add', path: '/metadata/annotations', value: newAnnotations });
  } else {
    for (const [k, v] of Object.entries(newAnnotations)) patch.push({ op: 'add', path: `/metadata/annotations/${pointerEscape(k)}`, value: v });
  }
  if (tokenless) {
    warnings.push('the pod sets automountServiceAccountToken: false, so the driftguard sidecar gets no service-account token either: an issuer with profile kubernetes and no jwks cannot discover the cluster\'s keys, and the sidecar stays unready');
  }
  const container = sidecarContainer(sidecarConfig, settings);
  if (config.nativeSidecar) {
    // First, so that later init containers and the app start once driftguard is ready.
    if (spec.initContainers === undefined) patch.push({ op: 'add', path: '/spec/initContainers', value: [container] });
    else patch.push({ op: 'add', path: '/spec/initContainers/0', value: container });
  } else {
    patch.push({ op: 'add', path: '/spec/containers/-', value: container });
  }
  podResources(spec, container, patch, warnings);
  const newVolumes = sidecarVolumes(sidecarConfig, settings);
  if (spec.volumes === undefined) patch.push({ op: 'add', path: '/spec/volumes', value: newVolumes });
  else for (const v of newVolumes) patch.push({ op: 'add', path: '/spec/volumes/-', value: v });

  const response: Omit<AdmissionResponse, 'uid'> = {
    allowed: true,
    patchType: 'JSONPatch',
    patch: Buffer.from(JSON.stringify(patch)).toString('base64'),
    ...(warnings.length ? { warnings } : {}),
  };
  return answer('injected', `${status} rules=${settings.rulesConfigMap} listen=${settings.listenPort} upstream=${settings.upstreamPort}`, response, podName, patch);
}

/**
 * Pod-level resources (spec.resources) must hold every container's requests and each
 * container's limits: the sidecar's are added to those the pod sets (a limit the pod does not
 * set stays unset), said in a warning. Left as they were, the API server refused the pod with a
 * message about spec.resources that did not name driftguard. A quantity this cannot read is
 * left alone, and said.
 */
function podResources(spec: Obj, container: Obj, patch: JsonPatchOp[], warnings: string[]): void {
  const pod = spec.resources;
  if (!isObj(pod)) return;
  const own = isObj(container.resources) ? container.resources : {};
  const changed: string[] = [];
  for (const kind of ['requests', 'limits'] as const) {
    const set = pod[kind];
    // A pod limit for what the sidecar has no limit on (cpu, by default): its request is added
    // there too, or the pod's requests would pass its limits (the API server fills a request
    // from a limit the pod sets alone, so a limits-only or Guaranteed pod was refused).
    const add = kind === 'limits' ? { ...(isObj(own.requests) ? own.requests : {}), ...(isObj(own.limits) ? own.limits : {}) } : own[kind];
    if (!isObj(set) || !isObj(add)) continue;
    for (const [name, extra] of Object.entries(add)) {
      const current = set[name];
      if (current === undefined) continue;
      const sum = addQuantities(String(current), String(extra), name);
      if (sum === undefined) { warnings.push(`the pod's spec.resources.${kind}.${name} (${String(current)}) could not be read: the driftguard sidecar's ${String(extra)} was not added to it, and the API server refuses the pod if it no longer holds it`); continue; }
      patch.push({ op: 'replace', path: `/spec/resources/${kind}/${pointerEscape(name)}`, value: sum });
      changed.push(`${kind}.${name} ${String(current)} -> ${sum}`);
    }
  }
  if (changed.length) warnings.push(`the pod sets pod-level resources: the driftguard sidecar's were added to them (${changed.join(', ')})`);
}

/** `a` + `b` as a quantity (cpu in millicores, the rest in bytes, Mi when whole), or undefined when either cannot be read. */
function addQuantities(a: string, b: string, name: string): string | undefined {
  const sum = quantityValue(a) + quantityValue(b);
  if (!Number.isFinite(sum)) return undefined;
  // Rounded to a millionth first: 0.1 + 0.05 cores is 0.15000000000000002.
  if (name === 'cpu') return `${Math.ceil(Math.round(sum * 1e6) / 1e3)}m`;
  const mi = sum / (1024 * 1024);
  return Number.isInteger(mi) ? `${mi}Mi` : String(Math.ceil(sum));
}

/** What the sidecar needs after its grace period: the last telemetry flush (3 s at most) and a margin. */
const AFTER_GRACE_S = 5;

/** A duration in milliseconds as the sidecar's variables take it: whole seconds, else milliseconds. */
function durationText(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

/**
 * How the sidecar stops in this pod: its drain delay (a regular container only) and its grace
 * period, the configured ones, cut so that the delay, the drain and the last flush end before
 * the kubelet's SIGKILL (terminationGracePeriodSeconds, 30 s by default). Where both do not
 * fit, the delay takes at most half of what the flush leaves (more only if the grace needs
 * less), the grace the rest: a delay with no grace after it would reset the requests it took in
 * (a safe refusal traded for an unsafe cut). A drain the kill cuts short loses the
 * decision-log lines and spans of its last requests.
 */
function podStop(spec: Obj, config: InjectorConfig): { grace: string; drainDelay?: string; warning?: string } {
  // In milliseconds: whole seconds, `500ms` became `0s`, a grace of nothing, and nothing said.
  const graceMs = parseDuration(config.grace);
  // A native sidecar gets SIGTERM once the app has stopped: nothing is left to route to it.
  const delayMs = config.nativeSidecar ? 0 : parseDuration(config.drainDelay);
  const period = spec.terminationGracePeriodSeconds;
  // A negative period (stored as written before Kubernetes 1.27) is the API server's 1 s.
  const podSeconds = typeof period === 'number' && Number.isFinite(period) ? (period < 0 ? 1 : Math.floor(period)) : 30;
  const room = Math.max(0, podSeconds - AFTER_GRACE_S) * 1000;
  // Cut only when both do not fit: then the delay to at most half of the room (or what the
  // grace leaves, if more), the grace to the rest.
  const delay = delayMs + graceMs <= room ? delayMs : Math.min(delayMs, Math.max(room / 2, room - graceMs));
  const grace = Math.min(graceMs, room - delay);
  const stop = { grace: durationText(grace), ...(delayMs > 0 ? { drainDelay: durationText(delay) } : {}) };
  if (delay === delayMs && grace === graceMs) return stop;
  const cuts = [
    ...(delay < delayMs ? [`drain delay is cut from ${durationText(delayMs)} to ${durationText(delay)}`] : []),
    ...(grace < graceMs ? [`grace period is cut from ${durationText(graceMs)} to ${durationText(grace)}`] : []),
  ];
  return {
    ...stop,
    warning: `terminationGracePeriodSeconds is ${typeof period === 'number' && period < 0 ? `${period}, which the kubelet takes as 1` : podSeconds}: the driftguard sidecar's ${cuts.join(' and its ')} so that it drains and flushes its telemetry (up to ${AFTER_GRACE_S}s more) before the kubelet's SIGKILL; requests still in flight then are cut`,
  };
}

function readSettings(annotations: Obj, config: InjectorConfig): Omit<SidecarSettings, 'grace'> | string {
  const rules = annotations[ANNOTATION_RULES] ?? config.rulesConfigMap;
  if (!isDnsSubdomain(rules)) {
    return `annotation ${ANNOTATION_RULES}=${JSON.stringify(rules)} is not a ConfigMap name (lowercase letters, digits, '-' and '.')`;
  }
  const listenPort = readPort(annotations, ANNOTATION_LISTEN_PORT, config.listenPort);
  if (typeof listenPort === 'string') return listenPort;
  const upstreamPort = readPort(annotations, ANNOTATION_UPSTREAM_PORT, config.upstreamPort);
  if (typeof upstreamPort === 'string') return upstreamPort;
  if (listenPort === upstreamPort) return `${ANNOTATION_LISTEN_PORT} and ${ANNOTATION_UPSTREAM_PORT} are both ${listenPort}: driftguard would forward to itself`;
  if (listenPort === config.adminPort || listenPort === config.adminLocalPort) return `${ANNOTATION_LISTEN_PORT} ${listenPort} is driftguard's admin port`;
  if (upstreamPort === config.adminPort || upstreamPort === config.adminLocalPort) return `${ANNOTATION_UPSTREAM_PORT} ${upstreamPort} is driftguard's admin port`;
  // An empty annotation says none, as it does to a default elsewhere in Kubernetes: a pod
  // whose namespace lacks the chart's default Secret would otherwise never start (it is required).
  const annotated = annotations[ANNOTATION_ADMIN_SECRET];
  const secret = annotated === '' ? undefined : annotated ?? config.adminCredentialSecret;
  if (secret !== undefined && !isDnsSubdomain(secret)) {
    return `annotation ${ANNOTATION_ADMIN_SECRET}=${JSON.stringify(secret)} is not a Secret name (lowercase letters, digits, '-' and '.')`;
  }
  return { rulesConfigMap: rules, listenPort, upstreamPort, ...(secret !== undefined ? { adminCredentialSecret: secret } : {}) };
}

function readPort(annotations: Obj, name: string, fallback: number): number | string {
  const raw = annotations[name];
  if (raw === undefined) return fallback;
  const port = typeof raw === 'string' && /^[0-9]{1,5}$/.test(raw) ? Number(raw) : NaN;
  if (!(port >= 1 && port <= 65535)) return `annotation ${name}=${JSON.stringify(raw)} is not a port number (1-65535)`;
  return port;
}
