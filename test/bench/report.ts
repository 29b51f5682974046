// Turns the samples of all rounds into figures (the median across rounds), checks them
// against the budget of issue 4, and prints the table. Ratios are taken round by round,
// between measurements made minutes apart on the same machine, then their median: that is
// what lets the noise of a shared machine cancel.

import type { WrkResult } from './wrk.ts';

/** samples[target][metric] = one value per round. */
export type Samples = Record<string, Record<string, number[]>>;

export interface BudgetLine {
  readonly id: string;
  readonly meaning: string;
  readonly value: number;
  readonly limit: number;
  readonly comparison: '>=' | '<=';
  readonly pass: boolean;
  /**
   * The per-round values the median was taken of. In the JSON an infinite one, and an infinite
   * median, are written null (JSON has no Infinity): `notes` says which; a round left out
   * (NaN, also null) is in `excluded`.
   */
  readonly rounds: (number | null)[];
  /** Rounds left out, and why. */
  readonly excluded?: string[];
  /** Rounds whose ratio was infinite (the floor added nothing there), which count as the worst. */
  readonly notes?: string[];
}

/**
 * The median of the values that are figures: NaN (a round that gave none) is left out, an
 * infinite ratio (a floor that added nothing in that round) is kept, as the worst.
 */
export function median(values: readonly number[]): number {
  const v = values.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
}

const round = (x: number, digits = 3) => Number.isFinite(x) ? Number(x.toFixed(digits)) : null;

/**
 * Why a wrk run's figures are not the target's work, or undefined: socket errors or timeouts,
 * requests written and never answered (beyond one in flight per connection as wrk stopped),
 * or a share of refusals (4xx, 5xx) other than the mix's. wrk counts every answer in its
 * throughput whatever its status: a target that answered everything 503 would be fast.
 */
export function invalidRun(r: Pick<WrkResult, 'requests' | 'issued' | 'errors'>, connections: number, expectedRefused: number): string | undefined {
  const socket = r.errors.connect + r.errors.read + r.errors.write + r.errors.timeout;
  if (socket > 0) return `${socket} socket errors or timeouts ${JSON.stringify(r.errors)}`;
  if (r.requests === 0) return 'no request was answered';
  // One request in flight per connection as wrk stops, and one more: measured at 32 connections
  // against the bare upstream (at 1 and 4 connections there was none more).
  const stalled = r.issued - r.requests - connections - 1;
  if (stalled > 0) return `${stalled} requests written were never answered`;
  const refused = r.errors.status / r.requests;
  // The mix spreads its refusals evenly, 5 in every 100: a short run may hold a few more or fewer.
  if (Math.abs(refused - expectedRefused) > Math.max(0.01, 10 / r.requests)) {
    return `${(refused * 100).toFixed(1)}% of the answers were refusals (4xx or 5xx), the mix calls for ${(expectedRefused * 100).toFixed(1)}%`;
  }
  return undefined;
}

/**
 * (driftguard − direct) / (floor − direct) for one round. A floor that added no latency in a
 * round (its p50 at or under direct's, noise on a shared host) gives no ratio: infinite when
 * driftguard added some (the worst), NaN (no figure) when it did not either. driftguard under
 * direct is an addition of 0.
 */
export function addedRatio(driftguard: number, direct: number, floor: number): number {
  const added = Math.max(0, driftguard - direct);
  const floorAdded = floor - direct;
  if (floorAdded <= 0) return added > 0 ? Infinity : NaN;
  return added / floorAdded;
}

function perRound(samples: Samples, f: (at: (target: string, metric: string) => number) => number): number[] {
  const n = Math.max(...Object.values(samples).flatMap((m) => Object.values(m).map((v) => v.length)));
  return Array.from({ length: n }, (_, i) => f((t, m) => samples[t]?.[m]?.[i] ?? NaN));
}

