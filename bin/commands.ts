import { PACKAGE_VERSION } from '../lib/project-root.js';

export type CommandMain = (argv: string[]) => Promise<number>;

export interface Command {
  summary: string;
  load: () => Promise<CommandMain>;
}

const version: CommandMain = async () => {
  process.stdout.write(`podvirt ${PACKAGE_VERSION}\n`);
  return 0;
};

/**
 * The command table. Each component adds its entry pointing at its own `main`
 * (a function taking the arguments after the command name and returning an exit code).
 */
export const COMMANDS: Record<string, Command> = {
  version: { summary: 'print the version', load: async () => version },
};
