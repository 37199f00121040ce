/**
 * Process-level entry points used by the CLI: run the agent until SIGTERM/SIGINT, and the IMA emulator.
 */
import { watch } from 'node:fs'
import { createLogger, type Logger } from '../common/log.ts'
import { notifySystemdReady } from '../common/systemd.ts'
import { TpmLock } from './agent-tpm.ts'
import {
  AGENT_CONFIG_DEFAULTS,
  type AgentConfig,
  type LoadAgentConfigOptions,
  loadAgentConfig,
} from './config.ts'
import { ImaEmulator, imaNgFormatter } from './ima-emulator.ts'
import { resolveRunAs } from './privileges.ts'
import { defaultAgentDeps, startAgent } from './runtime.ts'

export const AGENT_OPTION_NAMES = Object.keys(AGENT_CONFIG_DEFAULTS) as (keyof AgentConfig)[]

/** Starts the agent and stops it cleanly on SIGTERM/SIGINT. Resolves when it has stopped. */
export async function runAgentProcess(
  load: LoadAgentConfigOptions,
  log: Logger = createLogger('agent'),
): Promise<void> {
  const config = loadAgentConfig(load)
  // Resolved before the TPM is touched, so an unknown user or group stops start-up at once.
  const runAs = resolveRunAs(config.run_as, log)
  const agent = await startAgent({
    config,
    deps: defaultAgentDeps(),
    log,
    imaFormatter: imaNgFormatter,
    ...(runAs ? { runAs } : {}),
  })
  await notifySystemdReady('agent registered and listening', log)
  await closeOnSignal(agent, log)
}

/**
 * Resolves once SIGTERM or SIGINT has closed `agent` (the first signal only; a failed close is logged). Handlers are
 * installed when called.
 */
export function closeOnSignal(agent: { close(): Promise<void> }, log: Logger): Promise<void> {
  return new Promise<void>((done) => {
    let stopping = false
    const stop = (sig: string) => {
      if (stopping) return
      stopping = true
      log.info(`${sig} received, shutting down`)
      agent.close().then(done, (err: unknown) => {
        log.error(`shutdown error: ${(err as Error).message}`)
        done()
      })
    }
    process.once('SIGTERM', () => stop('SIGTERM'))
    process.once('SIGINT', () => stop('SIGINT'))
  })
}

export interface ImaEmulateOptions {
  tpm: string
  list: string
  hashAlg: 'sha1' | 'sha256' | 'sha384' | 'sha512'
  paths: string[]
  watch: boolean
  log?: Logger
}

/** Measures the paths once; with `watch`, re-measures a file each time it changes until SIGTERM/SIGINT. */
export async function runImaEmulator(o: ImaEmulateOptions): Promise<string[]> {
  const log = o.log ?? createLogger('ima-emulator')
  const tpm = await defaultAgentDeps().openTpm(o.tpm)
  const emulator = new ImaEmulator({
    tpm,
    lock: new TpmLock(),
    listPath: o.list,
    hashAlg: o.hashAlg,
    format: imaNgFormatter,
  })
  try {
    const lines = await emulator.measure(o.paths)
    if (!o.watch) return lines
    for (const l of lines) log.info(`measured: ${l.trimEnd()}`)
    await new Promise<void>((done) => {
      const timers = new Map<string, NodeJS.Timeout>()
      const watchers = o.paths.map((p) =>
        watch(p, () => {
          clearTimeout(timers.get(p))
          timers.set(
            p,
            setTimeout(() => {
              emulator.measure([p]).then(
                (ls) => {
                  for (const l of ls) log.info(`measured: ${l.trimEnd()}`)
                },
                (err: unknown) => log.error(`cannot measure ${p}: ${(err as Error).message}`),
              )
            }, 200),
          )
        }),
      )
      const stop = () => {
        for (const w of watchers) w.close()
        for (const t of timers.values()) clearTimeout(t)
        done()
      }
      process.once('SIGTERM', stop)
      process.once('SIGINT', stop)
    })
    return lines
  } finally {
    await tpm.close()
  }
}
