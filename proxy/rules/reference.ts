// Renders the rules reference (every field, its type, default and meaning) from
// rules/schema.json, the single source of defaults and field documentation. The README
// carries its output; a test keeps the two equal.
// Usage: node proxy/rules/reference.ts

import schema from '../../rules/schema.json' with { type: 'json' };

type S = {
  type?: string | string[]; description?: string; default?: unknown; enum?: unknown[]; const?: unknown;
  properties?: Record<string, S>; items?: S; oneOf?: S[]; anyOf?: S[]; $ref?: string; required?: string[]; pattern?: string;
};

const definitions = (schema as unknown as { definitions: Record<string, S> }).definitions;

function resolve(s: S): S {
  if (s.$ref) {
    const name = s.$ref.replace('#/definitions/', '');
    const target = resolve(definitions[name]!);
    return { ...target, ...s, $ref: undefined, description: s.description ?? target.description, type: target.type ?? (name === 'duration' ? 'duration' : undefined) } as S;
  }
  return s;
}

function typeOf(s: S, refName?: string): string {
  if (refName === 'duration') return 'duration';
  if (refName === 'time') return 'time';
  if (s.enum) return s.enum.map((v) => `\`${String(v)}\``).join(' \\| ');
  if (s.type === 'array') {
    const item = s.items ? resolve(s.items) : undefined;
    return item?.properties ? 'list of objects' : `list of ${item ? typeOf(item, s.items?.$ref?.replace('#/definitions/', '')) : 'any'}`;
  }
  return Array.isArray(s.type) ? s.type.join(' \\| ') : (s.type ?? 'object');
}

function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

export function rulesReferenceMarkdown(): string {
  const rows: string[] = [];
  const seen = new Set<string>();
  // required: true, false, or the text to show for a key that one form of several requires.
  const walk = (path: string, raw: S, required: boolean | string) => {
    // A field that several forms share (jwks.refresh of the url and discovery forms) once: the first form's.
    if (seen.has(path)) return;
    seen.add(path);
    const refName = raw.$ref?.replace('#/definitions/', '');
    const s = resolve(raw);
    const def = s.default !== undefined && !(typeof s.default === 'object' && s.default !== null && Object.keys(s.default).length === 0 && !Array.isArray(s.default))
      ? `\`${JSON.stringify(s.default)}\`` : typeof required === 'string' ? required : required ? 'required' : '—';
    if (path) rows.push(`| \`${path}\` | ${typeOf(s, refName)} | ${def} | ${cell(s.description ?? '')} |`);
    const variants = s.oneOf ?? s.anyOf;
    if (variants) {
      // The keys that tell the forms apart: each form requires its own.
      const forms = variants.flatMap((v) => resolve(v).required ?? []);
      const oneOf = `one of ${forms.map((f) => `\`${f}\``).join(', ')}`;
      for (const v of variants) {
        const r = resolve(v);
        for (const [k, child] of Object.entries(r.properties ?? {})) walk(`${path}.${k}`, child, (r.required ?? []).includes(k) ? (forms.length > 1 ? oneOf : true) : false);
      }
    }
    const items = s.type === 'array' && s.items ? resolve(s.items) : undefined;
    const props = items?.properties ? items : s.properties ? s : undefined;
    if (props) {
      const prefix = items ? `${path}[]` : path;
      for (const [k, child] of Object.entries(props.properties ?? {})) {
        if (k === '$schema') continue;
        walk(prefix ? `${prefix}.${k}` : k, child, (props.required ?? []).includes(k));
      }
    }
  };
  walk('', schema as unknown as S, true);
  return ['| field | type | default | meaning |', '| --- | --- | --- | --- |', ...rows].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) process.stdout.write(rulesReferenceMarkdown() + '\n');
