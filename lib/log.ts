import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * JSON logs on stderr (fd 2): stdout is a protocol channel for the CNI plugin and for
 * `--json` commands. Synchronous so nothing is lost when a short-lived command exits.
 */
export function createLogger(name: string, level = process.env.PODVIRT_LOG_LEVEL ?? 'info'): Logger {
  return pino(
    {
      name,
      level,
      base: { component: name },
      redact: { paths: ['*.secrets', '*.secret', 'secrets', 'req.secrets'], censor: '[redacted]' },
    },
    pino.destination({ dest: 2, sync: true }),
  );
}

/** A logger that drops everything, for tests and library callers that pass none. */
export const silentLogger: Logger = pino({ level: 'silent' });
