import { parseArgs, type ParseArgsConfig } from 'node:util';
import { InvalidArgument, errorMessage } from './errors.js';

type Options = NonNullable<ParseArgsConfig['options']>;

/** `util.parseArgs` in strict mode, with its errors turned into one clear InvalidArgument. */
export function parseFlags<O extends Options>(argv: string[], options: O, allowPositionals = false) {
  try {
    return parseArgs({ args: argv, options, strict: true, allowPositionals });
  } catch (e) {
    throw new InvalidArgument(errorMessage(e));
  }
}
