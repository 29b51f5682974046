// The injector's own configuration: what sidecar it adds to an opted-in pod.
// One JSON Schema is the single source of every default; a config file (YAML or JSON,
// rendered by the Helm chart) and command-line flags are merged, validated once at
// start-up, and frozen. A bad config is an InjectorConfigError that stops start-up.

import { readFileSync } from 'node:fs';
import { parseDocument, LineCounter } from 'yaml';
import { positionOf } from '../lib/yaml-position.ts';
import { Ajv } from 'ajv';
import { deepFreeze } from '../lib/freeze.ts';
import { MAX_GRACE_MS, boundedDuration } from '../rules/durations.ts';
import { checkTelemetryEnvironment } from '../telemetry/config.ts';

/** Where the sidecar finds its rules: the ConfigMap is mounted here as a directory. */
export const RULES_DIR = '/etc/driftguard/rules';

export interface ResourceList {
  readonly cpu?: string;
  readonly memory?: string;
  readonly 'ephemeral-storage'?: string;
}

export interface InjectorConfig {
  /** Image of the sidecar (the driftguard image). */
  readonly image: string;
  readonly imagePullPolicy: 'Always' | 'IfNotPresent' | 'Never';
  /** true: native sidecar (initContainers[] with restartPolicy: Always, Kubernetes >= 1.29); false: a regular container. */
  readonly nativeSidecar: boolean;
  /** ConfigMap holding the rules when the pod has no driftguard.io/rules annotation. */
  readonly rulesConfigMap: string;
  /** Key of the rules file inside the ConfigMap. */
  readonly rulesFile: string;
  /**
   * Default Secret of admin credentials mounted at /etc/driftguard/admin (overridden per pod by
   * the driftguard.io/admin-credential-secret annotation); none when unset.
   */
  readonly adminCredentialSecret?: string;
  /**
   * Registries (a host, a host:port, or a host and path) a webhook after the injector may move
   * the sidecar's image to: `mirror.corp/<image repository>` or `mirror.corp/<its path>`.
   */
  readonly imageMirrors: readonly string[];
  /** Traffic port of the sidecar when the pod has no driftguard.io/listen-port annotation. */
  readonly listenPort: number;
  /** Port of the app (on 127.0.0.1) when the pod has no driftguard.io/upstream-port annotation. */
  readonly upstreamPort: number;
  /** Admin listener of the sidecar (/healthz, /readyz). */
  readonly adminPort: number;
  /**
   * Loopback port of the full admin listener (decisions, consumers, revocations, reload).
   * Only /healthz, /readyz and /metrics are served on adminPort, on the pod IP.
   */
  readonly adminLocalPort: number;
  /** UID and GID the sidecar runs as (non-root; the image's user). */
  readonly runAsUser: number;
  /** NODE_OPTIONS of the sidecar: keeps the V8 heap inside the memory limit. */
  readonly nodeOptions: string;
  readonly resources: { readonly requests: ResourceList; readonly limits: ResourceList };
  /** Size limit of the emptyDir mounted at /tmp (the root filesystem is read-only). */
  readonly tmpSizeLimit: string;
  /**
   * Mount a projected service-account token and the cluster CA at the standard path in the
   * sidecar, for rules whose issuer has `profile: kubernetes` (JWKS discovery from the API
   * server). The ServiceAccount admission plugin mounts the token only into the containers
   * that exist before webhooks run, so an injected sidecar would otherwise have none.
   */
  readonly serviceAccountToken: boolean;
  /**
   * The pod network's family: IPv4 listens on 0.0.0.0; IPv6 on [::], which on a dual-stack
   * node takes IPv4 too (an IPv6-only cluster probes and routes to the pod's IPv6 address).
   */
  readonly ipFamily: 'IPv4' | 'IPv6';
  /**
   * More environment of the sidecar, after its own: the OTEL_* variables a collector needs (an
   * API key in OTEL_EXPORTER_OTLP_HEADERS from a Secret, OTEL_EXPORTER_OTLP_ENDPOINT, a CA),
   * which the rules file never holds. Not the variables the injector sets itself.
   */
  readonly env: readonly SidecarEnv[];
  /**
   * How long the sidecar lets requests in flight finish after SIGTERM (its `DRIFTGUARD_GRACE`),
   * at most: a pod whose terminationGracePeriodSeconds leaves less gets less (mutate.ts).
   */
  readonly grace: string;
  /**
   * How long a sidecar injected as a regular container goes on taking requests after SIGTERM,
   * not ready, before its drain (its `DRIFTGUARD_DRAIN_DELAY`): it gets SIGTERM as the pod starts
   * terminating, while the endpoints still send it traffic. A native sidecar gets none: it is
   * stopped after the app.
   */
  readonly drainDelay: string;
}

