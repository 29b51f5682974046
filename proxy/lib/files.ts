// Reading the files the rules name (the rules file itself, key sets, revocation lists, admin
// credentials). Every such read is synchronous, on the one thread that serves requests: a
// named pipe put where a file was expected (renamed over it, or a ConfigMap's `..data` switched
// to a folder holding one) held that thread in open(2) until something wrote to it, with every
// request and probe waiting behind it and nothing logged.

import { closeSync, constants, fstatSync, openSync, readFileSync } from 'node:fs';

/** The error code (as the callers print a read error's code) of a path that is no regular file. */
export const NOT_A_REGULAR_FILE = 'not a regular file (a named pipe, a socket, a device or a folder)';

/**
 * The file's bytes, if it is a regular file. Opened without waiting (O_NONBLOCK: a pipe's open
 * returns at once; a regular file's reads are unaffected) and looked at through the open
 * descriptor, so that nothing can be swapped in between the look and the read. Anything else
 * throws an error whose `code` is NOT_A_REGULAR_FILE; a failed open throws its own. `before` is
 * given the file's size ahead of the read, and may throw to refuse it.
 */
export function readRegularFile(path: string, before?: (size: number) => void): Buffer {
  const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw Object.assign(new Error(`${path}: ${NOT_A_REGULAR_FILE}`), { code: NOT_A_REGULAR_FILE });
    before?.(st.size);
    return readFileSync(fd);
  } finally {
    closeSync(fd);
  }
}
