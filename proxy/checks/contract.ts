// The contract version the caller was built against (token claim, else header) must be a
// published version, not below contract.minimum and not below the version in which the
// operation last changed incompatibly. A claim and a header that disagree are refused: the
// decision would rest on the claim while the upstream, which gets the header as sent, could
// act on the other version.

import type { Check, Denial, RequestContext } from '../pipeline/types.ts';
import type { Rules } from '../rules/types.ts';
import { blocks } from './staleness.ts';
import { movingOn } from './deprecation.ts';
import { claimOf, headerOf } from '../pipeline/named.ts';

/**
 * The contract version the caller declares, read as the contract check reads it but not
 * judged (a published version, claim and header agreeing): for the record of a call refused
 * before that check ran (revoked, quarantined, out of scope), which would otherwise name the
 * version that changed its operation and not the one its caller was built against.
 */
export function declaredVersion(ctx: Pick<RequestContext, 'credential' | 'req' | 'rules'>): string | undefined {
  const { claim, header } = ctx.rules.contract.declared;
  const fromClaim = claimOf(ctx.credential, claim);
  const fromHeader = headerOf(ctx.req, header.toLowerCase());
  if (fromClaim !== undefined && fromHeader !== undefined && fromHeader !== fromClaim) return undefined;
  const declared = fromClaim ?? fromHeader;
  return typeof declared === 'string' && ctx.rules.contract.rank.has(declared) ? declared : undefined;
}

export function contract(rules: Rules): Check {
  const { claim, header } = rules.contract.declared;
  const headerName = header.toLowerCase();
  const { rank, current, minimum } = rules.contract;
  const minimumRank = rank.get(minimum)!;
  return {
    name: 'contract',
    run(ctx) {
      const op = ctx.operation!;
      const fromClaim = claimOf(ctx.credential, claim);
      const fromHeader = headerOf(ctx.req, headerName);
      // A list: the header sent twice (Node joins the lines with ", "), or its values joined
      // on one line, as RFC 9110 §5.3 lets a sender do: two declarations, whatever they say.
      if (typeof fromHeader === 'string' && fromHeader.includes(',') && !rank.has(fromHeader)) {
        return { reason: 'contract-version-conflict', detail: `the ${header} header declares more than one contract version: declare one`, currentContract: current };
      }
      if (fromClaim !== undefined && fromHeader !== undefined && fromHeader !== fromClaim) {
        return { reason: 'contract-version-conflict', detail: `the ${claim} claim and the ${header} header declare different contract versions`, currentContract: current };
      }
      const declared = fromClaim !== undefined ? fromClaim : fromHeader;
      if (declared === undefined) {
        if (ctx.consumer?.kind === 'automation') {
          return { reason: 'contract-version-required', detail: `declare the contract version in the ${claim} claim or the ${header} header`, currentContract: current };
        }
        return undefined;
      }
      if (typeof declared !== 'string' || !rank.has(declared)) {
        return { reason: 'unknown-contract-version', detail: `the declared contract version is not one of: ${rules.contract.versions.join(', ')}`, currentContract: current };
      }
      ctx.declaredContract = declared;
      const declaredRank = rank.get(declared)!;
      let stale: Denial | undefined;
      if (op.changedIn !== undefined && declaredRank < rank.get(op.changedIn)!) {
        stale = { reason: 'stale-contract', detail: `${op.id} changed in contract version ${op.changedIn}, after the declared ${declared}`, declaredContract: declared, currentContract: current, changedIn: op.changedIn };
      } else if (declaredRank < minimumRank) {
        stale = { reason: 'stale-contract', detail: `contract version ${declared} is older than the minimum ${minimum}`, declaredContract: declared, currentContract: current };
      }
      if (!stale) return undefined;
      Object.assign(stale, movingOn(rules, op, ctx.consumer, ctx.now));
      if (blocks(rules, op, ctx.consumer)) return stale;
      ctx.warnings.push(stale);
      return undefined;
    },
  };
}