/** One entry of a container's env, as in core/v1 EnvVar: a value, or valueFrom (a Secret's key, say). */
export interface SidecarEnv {
  readonly name: string;
  readonly value?: string;
  readonly valueFrom?: Record<string, unknown>;
}

/** Variables that carry credentials (the OTLP exporter's request headers): from a Secret only, never a literal. */
const CREDENTIAL_ENV = ['OTEL_EXPORTER_OTLP_HEADERS', 'OTEL_EXPORTER_OTLP_TRACES_HEADERS'];

/** The variables the injector sets on the sidecar: sidecar.env may not set them again. */
export const INJECTED_ENV = ['DRIFTGUARD_LISTEN', 'DRIFTGUARD_UPSTREAM', 'DRIFTGUARD_ADMIN', 'DRIFTGUARD_PROBES', 'DRIFTGUARD_GRACE', 'DRIFTGUARD_DRAIN_DELAY', 'NODE_OPTIONS', 'POD_NAME', 'POD_NAMESPACE', 'OTEL_RESOURCE_ATTRIBUTES'];

export class InjectorConfigError extends Error {
  readonly code = 'ERR_INJECTOR_CONFIG';
  constructor(message: string) {
    super(message);
    this.name = 'InjectorConfigError';
  }
}

const port = { type: 'integer', minimum: 1, maximum: 65535 } as const;
const quantity = { type: 'string', pattern: '^[0-9]+(\\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$' } as const;
const resourceList = {
  type: 'object',
  additionalProperties: false,
  properties: { 'cpu': quantity, 'memory': quantity, 'ephemeral-storage': quantity },
} as const;

const name = { type: 'string', minLength: 1 } as const;
/** A ConfigMap's or a Secret's name (DNS-1123 subdomain). */
const dnsSubdomain = { type: 'string', maxLength: 253, pattern: '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$' } as const;
const keyRef = { type: 'object', additionalProperties: false, required: ['name', 'key'], properties: { name, key: name, optional: { type: 'boolean' } } } as const;
/** The sources of core/v1 EnvVarSource, each with the fields the API server requires and no others. */
const ENV_SOURCES = {
  fieldRef: { type: 'object', additionalProperties: false, required: ['fieldPath'], properties: { fieldPath: name, apiVersion: name } },
  resourceFieldRef: { type: 'object', additionalProperties: false, required: ['resource'], properties: { resource: name, containerName: name, divisor: { anyOf: [quantity, { type: 'number', minimum: 0 }] } } },
  configMapKeyRef: keyRef,
  secretKeyRef: keyRef,
} as const;

/**
 * An env entry's valueFrom, as core/v1 EnvVarSource: exactly one of the four sources. The API
 * server refuses any other shape (none, two, a misspelt one, which decoding drops, or one
 * without its key) in every pod the sidecar goes into, so it is checked at start-up.
 */
export const envVarSourceSchema = {
  type: 'object', additionalProperties: false, minProperties: 1, maxProperties: 1, properties: ENV_SOURCES,
} as const;

