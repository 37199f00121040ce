/**
 * `keylime push-agent`: loads agent.conf (the same file and options as the pull agent, plus the push ones), applies
 * upstream's push-agent flags, runs the push agent until SIGTERM/SIGINT (READY=1 to systemd once registered).
 */
import { createLogger, type Logger } from '../../common/log.ts'
import { notifySystemdReady } from '../../common/systemd.ts'
import { type LoadAgentConfigOptions, loadAgentConfig } from '../config.ts'
import { imaNgFormatter } from '../ima-emulator.ts'
import { closeOnSignal } from '../main.ts'
import { defaultAgentDeps } from '../runtime.ts'
import { PushAgentError, startPushAgent } from './push-agent.ts'

/** Upstream's push-agent flags that are not agent.conf options. */
export interface PushAgentFlags {
  /** `http[s]://host:port` of the registrar: sets registrar_ip and registrar_port (or registrar_tls_port with https). */
  registrarUrl?: string
  agentIdentifier?: string
  apiVersion?: string
  timeoutMs?: number
}

/** `--registrar-url` as the agent.conf options it stands for. */
export function registrarUrlOverrides(url: string): Record<string, string> {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    throw new PushAgentError(`--registrar-url ${url} is not a URL`)
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:')
    throw new PushAgentError(`--registrar-url ${url}: expected http:// or https://`)
  const tls = u.protocol === 'https:'
  const port = u.port || (tls ? '443' : '80')
  return {
    registrar_ip: u.hostname.replace(/^\[|\]$/g, ''),
    registrar_tls_enabled: String(tls),
    [tls ? 'registrar_tls_port' : 'registrar_port']: port,
  }
}

export async function runPushAgentProcess(
  load: LoadAgentConfigOptions,
  flags: PushAgentFlags,
  log: Logger = createLogger('push-agent'),
): Promise<void> {
  const config = loadAgentConfig({
    ...load,
    overrides: {
      ...(flags.registrarUrl ? registrarUrlOverrides(flags.registrarUrl) : {}),
      ...load.overrides,
    },
  })
  const agent = await startPushAgent({
    config,
    deps: defaultAgentDeps(),
    log,
    imaFormatter: imaNgFormatter,
    ...(flags.apiVersion ? { apiVersion: flags.apiVersion } : {}),
    ...(flags.timeoutMs !== undefined ? { timeoutMs: flags.timeoutMs } : {}),
    ...(flags.agentIdentifier ? { agentIdentifier: flags.agentIdentifier } : {}),
  })
  const stopped = closeOnSignal(agent, log)
  // startPushAgent returns once registration and activation are done; attestation runs on from here. Signals are
  // handled before systemd hears READY=1, so a stop right after it still shuts down cleanly.
  await notifySystemdReady('push agent registered and activated', log)
  await stopped
}
