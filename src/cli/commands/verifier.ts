import type { Command } from 'commander'
import { addConfigFlag, addOptionFlags, flagsFromOptions } from '../../config/cli-flags.ts'
import { loadVerifierConfig, type verifierSchema } from '../../config/verifier.ts'
import { step } from '../errors.ts'

const FLAG_KEYS = [
  'uuid',
  'ip',
  'port',
  'tls_dir',
  'database_url',
  'quote_interval',
  'retry_interval',
  'max_retries',
  'request_timeout',
  'enable_agent_mtls',
  'webhook_url',
  'enabled_revocation_notifications',
  'max_concurrency',
  'lease_seconds',
] as const satisfies readonly (keyof typeof verifierSchema)[]

export function registerVerifierCommand(program: Command): void {
  const cmd = program
    .command('verifier')
    .description(
      'Run the verifier (pull mode): HTTPS API on [verifier] ip:port and continuous attestation of enrolled agents',
    )
  addConfigFlag(cmd)
  addOptionFlags(cmd, FLAG_KEYS)
  cmd.action(async (opts: Record<string, unknown>) => {
    const { createLogger } = await import('../../common/log.ts')
    const log = createLogger('verifier')
    // A start-up failure propagates to the CLI's error path: one line on stderr, exit status 2 or 4.
    const { config, files } = await step('reading the configuration', () =>
      loadVerifierConfig({
        configFile: typeof opts.config === 'string' ? opts.config : undefined,
        flags: flagsFromOptions(opts, FLAG_KEYS),
      }),
    )
    log.info({ files }, 'verifier configuration loaded')
    const { startVerifier } = await import('../../verifier/server.ts')
    const running = await step('starting', () => startVerifier(config, log))
    const shutdown = (signal: string) => {
      log.info({ signal }, 'verifier shutting down')
      running.close().then(
        () => process.exit(0),
        (err: unknown) => {
          log.error({ err: (err as Error).message }, 'verifier shutdown failed')
          process.exit(1)
        },
      )
    }
    process.once('SIGTERM', () => shutdown('SIGTERM'))
    process.once('SIGINT', () => shutdown('SIGINT'))
  })
}
