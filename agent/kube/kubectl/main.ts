/** `kubectl podvirt` (installed as kubectl-podvirt on PATH): day-2 commands against the user's cluster. */
import { errorMessage } from '../../../lib/errors.js';
import type { Io } from './common.js';
import { consoleCmd } from './console.js';
import { migrate } from './migrate.js';
import { ps } from './ps.js';
import { status } from './status.js';

const USAGE = `usage: kubectl podvirt <command> [flags]

commands:
  ps        [-n NS | -A] [-o json]                 list VM pods: node, phase, QEMU pid, vCPUs, readiness
  status    NAME [-n NS] [--json]                  one VM: status, pinning, topology, events
  migrate   NAME [-n NS] [--target-node NODE]      live-migrate into a new pod, with a progress bar
            [--no-wait] [--keep-source] [--timeout SECONDS]   (the source pod is deleted after success)
  console   NAME [-n NS]                           serial console (via the node's podvirt agent; ^] detaches)

common flags: --kubeconfig FILE, --context NAME, -n/--namespace NS
`;

const COMMANDS: Record<string, (argv: string[], io: Io) => Promise<number>> = { ps, status, migrate, console: consoleCmd };

export async function kubectlMain(argv: string[], io: Io = { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin }): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === 'help' || cmd === '--help' || cmd === '-h') {
    io.stdout.write(USAGE);
    return cmd === undefined ? 2 : 0;
  }
  const fn = COMMANDS[cmd];
  if (!fn) {
    io.stderr.write(`kubectl podvirt: unknown command "${cmd}"\n${USAGE}`);
    return 2;
  }
  try {
    return await fn(rest, io);
  } catch (e) {
    const body = (e as { body?: unknown }).body;
    let msg = errorMessage(e);
    if (typeof body === 'string') {
      try {
        msg = (JSON.parse(body) as { message?: string }).message ?? msg;
      } catch {
        /* keep */
      }
    }
    io.stderr.write(`error: ${msg}\n`);
    return (e as { kind?: string }).kind === 'InvalidArgument' ? 2 : 1;
  }
}
