/** What `until` polls: a value ends the wait; undefined or false means "not yet". */
export type Probe<T> = () => T | undefined | false | Promise<T | undefined | false>;

/** Polls `probe` every `intervalMs` until it yields a value, or fails naming `what` after `timeoutMs`. */
export async function until<T>(what: string, probe: Probe<T>, timeoutMs: number, intervalMs = 50): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Whether a process with this pid exists (signal 0). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