export const configSchema = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  title: 'driftguard injector configuration',
  type: 'object',
  additionalProperties: false,
  required: ['image'],
  properties: {
    image: { type: 'string', minLength: 1, description: 'Image of the sidecar.' },
    imagePullPolicy: { enum: ['Always', 'IfNotPresent', 'Never'], default: 'IfNotPresent' },
    nativeSidecar: { type: 'boolean', default: false, description: 'Inject a native sidecar (Kubernetes >= 1.29).' },
    rulesConfigMap: {
      ...dnsSubdomain, default: 'driftguard-rules',
      description: 'Default rules ConfigMap (overridden per pod by the driftguard.io/rules annotation).',
    },
    imageMirrors: {
      type: 'array', default: [], maxItems: 32,
      items: { type: 'string', pattern: '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]([-._a-z0-9]*[a-z0-9])?)*$' },
      description: 'Registries a later webhook may move the sidecar\'s image to (mirror.corp, mirror.corp:5000, mirror.corp/cache): a sidecar pulled from one is still the injector\'s at a pod\'s second review.',
    },
    adminCredentialSecret: {
      ...dnsSubdomain,
      description: 'Secret of the pod\'s namespace mounted read-only in the sidecar at /etc/driftguard/admin, for revocation.adminCredentialFile (overridden per pod by the driftguard.io/admin-credential-secret annotation). Unset: none.',
    },
    rulesFile: { type: 'string', default: 'rules.yaml', pattern: '^\\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$', description: 'Key of the rules file in the ConfigMap: not ., .. or a name starting with .. (the kubelet\'s own ..data).' },
    listenPort: { ...port, default: 15080 },
    upstreamPort: { ...port, default: 8080 },
    adminPort: { ...port, default: 15021, description: 'Probe port on the pod IP: /healthz, /readyz and /metrics only.' },
    adminLocalPort: { ...port, default: 15000, description: 'Loopback port of the full admin listener (kubectl port-forward to reach it).' },
    runAsUser: { type: 'integer', minimum: 1, default: 65532 },
    nodeOptions: { type: 'string', default: '--max-old-space-size=112 --max-semi-space-size=4' },
    resources: {
      type: 'object',
      additionalProperties: false,
      default: {},
      properties: {
        requests: { ...resourceList, default: { cpu: '50m', memory: '128Mi' } },
        limits: { ...resourceList, default: { memory: '320Mi' } },
      },
    },
    tmpSizeLimit: { ...quantity, default: '16Mi' },
    serviceAccountToken: { type: 'boolean', default: true, description: 'Mount a projected service-account token and the cluster CA for cluster-issuer JWKS discovery.' },
    ipFamily: { enum: ['IPv4', 'IPv6'], default: 'IPv4', description: 'IPv4: the sidecar listens on 0.0.0.0; IPv6: on [::] (IPv4 too where the node has it), for IPv6-only and IPv6-first clusters.' },
    grace: { type: 'string', default: '20s', description: 'How long the sidecar lets requests in flight finish after SIGTERM (15s, PT15S); less in a pod whose terminationGracePeriodSeconds leaves less.' },
    drainDelay: { type: 'string', default: '5s', description: 'How long a sidecar injected as a regular container goes on taking requests after SIGTERM, not ready, before its drain, while the pod\'s endpoints are withdrawn (0s: none). A native sidecar is stopped after the app and gets none.' },
    env: {
      type: 'array', default: [],
      description: 'More environment of the sidecar (the OTEL_* variables of a collector, an API key from a Secret by valueFrom).',
      items: {
        type: 'object', additionalProperties: false, required: ['name'],
        properties: {
          name: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$' },
          value: { type: 'string' },
          // Its shape (envVarSourceSchema) is checked per entry, for a message naming the variable.
          valueFrom: { type: 'object' },
        },
        oneOf: [{ required: ['value'] }, { required: ['valueFrom'] }],
      },
    },
  },
} as const;

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false });
const validate = ajv.compile(configSchema);
const validateEnvVarSource = ajv.compile(envVarSourceSchema);

