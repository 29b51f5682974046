// A strict parser of the Prometheus text exposition format (0.0.4), enough to fail a test on
// any malformed line: HELP/TYPE comments, samples with escaped label values, histogram
// series that are cumulative and end in +Inf = _count.

export interface Sample { name: string; labels: Record<string, string>; value: number }
export interface Family { name: string; type: string; help: string; samples: Sample[] }

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/;

function parseLabels(text: string, line: string): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < text.length) {
    const eq = text.indexOf('=', i);
    if (eq === -1) throw new Error(`bad labels: ${line}`);
    const name = text.slice(i, eq);
    if (!/^[a-zA-Z_][a-zA-Z0-9_]*$/.test(name)) throw new Error(`bad label name ${name}: ${line}`);
    if (text[eq + 1] !== '"') throw new Error(`unquoted label value: ${line}`);
    let j = eq + 2;
    let value = '';
    for (;;) {
      const ch = text[j];
      if (ch === undefined) throw new Error(`unterminated label value: ${line}`);
      if (ch === '\\') {
        const next = text[j + 1];
        if (next === 'n') value += '\n'; else if (next === '\\' || next === '"') value += next; else throw new Error(`bad escape: ${line}`);
        j += 2; continue;
      }
      if (ch === '"') break;
      value += ch; j++;
    }
    if (name in out) throw new Error(`duplicate label ${name}: ${line}`);
    out[name] = value;
    i = j + 1;
    if (text[i] === ',') i++;
    else if (i < text.length) throw new Error(`bad label separator: ${line}`);
  }
  return out;
}

function parseValue(v: string, line: string): number {
  if (v === '+Inf') return Infinity;
  if (v === '-Inf') return -Infinity;
  if (v === 'NaN') return NaN;
  const n = Number(v);
  if (v === '' || Number.isNaN(n)) throw new Error(`bad value: ${line}`);
  return n;
}

export function parsePrometheus(text: string): Map<string, Family> {
  if (!text.endsWith('\n')) throw new Error('exposition must end with a newline');
  const families = new Map<string, Family>();
  const seen = new Set<string>();
  for (const line of text.slice(0, -1).split('\n')) {
    if (line.startsWith('# HELP ') || line.startsWith('# TYPE ')) {
      const [, kind, name, ...rest] = line.split(' ');
      if (!NAME.test(name!)) throw new Error(`bad metric name: ${line}`);
      const f = families.get(name!) ?? { name: name!, type: 'untyped', help: '', samples: [] };
      if (kind === 'TYPE') {
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(rest[0]!) || rest.length !== 1) throw new Error(`bad TYPE: ${line}`);
        if (f.samples.length) throw new Error(`TYPE after samples: ${line}`);
        f.type = rest[0]!;
      } else f.help = rest.join(' ');
      families.set(name!, f);
      continue;
    }
    if (line.startsWith('#')) continue;
    if (line === '') throw new Error('empty line');
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`bad sample line: ${line}`);
    const name = m[1]!;
    const labels = m[3] ? parseLabels(m[3], line) : {};
    const base = families.has(name) ? name : name.replace(/_(bucket|sum|count)$/, '');
    const f = families.get(base);
    if (!f) throw new Error(`sample without TYPE: ${line}`);
    if (f.type === 'counter' && !name.endsWith('_total')) throw new Error(`counter not ending in _total: ${line}`);
    const key = name + JSON.stringify(Object.entries(labels).sort());
    if (seen.has(key)) throw new Error(`duplicate series: ${line}`);
    seen.add(key);
    f.samples.push({ name, labels, value: parseValue(m[4]!, line) });
  }
  for (const f of families.values()) {
    if (f.type !== 'histogram') continue;
    const series = new Map<string, Sample[]>();
    for (const s of f.samples) {
      if (!s.name.endsWith('_bucket')) continue;
      const { le: _le, ...rest } = s.labels;
      const k = JSON.stringify(Object.entries(rest).sort());
      series.set(k, [...(series.get(k) ?? []), s]);
    }
    for (const [k, buckets] of series) {
      for (let i = 1; i < buckets.length; i++) {
        if (buckets[i]!.value < buckets[i - 1]!.value) throw new Error(`${f.name}: buckets not cumulative`);
        if (Number(buckets[i]!.labels.le === '+Inf' ? Infinity : buckets[i]!.labels.le) <= Number(buckets[i - 1]!.labels.le)) throw new Error(`${f.name}: le not increasing`);
      }
      const last = buckets.at(-1)!;
      if (last.labels.le !== '+Inf') throw new Error(`${f.name}: no +Inf bucket`);
      const count = f.samples.find((s) => s.name === f.name + '_count' && JSON.stringify(Object.entries(s.labels).sort()) === k);
      if (!count || count.value !== last.value) throw new Error(`${f.name}: +Inf bucket differs from _count`);
    }
  }
  return families;
}

/** The value of the series of `name` whose labels include `labels`; undefined when absent. */
export function sample(families: Map<string, Family>, name: string, labels: Record<string, string> = {}): number | undefined {
  const base = families.has(name) ? name : name.replace(/_(bucket|sum|count)$/, '');
  const f = families.get(base);
  const s = f?.samples.find((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v));
  return s?.value;
}
