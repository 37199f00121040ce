/**
 * systemd's readiness protocol for `Type=notify` units: once a service listens, tell the service manager READY=1
 * through `$NOTIFY_SOCKET`. Node cannot send on a Unix datagram socket, so `systemd-notify` sends it; without a
 * `--no-block` it waits until the manager has processed the message (a barrier), so the message is attributed to
 * the unit even though the sender exits right after (the units set `NotifyAccess=all` for it). Outside systemd
 * (no `$NOTIFY_SOCKET`) nothing happens.
 */
import { execFile } from 'node:child_process'
import type { Logger } from 'pino'

/** How long `systemd-notify` may wait for the manager before the attempt is given up (and logged). */
const NOTIFY_TIMEOUT_MS = 10_000

export function notifySystemdReady(
  status: string,
  log: Logger,
  env: NodeJS.ProcessEnv = process.env,
): Promise<void> {
  const socket = env.NOTIFY_SOCKET
  if (!socket) return Promise.resolve()
  return new Promise((resolve) => {
    execFile(
      'systemd-notify',
      ['--ready', `--status=${status}`],
      { env: { ...env, NOTIFY_SOCKET: socket }, timeout: NOTIFY_TIMEOUT_MS },
      (err, _stdout, stderr) => {
        // a unit that waits for READY=1 fails its start-up after TimeoutStartSec; the log says why
        if (err) log.error({ err, stderr: stderr.trim() }, 'systemd readiness notification failed')
        else log.debug({ status }, 'systemd notified: ready')
        resolve()
      },
    )
  })
}
