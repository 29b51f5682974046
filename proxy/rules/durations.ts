// Durations and times as written in the rules file. The schema already checked the
// shape; these turn the text into milliseconds.

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const SHORT = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;
const ISO = /^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$/;

/**
 * The longest duration anywhere in the rules: 100 years. Added to the time of day, a longer one
 * can pass the largest date JavaScript holds (a quarantine of 100000000d made every later
 * refusal, and GET /quarantine, a 500 "Invalid time value").
 */
export const MAX_DURATION_MS = 36_500 * 86_400_000;

/** Why a duration longer than MAX_DURATION_MS is refused. */
export const DURATION_TOO_LONG = 'must be at most 36500d (100 years): added to the time of day, a longer one can pass the largest date JavaScript holds';

/**
 * A rules field's duration in milliseconds, or why it is refused: not a duration, longer than
 * 100 years, or, for one that becomes a timer, longer than a timer can wait (that reason first,
 * however long). One problem per field: both loaders report what this returns.
 */
export function boundedDuration(text: string, timer = false): number | string {
  let ms: number;
  try { ms = parseDuration(text); } catch (err) { return (err as Error).message; }
  if (timer && ms > MAX_TIMER_MS) return TIMER_TOO_LONG;
  return ms > MAX_DURATION_MS ? DURATION_TOO_LONG : ms;
}

/** Milliseconds of `15m`, `30s`, `500ms`, `2d`, `PT15M`; throws a TypeError on anything else. */
export function parseDuration(text: string): number {
  const short = SHORT.exec(text);
  if (short) return Math.round(Number(short[1]) * UNIT_MS[short[2]!]!);
  const iso = ISO.exec(text);
  if (iso && text !== 'P' && !text.endsWith('T')) {
    const [, d, h, m, s] = iso;
    return Math.round(Number(d ?? 0) * 86_400_000 + Number(h ?? 0) * 3_600_000 + Number(m ?? 0) * 60_000 + Number(s ?? 0) * 1000);
  }
  throw new TypeError(`not a duration: ${JSON.stringify(text)} (use 500ms, 30s, 15m, 1h, 2d or ISO 8601 like PT15M)`);
}

/**
 * A duration whose problem, if any, is reported where it is parsed as a field: 0 if it is
 * not one. For cross-field checks, which must not report it twice.
 */
export function parseDurationOr0(text: string): number {
  try { return parseDuration(text); } catch { return 0; }
}

/**
 * The longest delay a Node.js timer (setTimeout, setInterval, a socket's or undici's timeout)
 * takes: 2^31 - 1 ms, about 24.8 days. A longer one fires after 1 ms, with only a warning:
 * a key set refreshed or a list fetched every millisecond, every body read timed out. A
 * duration that becomes a timer is therefore refused above it.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;
export const TIMER_TOO_LONG = 'must be at most 24d (2^31 - 1 ms, the longest timer Node.js can set; a longer one would fire at once)';

/**
 * The longest grace period (--grace, DRIFTGUARD_GRACE, the injector's grace), 24d: the stop's
 * deadline (grace plus the flush allowance) is a timer, which waits at most MAX_TIMER_MS (24.8
 * days); a grace within that allowance of it was accepted and then made SIGTERM exit 1 at
 * once, nothing drained.
 */
export const MAX_GRACE_MS = 24 * 86_400_000;

const TIME = /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(?:(Z)|([+-])(\d{2}):(\d{2})))?$/;

/**
 * Epoch milliseconds of an ISO 8601 date (midnight UTC) or date-time with an offset, and
 * nothing else. Date.parse alone took `1` as 2001, `12/01/2027` and `2027-12-01 10:00` in the
 * process's time zone, and rolled `2027-02-30` over to March 2: a revocation's typo could end
 * it at once, and a sunset move by days.
 */
export function parseTime(text: string): number {
  const m = TIME.exec(text);
  const bad = (): never => { throw new TypeError(`not an ISO 8601 time: ${JSON.stringify(text.length > 64 ? text.slice(0, 64) + '...' : text)} (use 2027-12-01 or 2027-12-01T10:00:00Z)`); };
  if (!m) return bad();
  const [year, month, day, hour, minute, second] = [1, 2, 3, 4, 5, 6].map((i) => Number(m[i] ?? 0)) as [number, number, number, number, number, number];
  const fraction = m[7] ? Number(m[7]) : 0;
  const offset = m[9] ? (m[9] === '-' ? -1 : 1) * (Number(m[10]) * 60 + Number(m[11])) : 0;
  if (m[9] && (Number(m[10]) > 23 || Number(m[11]) > 59)) return bad();
  if (hour > 23 || minute > 59 || second > 59) return bad();
  // setUTCFullYear, not Date.UTC, which reads years 0-99 as 1900-1999.
  const back = new Date(0);
  back.setUTCFullYear(year, month - 1, day);
  back.setUTCHours(hour, minute, second);
  // A day or month out of range rolls over: 2027-02-30 would read back as March.
  if (back.getUTCFullYear() !== year || back.getUTCMonth() !== month - 1 || back.getUTCDate() !== day) return bad();
  return back.getTime() + Math.floor(fraction * 1000) - offset * 60_000;
}