export function summarise(samples: Samples, peakRssMiB: Record<string, number>, peakAnon: Record<string, { anonMiB: number; fileMiB: number }>, meta: Record<string, unknown>): Record<string, unknown> {
  const targets: Record<string, Record<string, unknown>> = {};
  for (const [target, metrics] of Object.entries(samples)) {
    const t: Record<string, unknown> = {};
    for (const [metric, values] of Object.entries(metrics)) t[metric] = round(median(values), metric.startsWith('cpu') || metric === 'deniedShare' ? 4 : 1);
    if (peakRssMiB[target] !== undefined) t.peakRssMiB = round(peakRssMiB[target]!, 1);
    if (peakAnon[target] !== undefined) { t.peakAnonRssMiB = round(peakAnon[target]!.anonMiB, 1); t.peakFileRssMiB = round(peakAnon[target]!.fileMiB, 1); }
    t.rounds = Object.fromEntries(Object.entries(metrics).map(([m, v]) => [m, v.map((x) => round(x, 4))]));
    targets[target] = t;
  }

  const line = (id: string, meaning: string, values: number[], comparison: '>=' | '<=', limit: number, excluded: string[] = []): BudgetLine => {
    const value = median(values);
    // A line with no figure at all fails: NaN compares false either way.
    const shown = value === Infinity ? Infinity : round(value, 3)!;
    const notes = values.flatMap((v, i) => (v === Infinity ? [`round ${i + 1}: infinite (the floor added nothing in that round, driftguard did)`] : []));
    return { id, meaning, value: shown, limit, comparison, pass: comparison === '>=' ? value >= limit : value <= limit, rounds: values.map((v) => (v === Infinity ? Infinity : round(v, 3))), ...(excluded.length ? { excluded } : {}), ...(notes.length ? { notes } : {}) };
  };
  const dg = 'driftguard';
  // A round whose cold tokens ran out measured the verified-token cache, not the cold path.
  const coldExcluded: string[] = [];
  const cold = perRound(samples, (at) => at(dg, 'coldRps') / at('jose', 'verifyRate')).map((v, i) => {
    const replays = samples[dg]?.coldReplays?.[i] ?? 0;
    if (replays > 0) { coldExcluded.push(`round ${i + 1}: the cold tokens ran out (replayed ${replays}x)`); return NaN; }
    return v;
  });
  const budget: BudgetLine[] = [
    line('throughput', 'driftguard throughput / bare passthrough throughput, same connections, same mix',
      perRound(samples, (at) => at(dg, 'throughputRps') / at('bare', 'throughputRps')), '>=', 0.8),
    line('addedP50OneConnection', '(driftguard p50 - direct p50) / (bare p50 - direct p50), one connection',
      perRound(samples, (at) => addedRatio(at(dg, 'oneConnectionP50Us'), at('direct', 'oneConnectionP50Us'), at('bare', 'oneConnectionP50Us'))), '<=', 1.5),
    line('p99OneConnection', 'driftguard p99 / bare p99, one connection',
      perRound(samples, (at) => at(dg, 'oneConnectionP99Us') / at('bare', 'oneConnectionP99Us')), '<=', 1.5),
    line('cpuPer1000Rps', 'driftguard vCPU per 1000 req/s (= CPU seconds per 1000 requests) at the fixed rate',
      samples[dg]?.cpuSecondsPer1000AtFixedRate ?? [], '<=', 0.1),
    line('peakRssOverBareMiB', 'driftguard peak RSS - bare peak RSS, MiB (default heap sizing)',
      [(peakRssMiB[dg] ?? NaN) - (peakRssMiB.bare ?? NaN)], '<=', 40),
    line('peakRssLimitedMiB', 'driftguard-limited peak RSS (VmHWM) under the chart\'s NODE_OPTIONS, MiB (the budget\'s container size, 128 MiB; the chart\'s default limit, in charts/driftguard/values.yaml, is above it)',
      [peakRssMiB['driftguard-limited'] ?? NaN], '<=', 128),
    line('coldPath', 'driftguard req/s with a never-seen token per request / raw jose ES256 verify rate',
      cold, '>=', 0.6, coldExcluded),
  ];
  // Not a budget line: the floor under the same limits, so the limited figure can be read as
  // what driftguard holds beyond a bare Node proxy in the same container.
  const context: Context = {
    bareLimitedPeakRssMiB: round(peakRssMiB['bare-limited'] ?? NaN, 1),
    driftguardLimitedOverBareLimitedMiB: round((peakRssMiB['driftguard-limited'] ?? NaN) - (peakRssMiB['bare-limited'] ?? NaN), 1),
  };
  return { ...meta, targets, budget, context, pass: budget.every((b) => b.pass) };
}

/** Figures for reading the budget that are not budget lines themselves. */
interface Context {
  readonly bareLimitedPeakRssMiB: number | null;
  readonly driftguardLimitedOverBareLimitedMiB: number | null;
}

/** Table rows, in order. */
const TARGETS = ['direct', 'bare', 'bare-limited', 'driftguard', 'driftguard-limited', 'driftguard-core'];

