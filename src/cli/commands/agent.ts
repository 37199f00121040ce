import { type Command, Option } from 'commander'
import { AGENT_CONFIG_DEFAULTS } from '../../agent/config.ts'
import { CliError, EXIT } from '../errors.ts'

const HASH_ALGS = ['sha1', 'sha256', 'sha384', 'sha512'] as const

function flagName(option: string): string {
  return option.replace(/_/g, '-')
}

/** One flag per agent.conf option (`--ima-ml-path <value>`). */
function addConfigFlags(cmd: Command): void {
  for (const [name, def] of Object.entries(AGENT_CONFIG_DEFAULTS)) {
    const flag = flagName(name)
    cmd.addOption(
      typeof def === 'boolean'
        ? new Option(`--${flag} <bool>`, `${name} (default ${def})`)
        : new Option(`--${flag} <value>`, `${name} (default ${JSON.stringify(def)})`),
    )
  }
}

/** The agent.conf options given as flags, by option name. */
function configOverrides(opts: Record<string, unknown>): Record<string, string> {
  const overrides: Record<string, string> = {}
  for (const name of Object.keys(AGENT_CONFIG_DEFAULTS)) {
    const key = name.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase())
    const v = opts[key]
    if (typeof v === 'string') overrides[name] = v
  }
  return overrides
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
  addConfigFlags(agent)
  agent.action(async (opts: Record<string, string | undefined>) => {
    const { runAgentProcess } = await import('../../agent/main.ts')
    await runAgentProcess({
      ...(opts.config ? { configPath: opts.config } : {}),
      overrides: configOverrides(opts),
    })
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

  const push = program
    .command('push-agent')
    .description(
      'Run the push-model agent (API 3.0): registers, then proves possession of its AK to the verifier and submits ' +
        'evidence on its own schedule; opens no port (upstream keylime_push_model_agent)',
    )
    .option('-c, --config <file>', 'agent.conf (TOML, [agent] table); replaces the standard file set')
  addConfigFlags(push)
  push
    .option(
      '--registrar-url <url>',
      'registrar http://host:port, or https://host:tls_port (sets registrar_* options)',
    )
    .option('--agent-identifier <id>', 'attest as this agent id instead of the registered UUID')
    .option('--ca-certificate <file>', 'CA certificate of the verifier (verifier_tls_ca_cert)')
    .option('--api-version <version>', 'verifier API version in paths', 'v3.0')
    .option('--timeout <ms>', 'per-request timeout in milliseconds', '5000')
    .option(
      '--insecure',
      'accept any verifier and registrar certificate (tls_accept_invalid_certs; testing only)',
    )
    .option('--avoid-tpm', 'refused: Keylime TS always attests with the TPM')
    .action(async (opts: Record<string, unknown>) => {
      if (opts.avoidTpm)
        throw new CliError('--avoid-tpm is not supported: the push agent needs its TPM', EXIT.usage)
      const timeout = Number(opts.timeout)
      if (!Number.isInteger(timeout) || timeout <= 0)
        throw new CliError('--timeout must be a positive number of ms', EXIT.usage)
      const overrides = configOverrides(opts)
      if (typeof opts.caCertificate === 'string') overrides.verifier_tls_ca_cert = opts.caCertificate
      if (opts.insecure === true) overrides.tls_accept_invalid_certs = 'true'
      const { runPushAgentProcess } = await import('../../agent/push/main.ts')
      await runPushAgentProcess(
        { ...(typeof opts.config === 'string' ? { configPath: opts.config } : {}), overrides },
        {
          ...(typeof opts.registrarUrl === 'string' ? { registrarUrl: opts.registrarUrl } : {}),
          ...(typeof opts.agentIdentifier === 'string' ? { agentIdentifier: opts.agentIdentifier } : {}),
          apiVersion: String(opts.apiVersion),
          timeoutMs: timeout,
        },
      )
    })
}