/** Why the API server would refuse this valueFrom, or undefined. */
function envVarSourceProblem(valueFrom: Record<string, unknown>): string | undefined {
  const sources = Object.keys(ENV_SOURCES).join(', ');
  const keys = Object.keys(valueFrom);
  const unknown = keys.find((k) => !Object.hasOwn(ENV_SOURCES, k));
  if (unknown !== undefined) return `valueFrom.${unknown} is not a source (${sources})`;
  if (keys.length !== 1) return `valueFrom must give exactly one source (${sources}), not ${keys.length === 0 ? 'none' : keys.join(' and ')}`;
  if (validateEnvVarSource(valueFrom)) return undefined;
  const e = validateEnvVarSource.errors![0]!;
  const extra = e.keyword === 'additionalProperties' ? ` (${String(e.params.additionalProperty)})` : '';
  return `valueFrom${e.instancePath.replaceAll('/', '.')}: ${e.message ?? 'invalid'}${extra}`;
}

/**
 * Quantities written as numbers (`cpu: 1`, `cpu: 0.5`: YAML reads them so, and Kubernetes takes
 * them) as the strings they stand for, in place. A number that is no quantity then fails the
 * pattern, as any string would.
 */
function numericQuantities(config: Record<string, unknown>): void {
  const resources = config.resources;
  if (resources !== null && typeof resources === 'object' && !Array.isArray(resources)) {
    for (const list of Object.values(resources as Record<string, unknown>)) {
      if (list === null || typeof list !== 'object' || Array.isArray(list)) continue;
      for (const [k, v] of Object.entries(list)) if (typeof v === 'number') (list as Record<string, unknown>)[k] = String(v);
    }
  }
  if (typeof config.tmpSizeLimit === 'number') config.tmpSizeLimit = String(config.tmpSizeLimit);
}

/** The divisors the API server takes for a resourceFieldRef (by value), and how it spells each when it stores the pod. */
const DIVISORS = {
  cpu: { 0.001: '1m', 1: '1' },
  bytes: { 1: '1', 1e3: '1k', 1e6: '1M', 1e9: '1G', 1e12: '1T', 1e15: '1P', 1e18: '1E', [1024]: '1Ki', [1024 ** 2]: '1Mi', [1024 ** 3]: '1Gi', [1024 ** 4]: '1Ti', [1024 ** 5]: '1Pi', [1024 ** 6]: '1Ei' },
} as const;

function divisorKind(resource: string): keyof typeof DIVISORS {
  return /(^|\.)cpu$/.test(resource) ? 'cpu' : 'bytes';
}

/** A divisor as the API server stores it (`1000` is `1k`, `1000m` is `1`), or undefined when it refuses it (`2`, `3Mi`). */
function divisorAsStored(resource: string, divisor: unknown): string | undefined {
  const value = quantityValue(String(divisor));
  if (!Number.isFinite(value)) return undefined;
  for (const [v, spelled] of Object.entries(DIVISORS[divisorKind(resource)])) if (Math.abs(Number(v) - value) < 1e-9) return spelled;
  return undefined;
}

/** Line of a top-level key in the config file, for messages (undefined for flags). */
export type LineOf = (key: string) => number | undefined;

