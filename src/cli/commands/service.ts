/**
 * The long-running service commands (`keylime verifier`, `keylime registrar`): options from the config file,
 * `KEYLIME_*` and flags, start-up failures on the CLI's one-line error path, SIGTERM/SIGINT for a clean stop.
 */
import type { Command } from 'commander'
import type { Logger } from '../../common/log.ts'
import { addConfigFlag, addOptionFlags, flagsFromOptions } from '../../config/cli-flags.ts'
import { step } from '../errors.ts'

export interface ServiceCommand<C> {
  name: 'verifier' | 'registrar'
  description: string
  /** Options that also have a flag (`--database-url` for `database_url`). */
  flagKeys: readonly string[]
  loadConfig: (opts: { configFile: string | undefined; flags: Record<string, string> }) => {
    config: C
    files: string[]
    unknown: string[]
  }
  /** Imported only when the command runs, so other commands never load the service. */
  start: (config: C, log: Logger) => Promise<{ close(): Promise<void> }>
}

export function registerServiceCommand<C>(program: Command, service: ServiceCommand<C>): void {
  const cmd = program.command(service.name).description(service.description)
  addConfigFlag(cmd)
  addOptionFlags(cmd, service.flagKeys)
  cmd.action(async (opts: Record<string, unknown>) => {
    const { createLogger } = await import('../../common/log.ts')
    const log = createLogger(service.name)
    // A start-up failure propagates to the CLI's error path: one line on stderr, exit status 2 or 4.
    const { config, files, unknown } = await step('reading the configuration', () =>
      service.loadConfig({
        configFile: typeof opts.config === 'string' ? opts.config : undefined,
        flags: flagsFromOptions(opts, service.flagKeys),
      }),
    )
    log.info({ files }, `${service.name} configuration loaded`)
    if (unknown.length > 0)
      log.warn(
        { unknown },
        `options Keylime TS does not read (ignored; \`keylime config upgrade ${service.name}\` lists them): ${unknown.join(', ')}`,
      )
    // Every database and network failure is meant to be handled where it happens; one that slips through is a bug
    // to log loudly, not a reason to stop attesting every other agent.
    process.on('unhandledRejection', (reason) => {
      const err = reason instanceof Error ? reason : new Error(String(reason))
      log.error(
        { err: err.message, stack: err.stack },
        'unhandled promise rejection (bug): the service keeps running',
      )
    })
    const running = await step('starting', () => service.start(config, log))
    const { notifySystemdReady } = await import('../../common/systemd.ts')
    await notifySystemdReady(`${service.name} listening`, log)
    const shutdown = (signal: string) => {
      log.info({ signal }, `${service.name} shutting down`)
      running.close().then(
        () => process.exit(0),
        (err: unknown) => {
          log.error({ err: (err as Error).message }, `${service.name} shutdown failed`)
          process.exit(1)
        },
      )
    }
    process.once('SIGTERM', () => shutdown('SIGTERM'))
    process.once('SIGINT', () => shutdown('SIGINT'))
  })
}
