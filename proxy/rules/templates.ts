// Operation path templates: literal segments and {variables}. A literal segment must be
// in the canonical form that the canonical-path check lets through, or it could never match.

import { segmentProblem } from '../pipeline/canonical.ts';

/**
 * A literal, or a variable; the last may carry a custom method (`{name}:cancel`, Google's
 * AIP-136, as grpc-gateway and Envoy's gRPC-JSON transcoder route them): it takes a segment
 * that ends in `:cancel`, its value the part before.
 */
export type Segment = { readonly literal: string } | { readonly variable: string; readonly verb?: string };

export interface Template {
  readonly segments: readonly Segment[];
  /** The template with variable names erased: two templates with one shape match the same requests. */
  readonly shape: string;
}

/**
 * A segment as a router that decodes or ignores case may compare it: decoded, then upper- and
 * lower-cased, which also folds the characters such routers map onto ASCII (ſ to s, the
 * Kelvin sign to k).
 */
export function foldSegment(segment: string): string {
  let text = segment;
  try { text = decodeURIComponent(segment); } catch { /* canonical paths decode; keep it as it is */ }
  return text.toUpperCase().toLowerCase();
}

/** The custom method a last segment ends with (`1:cancel`, or `1%3Acancel` as a decoding gateway reads it), if any. */
export function verbOf(segment: string, decoded = false): string | undefined {
  const text = decoded ? segment.replaceAll('%3A', ':') : segment;
  const colon = text.lastIndexOf(':');
  return colon > 0 && colon < text.length - 1 ? text.slice(colon + 1) : undefined;
}

/** Parse a template, or return a message saying what is wrong with it. */
export function parseTemplate(path: string): Template | string {
  if (path === '/') return { segments: [], shape: '/' };
  if (!path.startsWith('/')) return 'a path template starts with /';
  const parts = path.slice(1).split('/');
  const segments: Segment[] = [];
  const names = new Set<string>();
  for (const [i, part] of parts.entries()) {
    // A trailing slash (/api/users/, as Django REST framework's routers write them): a last
    // empty literal, which only a request ending in a slash matches.
    if (part === '' && i === parts.length - 1 && i > 0) { segments.push({ literal: '' }); continue; }
    const variable = /^\{([A-Za-z_][A-Za-z0-9_]*)\}(?::([A-Za-z][A-Za-z0-9]*))?$/.exec(part);
    if (variable) {
      if (names.has(variable[1]!)) return `variable {${variable[1]}} appears twice`;
      const verb = variable[2];
      if (verb !== undefined && i !== parts.length - 1) return `"${part}": a custom method (:${verb}) ends the path`;
      names.add(variable[1]!);
      segments.push(verb !== undefined ? { variable: variable[1]!, verb } : { variable: variable[1]! });
    } else if (part.includes('{') || part.includes('}')) {
      return `"${part}": a variable must be a whole segment, like {id}, or end it with a custom method, like {id}:cancel`;
    } else {
      // A request that could match a literal that is not canonical would be refused: say what to write instead.
      const problem = segmentProblem(part);
      if (problem !== undefined) return `"${part}" is not a canonical path segment: it ${problem}`;
      segments.push({ literal: part });
    }
  }
  return { segments, shape: '/' + segments.map((s) => ('literal' in s ? s.literal : s.verb !== undefined ? `{}:${s.verb}` : '{}')).join('/') };
}
