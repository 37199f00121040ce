/** Commander helpers shared by the service commands: `--config FILE` and a flag per schema option. */
import type { Command } from 'commander'

/** Adds `-c, --config <file>`: an explicit file that replaces the default file set (like `KEYLIME_<C>_CONFIG`). */
export function addConfigFlag(cmd: Command): Command {
  return cmd.option('-c, --config <file>', 'config file (replaces the default files and conf.d snippets)')
}

/** Adds `--<option-with-dashes> <value>` for each schema key; pair with `flagsFromOptions`. */
export function addOptionFlags(cmd: Command, keys: readonly string[]): Command {
  for (const key of keys) cmd.option(`--${key.replaceAll('_', '-')} <value>`, `override [${key}]`)
  return cmd
}

/** Maps commander's camelCased options back to schema keys, dropping unset ones. */
export function flagsFromOptions(
  opts: Record<string, unknown>,
  keys: readonly string[],
): Record<string, string> {
  const out: Record<string, string> = {}
  for (const key of keys) {
    const camel = key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase())
    const v = opts[camel]
    if (typeof v === 'string') out[key] = v
  }
  return out
}
