/**
 * The logging surface the CNI code needs. pino's Logger fits it (the server passes one); the
 * standalone executable uses `stderrLogger`, a few lines instead of pino, to start fast.
 */
export interface CniLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

const LEVELS = { debug: 20, info: 30, warn: 40, error: 50, silent: 100 } as const;
type Level = keyof typeof LEVELS;

/** JSON lines on fd 2 (stdout is the protocol channel), synchronous so nothing is lost at exit. */
export function stderrLogger(level: string = 'warn', write: (s: string) => void = (s) => process.stderr.write(s)): CniLogger {
  const min = LEVELS[(level in LEVELS ? level : 'warn') as Level];
  const at =
    (name: Exclude<Level, 'silent'>) =>
    (obj: object, msg?: string): void => {
      if (LEVELS[name] < min) return;
      write(JSON.stringify({ level: name, time: Date.now(), component: 'podvirt-cni', ...obj, msg }) + '\n');
    };
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

export const silentCniLogger: CniLogger = stderrLogger('silent');
