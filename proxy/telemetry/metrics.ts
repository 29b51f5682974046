// Prometheus metrics kept in plain objects and rendered as text exposition format 0.0.4 on
// GET /metrics. Counting a request is a string concatenation and a Map update; the text is
// built only when scraped. (Measured against the OpenTelemetry metrics SDK with its
// Prometheus serializer: see test/telemetry/metrics-cost.ts and the README's Metrics section.)
// Every label set is bounded by the rules (operations, registered consumers, reason codes).

const SEP = '\u0001';

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function labelText(names: readonly string[], values: readonly string[], more = ''): string {
  let s = '';
  for (let i = 0; i < names.length; i++) s += (s ? ',' : '') + names[i] + '="' + escapeLabel(values[i]!) + '"';
  if (more) s += (s ? ',' : '') + more;
  return s ? '{' + s + '}' : '';
}

function num(v: number): string {
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return Number.isNaN(v) ? 'NaN' : String(v);
}

interface Metric {
  render(out: string[]): void;
}

function header(out: string[], name: string, help: string, type: string): void {
  out.push(`# HELP ${name} ${help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`, `# TYPE ${name} ${type}`);
}

/** A counter by label values. Callers pass exactly labels.length values. */
export class Counter implements Metric {
  readonly name: string;
  readonly help: string;
  readonly labels: readonly string[];
  readonly #values = new Map<string, { labels: string[]; value: number }>();

  constructor(name: string, help: string, labels: readonly string[] = []) {
    this.name = name; this.help = help; this.labels = labels;
  }

  inc(values: string[], by = 1): void {
    const key = values.join(SEP);
    const v = this.#values.get(key);
    if (v) v.value += by;
    else this.#values.set(key, { labels: values, value: by });
  }

  render(out: string[]): void {
    header(out, this.name, this.help, 'counter');
    for (const v of this.#values.values()) out.push(`${this.name}${labelText(this.labels, v.labels)} ${num(v.value)}`);
  }
}

/** Values read at scrape time (key-set age, reload counts kept elsewhere). */
export class Collected implements Metric {
  readonly name: string;
  readonly help: string;
  readonly type: 'gauge' | 'counter';
  readonly labels: readonly string[];
  readonly collect: () => Iterable<readonly [string[], number]>;

  constructor(name: string, help: string, type: 'gauge' | 'counter', labels: readonly string[], collect: () => Iterable<readonly [string[], number]>) {
    this.name = name; this.help = help; this.type = type; this.labels = labels; this.collect = collect;
  }

  render(out: string[]): void {
    header(out, this.name, this.help, this.type);
    for (const [values, v] of this.collect()) out.push(`${this.name}${labelText(this.labels, values)} ${num(v)}`);
  }
}

/** A histogram of seconds with fixed buckets, by label values. */
export class Histogram implements Metric {
  readonly name: string;
  readonly help: string;
  readonly labels: readonly string[];
  readonly buckets: readonly number[];
  readonly #series = new Map<string, { labels: string[]; counts: number[]; sum: number; count: number }>();

  constructor(name: string, help: string, labels: readonly string[], buckets: readonly number[]) {
    this.name = name; this.help = help; this.labels = labels; this.buckets = buckets;
  }

  observe(values: string[], seconds: number): void {
    const key = values.join(SEP);
    let s = this.#series.get(key);
    if (!s) this.#series.set(key, s = { labels: values, counts: new Array<number>(this.buckets.length).fill(0), sum: 0, count: 0 });
    // Non-cumulative per bucket here; cumulated when rendered.
    const b = this.buckets;
    let i = 0;
    while (i < b.length && seconds > b[i]!) i++;
    if (i < b.length) s.counts[i]!++;
    s.sum += seconds;
    s.count++;
  }

  render(out: string[]): void {
    header(out, this.name, this.help, 'histogram');
    for (const s of this.#series.values()) {
      let cumulative = 0;
      for (let i = 0; i < this.buckets.length; i++) {
        cumulative += s.counts[i]!;
        out.push(`${this.name}_bucket${labelText(this.labels, s.labels, `le="${num(this.buckets[i]!)}"`)} ${cumulative}`);
      }
      out.push(`${this.name}_bucket${labelText(this.labels, s.labels, 'le="+Inf"')} ${s.count}`);
      out.push(`${this.name}_sum${labelText(this.labels, s.labels)} ${num(s.sum)}`);
      out.push(`${this.name}_count${labelText(this.labels, s.labels)} ${s.count}`);
    }
  }
}

export class Registry {
  readonly #metrics: Metric[] = [];

  add<M extends Metric>(m: M): M {
    this.#metrics.push(m);
    return m;
  }

  /** The whole exposition; a failing collector is skipped, never fails the scrape. */
  text(): string {
    const out: string[] = [];
    for (const m of this.#metrics) {
      const mark = out.length;
      try { m.render(out); } catch { out.length = mark; }
    }
    return out.join('\n') + '\n';
  }
}

export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';
