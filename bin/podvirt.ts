#!/usr/bin/env node
import { errorMessage, isPodvirtError } from '../lib/errors.js';
import { COMMANDS } from './commands.js';

/** One binary, many commands; each command's module is loaded only when it runs. */
async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    const width = Math.max(...Object.keys(COMMANDS).map((k) => k.length));
    process.stdout.write(
      `usage: podvirt <command> [flags]\n\ncommands:\n${Object.entries(COMMANDS)
        .map(([k, c]) => `  ${k.padEnd(width)}  ${c.summary}`)
        .join('\n')}\n`,
    );
    return name === undefined ? 2 : 0;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    process.stderr.write(`podvirt: unknown command "${name}" (try "podvirt help")\n`);
    return 2;
  }
  return (await cmd.load())(rest);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`podvirt: ${errorMessage(e)}\n`);
    process.exitCode = isPodvirtError(e) && e.kind === 'InvalidArgument' ? 2 : 1;
  },
);
