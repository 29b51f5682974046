// The rules after validation: every default applied, every duration in milliseconds,
// every time in epoch milliseconds, every reference resolved. Frozen once built.

import type { JSONWebKeySet } from 'jose';

export type Mode = 'enforce' | 'audit';
export type ConsumerKind = 'automation' | 'human';
export type Sensitivity = 'low' | 'medium' | 'high' | 'critical';

export const SENSITIVITY_RANK: Readonly<Record<Sensitivity, number>> = { low: 0, medium: 1, high: 2, critical: 3 };
/** The lowest sensitivity a policy applies from (contract.blockAt, credentials.taskBindingAt, monitors.idempotency.at); never: none. */
export type Threshold = Sensitivity | 'never';
/** A threshold's rank, to compare with SENSITIVITY_RANK: never is above every sensitivity. */
export function thresholdRank(at: Threshold): number {
  return at === 'never' ? Infinity : SENSITIVITY_RANK[at];
}

export interface ProxyRules {
  readonly listen: string;
  readonly upstream: string;
  readonly admin: string;
  /** Optional probe-only listener: /healthz, /readyz, /metrics. */
  readonly probes?: string;
  readonly mode: Mode;
  readonly timeouts: {
    readonly connectMs: number;
    readonly responseMs: number;
    /** Longest silence on a client's connection while its request is handled; 0: none. */
    readonly clientIdleMs: number;
    /** The whole request, headers and body, must arrive within this (0: no limit). */
    readonly requestMs: number;
    /** Longest an answer may wait, in all, for its client to read it (0: no limit). */
    readonly clientReadMs: number;
    /** How long a client connection idle between requests is kept (Node's keepAliveTimeout). */
    readonly clientKeepAliveMs: number;
    /** Longest silence in both directions of a WebSocket tunnel before it is closed; 0: none. */
    readonly tunnelIdleMs: number;
    /** How long an idle keep-alive connection to the upstream is kept. */
    readonly upstreamIdleMs: number;
  };
  readonly connections: number;
  /** Client connections the traffic listener holds at once. */
  readonly clientConnections: number;
  /** Cookies the upstream never authenticates from: not searched for a second credential. */
  readonly ignoredCookies: readonly string[];
  /** The Host every forwarded request carries (the client's then only in X-Forwarded-Host); unset: the client's. */
  readonly upstreamHost?: string;
}

export type JwksSource =
  /** `keys`: the file's key set as the rules loader read, selected and checked it. */
  | { readonly kind: 'file'; readonly file: string; readonly keys: JSONWebKeySet }
  | { readonly kind: 'url'; readonly url: string; readonly refreshMs: number; readonly cooldownMs: number; readonly timeoutMs: number }
  | {
      readonly kind: 'discovery';
      /** URL of the OIDC discovery document (…/.well-known/openid-configuration). */
      readonly discovery: string;
      /** Bearer token sent to the discovery origin, re-read on every fetch. */
      readonly tokenFile?: string;
      /** PEM CA to trust for the discovery origin, re-read on every fetch. */
      readonly caFile?: string;
      readonly refreshMs: number; readonly cooldownMs: number; readonly timeoutMs: number;
    };

/** oauth: any JWT access token; kubernetes: service-account tokens of the cluster; spiffe: JWT-SVIDs. */
export type IssuerProfile = 'oauth' | 'kubernetes' | 'spiffe';

export interface IssuerRules {
  readonly issuer: string;
  readonly profile: IssuerProfile;
  /** spiffe profile: the trust domain every sub must belong to. */
  readonly trustDomain?: string;
  readonly audiences: readonly string[];
  readonly algorithms: readonly string[];
  readonly typ?: string;
  readonly jwks: JwksSource;
}

export interface IdentityRules {
  readonly issuers: readonly IssuerRules[];
  readonly clockSkewMs: number;
  readonly maxTokenLifetimeMs: Readonly<Record<ConsumerKind, number>>;
  readonly cache: { readonly maxEntries: number; readonly maxTokenBytes: number; readonly maxBytes: number };
}

export interface ConsumerRules {
  readonly subject: string;
  /** The issuer that vouches for the subject: the same sub from another is not this consumer. */
  readonly issuer: string;
  readonly kind: ConsumerKind;
  readonly owner?: string;
  readonly operations?: ReadonlySet<string>;
}

export interface ConsumersRules {
  readonly unknown: 'deny' | 'allow';
  readonly defaultKind: ConsumerKind;
  readonly registry: ReadonlyMap<string, ConsumerRules>;
}

export interface Deprecation {
  readonly sinceMs: number;
  readonly sunsetMs?: number;
  readonly replacement?: string;
  readonly link?: string;
}

export interface Operation {
  readonly id: string;
  readonly method: string;
  readonly path: string;
  readonly scopes: readonly string[];
  readonly sensitivity: Sensitivity;
  readonly changedIn?: string;
  readonly public: boolean;
  readonly deprecated?: Deprecation;
}

export interface ContractRules {
  readonly versions: readonly string[];
  /** Index in `versions` of each version, for ordering. */
  readonly rank: ReadonlyMap<string, number>;
  readonly current: string;
  readonly minimum: string;
  readonly declared: { readonly claim: string; readonly header: string };
  readonly blockAt: Threshold;
  readonly operations: readonly Operation[];
}

export interface Rules {
  /** Absolute path of the file the rules came from (for messages and reload). */
  readonly source: string;
  /** sha256 of the file's bytes, first 16 hex characters: names the rules in force. */
  readonly hash: string;
  readonly proxy: ProxyRules;
  readonly identity: IdentityRules;
  readonly consumers: ConsumersRules;
  readonly contract: ContractRules;
  /** The validated document with defaults applied, for feature modules that read their own slice. */
  readonly raw: Readonly<Record<string, unknown>>;
  /** Fields whose value came from outside the file (`proxy.listen` → `--listen`): problems with them name that. */
  readonly overridden?: Readonly<Record<string, string>>;
}
