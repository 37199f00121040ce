/**
 * A verifier logger for the fleet benchmarks: lease lapses, fence refusals, takeovers and claims are logged at info,
 * so they are counted here; only warnings and errors are printed (stderr).
 */
import pino from 'pino'

export interface LeaseEvents {
  heartbeatExpired: number
  fenceRefused: number
  takenByOther: number
  claimed: number
}

export function leaseEventLog(): { log: pino.Logger; leaseEvents: LeaseEvents } {
  const leaseEvents: LeaseEvents = { heartbeatExpired: 0, fenceRefused: 0, takenByOther: 0, claimed: 0 }
  const log = pino(
    { level: 'info' },
    {
      write(line: string) {
        if (line.includes('heartbeat row had expired')) leaseEvents.heartbeatExpired++
        else if (line.includes('write fence refused')) leaseEvents.fenceRefused++
        else if (line.includes('taken by another verifier')) leaseEvents.takenByOther++
        else if (line.includes('claimed agents nobody held'))
          leaseEvents.claimed += Number(/"claimed":(\d+)/.exec(line)?.[1] ?? 0)
        if (/"level":(40|50|60)/.test(line)) process.stderr.write(line)
      },
    },
  )
  return { log, leaseEvents }
}
