// Which subjects an issuer may vouch for. A subject is only a string in sub, and any issuer
// can write any string there: the forms below belong to the profile that defines them, so
// that one issuer cannot present another's consumers (an OAuth provider's token with sub
// spiffe://prod.example/…, say). The consumer registry binds each subject to one issuer
// on top of this (rules/load.ts).

import type { IssuerRules } from '../rules/types.ts';

const SERVICE_ACCOUNT = 'system:serviceaccount:';

/** The trust domain a spiffe:// subject names, lowercased, whether or not it is a valid SPIFFE ID. */
function namedTrustDomain(subject: string): string | undefined {
  const m = /^spiffe:\/\/([^/?#]*)/i.exec(subject);
  return m ? m[1]!.toLowerCase() : undefined;
}

/** Why `issuer` may not vouch for `subject` among `all` the issuers, or undefined when it may. */
export function foreignSubject(issuer: IssuerRules, subject: string, all: readonly IssuerRules[]): string | undefined {
  if (issuer.profile === 'spiffe') {
    return namedTrustDomain(subject) === issuer.trustDomain ? undefined : `it vouches only for SPIFFE IDs of trust domain ${issuer.trustDomain}`;
  }
  if (issuer.profile === 'kubernetes') {
    return subject.startsWith(SERVICE_ACCOUNT) ? undefined : 'it vouches only for system:serviceaccount:<namespace>:<name>';
  }
  // Its host, as a URL parser would read it: `spiffe://x@td:443/…` is read as trust domain td
  // by an upstream that parses the ID, and must not pass for a name outside td.
  const domain = namedTrustDomain(subject)?.replace(/^.*@/, '').replace(/:\d*$/, '');
  if (domain !== undefined && all.some((i) => i.profile === 'spiffe' && i.trustDomain === domain)) {
    return `the subject is a SPIFFE ID of trust domain ${domain}, which only that domain's spiffe issuer vouches for`;
  }
  if (subject.toLowerCase().startsWith(SERVICE_ACCOUNT) && all.some((i) => i.profile === 'kubernetes')) {
    return 'the subject is a Kubernetes service account, which only a kubernetes issuer vouches for';
  }
  return undefined;
}
