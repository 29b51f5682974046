// Waiting with a deadline, for shutdown: a pod being stopped must not wait on what may never end.

/** Wait for `promise` (its rejection ignored) or `ms`, whichever comes first; the timer never holds the process alive. */
export async function atMost(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    promise.catch(() => {}),
    new Promise<void>((resolve) => { timer = setTimeout(resolve, ms); timer.unref(); }),
  ]);
  clearTimeout(timer);
}
