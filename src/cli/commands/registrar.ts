import type { Command } from 'commander'
import { addConfigFlag, addOptionFlags, flagsFromOptions } from '../../config/cli-flags.ts'
import { loadRegistrarConfig, type registrarSchema } from '../../config/registrar.ts'
import { step } from '../errors.ts'

const FLAG_KEYS = [
  'ip',
  'port',
  'tls_port',
  'database_url',
  'tls_dir',
  'server_cert',
  'server_key',
  'trusted_client_ca',
  'tpm_identity',
  'malformed_cert_action',
] as const satisfies readonly (keyof typeof registrarSchema)[]

export function registerRegistrarCommand(program: Command): void {
  const cmd = program
    .command('registrar')
    .description(
      'Run the registrar: agent registration/activation on HTTP [registrar] ip:port, same API plus admin routes on HTTPS tls_port',
    )
  addConfigFlag(cmd)
  addOptionFlags(cmd, FLAG_KEYS)
  cmd.action(async (opts: Record<string, unknown>) => {
    const { createLogger } = await import('../../common/log.ts')
    const log = createLogger('registrar')
    // A start-up failure propagates to the CLI's error path: one line on stderr, exit status 2 or 4.
    const { config, files } = await step('reading the configuration', () =>
      loadRegistrarConfig({
        configFile: typeof opts.config === 'string' ? opts.config : undefined,
        flags: flagsFromOptions(opts, FLAG_KEYS),
      }),
    )
    log.info({ files }, 'registrar configuration loaded')
    const { startRegistrar } = await import('../../registrar/server.ts')
    const running = await step('starting', () => startRegistrar(config, log))
    const shutdown = (signal: string) => {
      log.info({ signal }, 'registrar shutting down')
      running.close().then(
        () => process.exit(0),
        (err: unknown) => {
          log.error({ err: (err as Error).message }, 'registrar shutdown failed')
          process.exit(1)
        },
      )
    }
    process.once('SIGTERM', () => shutdown('SIGTERM'))
    process.once('SIGINT', () => shutdown('SIGINT'))
  })
}
