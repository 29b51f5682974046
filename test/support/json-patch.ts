// RFC 6902 JSON Patch, applied the way the API server applies a webhook's patch:
// to a copy, all operations or none, with a precise error for a path that does not
// resolve. add, remove, replace, move, copy and test are supported.

export interface PatchOperation {
  op: string;
  path: string;
  value?: unknown;
  from?: string;
}

type Container = Record<string, unknown> | unknown[];

export class JsonPatchError extends Error {
  override readonly name = 'JsonPatchError';
}

function parsePointer(pointer: string): string[] {
  if (pointer === '') return [];
  if (!pointer.startsWith('/')) throw new JsonPatchError(`invalid pointer ${JSON.stringify(pointer)}`);
  return pointer.slice(1).split('/').map((t) => t.replaceAll('~1', '/').replaceAll('~0', '~'));
}

function isContainer(v: unknown): v is Container {
  return typeof v === 'object' && v !== null;
}

/** Parent container and last token; throws if the parent does not exist. */
function locate(doc: unknown, pointer: string): { parent: Container; key: string } {
  const tokens = parsePointer(pointer);
  if (tokens.length === 0) throw new JsonPatchError('operations on the whole document are not supported');
  let node: unknown = doc;
  for (const t of tokens.slice(0, -1)) {
    if (Array.isArray(node)) node = node[arrayIndex(node, t, false)];
    else if (isContainer(node) && Object.hasOwn(node, t)) node = (node as Record<string, unknown>)[t];
    else throw new JsonPatchError(`path ${pointer}: ${JSON.stringify(t)} does not exist`);
  }
  if (!isContainer(node)) throw new JsonPatchError(`path ${pointer}: parent is not an object or array`);
  return { parent: node, key: tokens[tokens.length - 1] };
}

function arrayIndex(arr: unknown[], token: string, forAdd: boolean): number {
  if (forAdd && token === '-') return arr.length;
  if (!/^(0|[1-9][0-9]*)$/.test(token)) throw new JsonPatchError(`array index ${JSON.stringify(token)} is not a number`);
  const i = Number(token);
  if (i > arr.length || (!forAdd && i === arr.length)) throw new JsonPatchError(`array index ${i} out of bounds (length ${arr.length})`);
  return i;
}

function get(doc: unknown, pointer: string): unknown {
  let node = doc;
  for (const t of parsePointer(pointer)) {
    if (Array.isArray(node)) node = node[arrayIndex(node, t, false)];
    else if (isContainer(node) && Object.hasOwn(node, t)) node = (node as Record<string, unknown>)[t];
    else throw new JsonPatchError(`path ${pointer} does not exist`);
  }
  return node;
}

function add(doc: unknown, pointer: string, value: unknown): void {
  const { parent, key } = locate(doc, pointer);
  if (Array.isArray(parent)) parent.splice(arrayIndex(parent, key, true), 0, value);
  else parent[key] = value;
}

function remove(doc: unknown, pointer: string): unknown {
  const { parent, key } = locate(doc, pointer);
  if (Array.isArray(parent)) return parent.splice(arrayIndex(parent, key, false), 1)[0];
  if (!Object.hasOwn(parent, key)) throw new JsonPatchError(`path ${pointer} does not exist`);
  const old = parent[key];
  delete parent[key];
  return old;
}

export function applyPatch<T>(document: T, operations: readonly PatchOperation[]): T {
  const doc = structuredClone(document);
  for (const op of operations) {
    switch (op.op) {
      case 'add': add(doc, op.path, structuredClone(op.value)); break;
      case 'remove': remove(doc, op.path); break;
      case 'replace': remove(doc, op.path); add(doc, op.path, structuredClone(op.value)); break;
      case 'move': add(doc, op.path, remove(doc, op.from ?? '')); break;
      case 'copy': add(doc, op.path, structuredClone(get(doc, op.from ?? ''))); break;
      case 'test':
        if (JSON.stringify(get(doc, op.path)) !== JSON.stringify(op.value)) throw new JsonPatchError(`test failed at ${op.path}`);
        break;
      default: throw new JsonPatchError(`unknown op ${JSON.stringify(op.op)}`);
    }
  }
  return doc;
}
