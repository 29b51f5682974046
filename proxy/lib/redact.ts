// What driftguard may say about a URL it fetches (a key set, a revocation list): its query and
// userinfo may carry a credential (`?access_token=`, `https://user:pass@`), so logs, metrics,
// error messages and admin answers name only its origin and path.

/** Origin and path only. */
export function redactUrl(url: string): string {
  try { const u = new URL(url); return `${u.origin}${u.pathname}`; } catch { return '(invalid URL)'; }
}
