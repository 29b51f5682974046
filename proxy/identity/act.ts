// The delegation chain a token declares (RFC 8693 §4.1, the act claim): who is acting, for
// whom. A fact of the credential, read once it is verified, whatever decides the request: the
// record names the actors of a call a scope check refused as much as of one it let through.
// Read once, when the token is verified, and kept on its credential: the credential check
// records it, the delegation check (proxy/lifecycle) judges it, and revocation refuses it when
// an actor in it is revoked.

/** Levels read at most: deeper than any allowed chain (maxDelegationDepth is at most 32), and bounded whatever a token holds. */
export const MAX_LEVELS = 64;

export interface ActChain {
  /** The actors' sub, outermost (current) first, as far as every level is well formed. */
  readonly actors: readonly string[];
  /** Every sub that is a non-empty string, at any level, well formed or not: what a revocation matches. */
  readonly named: readonly string[];
  /**
   * Each of those levels' iss, as written, at the same index (below a malformed level too): the
   * well-formed prefix's first, as `actors` (the delegation check wants a string or nothing).
   */
  readonly namedIssuers: readonly unknown[];
  /** How many levels the claim has (up to MAX_LEVELS), well formed or not. */
  readonly depth: number;
  /**
   * Whether `named` holds every actor the claim could name. Not when a level is a string or a
   * list, or has a sub that is not a string (a list, an object), or lies past the 64th: a
   * revoked or quarantined actor could hide there, where the delegation check, when on,
   * refuses the chain anyway.
   */
  readonly complete: boolean;
}

/** The act chain of `claims`, or undefined when the token has no act claim. */
export function actChain(claims: Readonly<Record<string, unknown>>): ActChain | undefined {
  let node: unknown = claims.act;
  if (node === undefined) return undefined;
  const actors: string[] = [];
  const named: string[] = [];
  const namedIssuers: unknown[] = [];
  let depth = 0;
  let wellFormed = true;
  let complete = true;
  while (node !== undefined && depth < MAX_LEVELS) {
    depth++;
    const level = typeof node === 'object' && node !== null && !Array.isArray(node);
    const sub = level ? (node as { sub?: unknown }).sub : undefined;
    if (typeof sub === 'string' && sub !== '') { named.push(sub); namedIssuers.push((node as { iss?: unknown }).iss); }
    else wellFormed = false;
    if (typeof node === 'string' || Array.isArray(node) || (sub !== undefined && typeof sub !== 'string')) complete = false;
    if (wellFormed) actors.push(sub as string);
    node = typeof node === 'object' && node !== null ? (node as { act?: unknown }).act : undefined;
  }
  return { actors, named, namedIssuers, depth, complete: complete && node === undefined };
}