const fmt = (v: unknown, digits = 0) => typeof v === 'number' ? v.toFixed(digits) : '-';
const us = (v: unknown) => typeof v === 'number' ? (v / 1000).toFixed(2) : '-';

export function printTable(result: Record<string, unknown>): void {
  const targets = result.targets as Record<string, Record<string, number | undefined>>;
  const rows = [['target', 'req/s @32', '1c p50', '1c p90', '1c p99', '2k/s p50', '2k/s p90', '2k/s p99', 'CPU s/1k req', 'peak RSS MiB', 'anon MiB', 'cold req/s']];
  for (const name of TARGETS) {
    const t = targets[name];
    if (!t) continue;
    rows.push([name, fmt(t.throughputRps), us(t.oneConnectionP50Us), us(t.oneConnectionP90Us), us(t.oneConnectionP99Us),
      us(t.fixedRateP50Us), us(t.fixedRateP90Us), us(t.fixedRateP99Us),
      name === 'direct' ? '-' : fmt(t.cpuSecondsPer1000AtFixedRate, 3), name === 'direct' ? '-' : fmt(t.peakRssMiB, 1), name === 'direct' ? '-' : fmt(t.peakAnonRssMiB, 1), fmt(t.coldRps)]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const out = rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  '));
  out.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));
  process.stdout.write(`\nlatencies in ms; medians of ${(result.settings as { rounds: number }).rounds} interleaved rounds\n${out.join('\n')}\n`);
  const jose = targets.jose;
  const context = result.context as Context;
  process.stdout.write(`raw jose ES256 verify: ${fmt(jose?.verifyRate)} /s on one thread\n`);
  process.stdout.write(`under the chart's NODE_OPTIONS: bare ${fmt(context.bareLimitedPeakRssMiB, 1)} MiB peak, driftguard ${fmt(context.driftguardLimitedOverBareLimitedMiB, 1)} MiB above it\n\nbudget:\n`);
  for (const b of result.budget as BudgetLine[]) {
    process.stdout.write(`  ${b.pass ? 'ok  ' : 'MISS'} ${b.id.padEnd(22)} ${String(b.value).padStart(8)} ${b.comparison} ${b.limit}   ${b.meaning}\n`);
  }
}

/** The same figures as a Markdown table, for the README's Performance section. */
export function markdown(result: Record<string, unknown>): string {
  const targets = result.targets as Record<string, Record<string, number | undefined>>;
  const settings = result.settings as { rounds: number; connections: number; fixedRate: { rps: number } };
  const lines = [
    `| target | req/s at ${settings.connections} conns | p50 / p90 / p99 at 1 conn (ms) | p50 / p90 / p99 at up to ${settings.fixedRate.rps} req/s (ms) | req/s achieved | CPU s per 1000 req at that rate | CPU s per 1000 req at ${settings.connections} conns | peak RSS MiB (anon) | cold req/s |`,
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  const ms = (v: unknown) => typeof v === 'number' ? (v / 1000).toFixed(2) : '-';
  for (const name of TARGETS) {
    const t = targets[name];
    if (!t) continue;
    lines.push(`| ${name} | ${fmt(t.throughputRps)} | ${ms(t.oneConnectionP50Us)} / ${ms(t.oneConnectionP90Us)} / ${ms(t.oneConnectionP99Us)} | ${ms(t.fixedRateP50Us)} / ${ms(t.fixedRateP90Us)} / ${ms(t.fixedRateP99Us)} | ${fmt(t.fixedRateRps)} | ${name === 'direct' ? '-' : fmt(t.cpuSecondsPer1000AtFixedRate, 3)} | ${name === 'direct' ? '-' : fmt(t.cpuSecondsPer1000AtThroughput, 3)} | ${name === 'direct' ? '-' : `${fmt(t.peakRssMiB)} (${fmt(t.peakAnonRssMiB)})`} | ${fmt(t.coldRps)} |`);
  }
  const context = result.context as Context;
  lines.push('', `Under the chart's \`NODE_OPTIONS\`, the bare passthrough peaked at ${fmt(context.bareLimitedPeakRssMiB, 1)} MiB and driftguard ${fmt(context.driftguardLimitedOverBareLimitedMiB, 1)} MiB above it.`);
  lines.push('', '| budget | value | limit | met |', '| --- | ---: | ---: | :---: |');
  for (const b of result.budget as BudgetLine[]) lines.push(`| ${b.meaning} | ${b.value} | ${b.comparison} ${b.limit} | ${b.pass ? 'yes' : '**no**'} |`);
  return lines.join('\n') + '\n';
}
