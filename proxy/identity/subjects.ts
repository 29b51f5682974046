// Which subjects an issuer may vouch for. A subject is only a string in sub, and any issuer
// can write any string there: the forms below belong to the profile that defines them, so
// that one issuer cannot present another's consumers (an OAuth provider's token with sub
// spiffe://prod.example/…, say). The consumer registry binds each subject to one issuer
// on top of this (rules/load.ts).

import type { IssuerRules } from '../rules/types.ts';

const SERVICE_ACCOUNT = 'system:serviceaccount:';
/** What a URL parser removes wherever it is, and at either end (WHATWG URL, basic URL parser). */
const URL_IGNORED = /[\t\n\r]/g;
const URL_TRIMMED = /^[\x00-\x20]+|[\x00-\x20]+$/g;

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
  // As a URL parser reads it (WHATWG, Node's `new URL`): it drops every tab and line break, and
  // controls and spaces at either end, so `\tspiffe://td/…` is td's ID to an upstream that
  // parses it; and so is a service account's name to one that trims it.
  const parsed = subject.replace(URL_IGNORED, '').replace(URL_TRIMMED, '');
  // Its host, as a URL parser would read it: `spiffe://x@td:443/…` is read as trust domain td
  // by an upstream that parses the ID, and must not pass for a name outside td.
  const domain = namedTrustDomain(parsed)?.replace(/^.*@/, '').replace(/:\d*$/, '');
  if (domain !== undefined && all.some((i) => i.profile === 'spiffe' && i.trustDomain === domain)) {
    return `the subject is a SPIFFE ID of trust domain ${domain}, which only that domain's spiffe issuer vouches for`;
  }
  // Past any space, control or format character before it too: the trims of JavaScript, Java,
  // Python and .NET also take U+00A0, U+FEFF and U+3000 off a name.
  if (parsed.replace(/^[\s\p{C}]+/u, '').toLowerCase().startsWith(SERVICE_ACCOUNT) && all.some((i) => i.profile === 'kubernetes')) {
    return 'the subject is a Kubernetes service account, which only a kubernetes issuer vouches for';
  }
  return undefined;
}
