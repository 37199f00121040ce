import type { Command } from 'commander'
import { KeylimeError } from '../../common/errors.ts'
import { createLogger } from '../../common/log.ts'
import { addConfigFlag, addOptionFlags, flagsFromOptions } from '../../config/cli-flags.ts'
import { loadRegistrarConfig, type registrarSchema } from '../../config/registrar.ts'
import { startRegistrar } from '../../registrar/server.ts'

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
    const log = createLogger('registrar')
    let running: Awaited<ReturnType<typeof startRegistrar>>
    try {
      const { config, files } = loadRegistrarConfig({
        configFile: typeof opts.config === 'string' ? opts.config : undefined,
        flags: flagsFromOptions(opts, FLAG_KEYS),
      })
      log.info({ files }, 'registrar configuration loaded')
      running = await startRegistrar(config, log)
    } catch (err) {
      const message = err instanceof KeylimeError ? err.message : (err as Error).message
      log.error({ err: message }, 'registrar failed to start')
      process.stderr.write(`keylime registrar: ${message}\n`)
      process.exitCode = 1
      return
    }
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