/** Validates a plain object (file contents merged with flags), applies defaults, freezes. */
export function buildConfig(input: unknown, source = 'injector config', lineOf: LineOf = () => undefined): InjectorConfig {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw new InjectorConfigError(`${source}: must be a mapping`);
  }
  /** `FILE:LINE` of a top-level key, or the source alone (a flag has no line). */
  const where = (key: string) => { const line = lineOf(key); return `${source}${line !== undefined ? `:${line}` : ''}`; };
  const copy = structuredClone(input) as Record<string, unknown>;
  numericQuantities(copy);
  if (!validate(copy)) {
    const lines = (validate.errors ?? []).map((e) => {
      const field = e.instancePath.replace(/^\//, '').replaceAll('/', '.') || '(top level)';
      const extra = e.keyword === 'additionalProperties' ? ` (${String(e.params.additionalProperty)})` : '';
      const allowed = e.keyword === 'enum' ? ` (${(e.params.allowedValues as unknown[]).join(', ')})` : '';
      const key = e.keyword === 'additionalProperties' && !e.instancePath ? String(e.params.additionalProperty) : e.instancePath.split('/')[1] ?? '';
      return `${where(key)}: ${field}: ${e.message ?? 'invalid'}${extra}${allowed}`;
    });
    throw new InjectorConfigError(lines.join('\n'));
  }
  const cfg = copy as unknown as InjectorConfig;
  const ports = [['listenPort', cfg.listenPort], ['upstreamPort', cfg.upstreamPort], ['adminPort', cfg.adminPort], ['adminLocalPort', cfg.adminLocalPort]] as const;
  for (let i = 0; i < ports.length; i++) {
    for (let j = i + 1; j < ports.length; j++) {
      if (ports[i][1] === ports[j][1]) {
        throw new InjectorConfigError(`${source}: ${ports[i][0]} and ${ports[j][0]} are both ${ports[i][1]}`);
      }
    }
  }
  const bounded = boundedDuration(cfg.grace, true);
  // As the sidecar's own --grace: a longer one would stop it at its start in every pod.
  const grace = typeof bounded === 'number' && bounded > MAX_GRACE_MS ? 'must be at most 24d (the sidecar refuses a longer grace)' : bounded;
  if (typeof grace === 'string') throw new InjectorConfigError(`${where('grace')}: grace: ${grace}`);
  const delay = boundedDuration(cfg.drainDelay, true);
  // One stop deadline covers the delay and the grace (the sidecar refuses more than 24d in all).
  const drainDelay = typeof delay === 'number' && delay + grace > MAX_GRACE_MS ? `must be at most 24d with grace (${cfg.grace}): the sidecar refuses more in all` : delay;
  if (typeof drainDelay === 'string') throw new InjectorConfigError(`${where('drainDelay')}: drainDelay: ${drainDelay}`);
  // A variable the injector sets itself, set again: the later would win, and DRIFTGUARD_UPSTREAM
  // or DRIFTGUARD_LISTEN so could take traffic around the checks.
  const names = new Set<string>();
  for (const [i, e] of cfg.env.entries()) {
    const at = `${where('env')}: env[${i}].name`;
    if (INJECTED_ENV.includes(e.name) || e.name.startsWith('DRIFTGUARD_')) throw new InjectorConfigError(`${at}: ${e.name} is set by the injector itself (${INJECTED_ENV.join(', ')})`);
    if (names.has(e.name)) throw new InjectorConfigError(`${at}: ${e.name} is listed twice`);
    names.add(e.name);
    const problem = e.valueFrom === undefined ? undefined : envVarSourceProblem(e.valueFrom);
    if (problem !== undefined) throw new InjectorConfigError(`${where('env')}: env[${i}] (${e.name}): ${problem}; the API server would refuse every pod injected with it`);
    const field = e.valueFrom?.resourceFieldRef as { resource: string; divisor?: unknown } | undefined;
    if (field?.divisor !== undefined && field.divisor !== 0 && field.divisor !== '0') {
      const stored = divisorAsStored(field.resource, field.divisor);
      if (stored === undefined) throw new InjectorConfigError(`${where('env')}: env[${i}] (${e.name}): valueFrom.resourceFieldRef.divisor ${JSON.stringify(field.divisor)} is none the API server takes for ${field.resource} (${Object.values(DIVISORS[divisorKind(field.resource)]).join(', ')}); it would refuse every pod injected with it`);
      // As the API server stores it: the sidecar at a pod's second review is compared as stored.
      field.divisor = stored;
    }
    // The exporter's headers are where a collector's API key goes: as a literal it would be in
    // the injector's ConfigMap and in every injected pod's spec, for whoever can read pods, and
    // a ConfigMap's key or the pod's own fields are readable as widely. A Secret only.
    if (CREDENTIAL_ENV.includes(e.name) && e.valueFrom?.secretKeyRef === undefined) {
      throw new InjectorConfigError(`${where('env')}: env[${i}] (${e.name}): ${e.valueFrom === undefined
        ? 'a literal value would put the collector\'s credentials in the spec of every injected pod, readable by whoever can read pods; give it with valueFrom.secretKeyRef (a Secret)'
        : `the collector's credentials come from a Secret only: give it with valueFrom.secretKeyRef, not ${Object.keys(e.valueFrom).join(', ')}`}`);
    }
  }
  // Literal values go into every injected sidecar as they are: one that driftguard refuses at
  // start-up would crash-loop every opted-in pod. Checked as the sidecar will, naming the
  // variable, never its value (headers carry API keys). valueFrom, and values that refer to
  // other variables ($(NODE_IP)), are only known in the pod.
  const literal = Object.fromEntries(cfg.env.filter((e) => e.value !== undefined && !e.value.includes('$(')).map((e) => [e.name, e.value]));
  try { checkTelemetryEnvironment(literal); } catch (err) {
    throw new InjectorConfigError(`${where('env')}: env: ${(err as Error).message}; the sidecar would refuse to start`);
  }
  // The API server refuses a container whose request is above its limit: every opted-in pod
  // would then be refused, not the injector's start-up.
  const { requests, limits } = cfg.resources;
  for (const name of ['cpu', 'memory', 'ephemeral-storage'] as const) {
    const [request, limit] = [requests?.[name], limits?.[name]];
    if (request === undefined || limit === undefined || compareQuantities(request, limit) <= 0) continue;
    throw new InjectorConfigError(`${where('resources')}: resources.requests.${name}: ${request} is above resources.limits.${name} (${limit}); the API server refuses a container so (and every pod injected with it)`);
  }
  return deepFreeze(cfg);
}

const QUANTITY_FACTORS: Record<string, number> = { '': 1, m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };

/** A quantity as the schema's pattern admits it: whole part, fraction, suffix. */
const QUANTITY = /^([0-9]+)(?:\.([0-9]+))?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$/;

/** A Kubernetes quantity as the schema's pattern admits it (`128Mi`, `0.5`, `50m`), as a number. */
export function quantityValue(q: string): number {
  const m = QUANTITY.exec(q);
  return m ? Number(m[2] === undefined ? m[1] : `${m[1]}.${m[2]}`) * QUANTITY_FACTORS[m[3] ?? '']! : Number.NaN;
}

/**
 * A quantity as an exact fraction (numerator, denominator): `700m` is 7/10, as `0.7` is. In
 * floating point 700 × 0.001 is 0.7000000000000001, above 0.7, and a request equal to its
 * limit was refused as above it, while the API server (and Helm) take it.
 */
function quantityFraction(q: string): [bigint, bigint] {
  const m = QUANTITY.exec(q);
  if (!m) return [0n, 0n];
  const fraction = m[2] ?? '';
  let num = BigInt(m[1]! + fraction);
  let den = 10n ** BigInt(fraction.length);
  const suffix = m[3] ?? '';
  if (suffix === 'm') den *= 1000n;
  else if (suffix !== '') num *= BigInt(QUANTITY_FACTORS[suffix]!);
  return [num, den];
}

/** Sign of a − b, exactly; NaN when either is no quantity. */
export function compareQuantities(a: string, b: string): number {
  const [an, ad] = quantityFraction(a);
  const [bn, bd] = quantityFraction(b);
  if (ad === 0n || bd === 0n) return Number.NaN;
  const d = an * bd - bn * ad;
  return d > 0n ? 1 : d < 0n ? -1 : 0;
}

/** Reads a YAML (or JSON) config file (an empty file is an empty mapping) and where each top-level key stands in it. */
export function readConfigFileWithLines(file: string): { value: Record<string, unknown>; lineOf: LineOf } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new InjectorConfigError(`${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false });
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    throw new InjectorConfigError(`${file}:${lines.linePos(e.pos[0]).line}: not valid YAML: ${e.message.split('\n')[0]}`);
  }
  const value: unknown = doc.toJS() ?? {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InjectorConfigError(`${file}: must be a mapping`);
  }
  const lineOf: LineOf = (key) => {
    const pos = positionOf(doc, lines, [key]);
    return pos.found ? pos.line : undefined;
  };
  return { value: value as Record<string, unknown>, lineOf };
}
