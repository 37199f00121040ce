import { type Command, Option } from 'commander'
import { AGENT_CONFIG_DEFAULTS } from '../../agent/config.ts'

const HASH_ALGS = ['sha1', 'sha256', 'sha384', 'sha512'] as const

function flagName(option: string): string {
  return option.replace(/_/g, '-')
}

export function registerAgentCommands(program: Command): void {
  // `keylime agent ima-emulate --tpm T`: the agent's own --tpm flag must not swallow the subcommand's, which needs
  // positional options on every ancestor (the root only has --help/--version before its subcommand anyway)
  program.enablePositionalOptions()
  const agent = program
    .command('agent')
    .description('Run the pull-mode Keylime agent (registers with the registrar, serves quotes over mTLS)')
    .option('-c, --config <file>', 'agent.conf (TOML, [agent] table); replaces the standard file set')
    // options after `ima-emulate` (e.g. --tpm) belong to it, not to the agent
    .enablePositionalOptions()
  for (const [name, def] of Object.entries(AGENT_CONFIG_DEFAULTS)) {
    const flag = flagName(name)
    agent.addOption(
      typeof def === 'boolean'
        ? new Option(`--${flag} <bool>`, `${name} (default ${def})`)
        : new Option(`--${flag} <value>`, `${name} (default ${JSON.stringify(def)})`),
    )
  }
  agent.action(async (opts: Record<string, string | undefined>) => {
    const overrides: Record<string, string> = {}
    for (const name of Object.keys(AGENT_CONFIG_DEFAULTS)) {
      const key = name.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase())
      const v = opts[key]
      if (v !== undefined) overrides[name] = v
    }
    const { runAgentProcess } = await import('../../agent/main.ts')
    await runAgentProcess({ ...(opts.config ? { configPath: opts.config } : {}), overrides })
  })

  agent
    .command('ima-emulate')
    .description(
      'Append ima-ng entries for files to an IMA list and extend PCR 10 to match (for machines without IMA)',
    )
    .requiredOption(
      '--tpm <transport>',
      'TPM transport: /dev/tpmrm0, swtpm:host=H,port=P or swtpm:path=/x.sock',
    )
    .requiredOption('--list <file>', 'IMA ASCII measurement list to append to (the agent ima_ml_path)')
    .addOption(
      new Option('--hash-alg <alg>', 'file digest algorithm and PCR bank')
        .choices(HASH_ALGS)
        .default('sha256'),
    )
    .option('--watch', 're-measure each file whenever it changes, until SIGTERM/SIGINT', false)
    .argument('<paths...>', 'files to measure')
    .action(
      async (
        paths: string[],
        o: { tpm: string; list: string; hashAlg: (typeof HASH_ALGS)[number]; watch: boolean },
      ) => {
        const { runImaEmulator } = await import('../../agent/main.ts')
        const lines = await runImaEmulator({
          tpm: o.tpm,
          list: o.list,
          hashAlg: o.hashAlg,
          paths,
          watch: o.watch,
        })
        if (!o.watch) process.stdout.write(lines.join(''))
      },
    )
}
