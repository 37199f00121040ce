/**
 * One logger factory for every component (pino). Operators choose:
 * - the level with KEYLIME_LOG_LEVEL: trace, debug, info (default), warn, error, fatal or silent;
 * - the format with `--log-format json|pretty` on any `keylime` command, or KEYLIME_LOG_FORMAT: `json` (default, one
 *   object per line for log collectors) or `pretty` (one readable line per entry, coloured on a terminal).
 * Timestamps are ISO-8601 in UTC (`"time":"2026-12-06T17:30:00.123Z"`) in both formats.
 */
import { createRequire } from 'node:module'
import pino, { type DestinationStream, type Logger } from 'pino'
import { KeylimeError } from './errors.ts'

export type { Logger }

export const LOG_FORMATS = ['json', 'pretty'] as const
export type LogFormat = (typeof LOG_FORMATS)[number]

/** KEYLIME_LOG_FORMAT, or json; anything else is a configuration error the caller reports. */
export function logFormatFromEnv(env: NodeJS.ProcessEnv = process.env): LogFormat {
  const value = env.KEYLIME_LOG_FORMAT ?? 'json'
  if (!(LOG_FORMATS as readonly string[]).includes(value)) {
    throw new KeylimeError('ERR_CONFIG', `KEYLIME_LOG_FORMAT=${value}: expected json or pretty`)
  }
  return value as LogFormat
}

/** pino-pretty, loaded only when asked for (it is not needed by the default JSON format). */
function prettyStream(): DestinationStream {
  const load = createRequire(import.meta.url)
  const pretty = load('pino-pretty') as (options: Record<string, unknown>) => DestinationStream
  return pretty({
    sync: true,
    colorize: process.stdout.isTTY === true,
    translateTime: 'UTC:yyyy-mm-dd"T"HH:MM:ss.l"Z"',
    ignore: 'pid,hostname,name',
    messageFormat: '{component}: {msg}',
  })
}

const pad = (n: number, width = 2) => String(n).padStart(width, '0')

/**
 * `Date.prototype.toISOString` of a time from 0000 to 9999 (pino's `isoTime` calls it), composed from the UTC
 * fields: in Node 20, `toISOString` initialises ICU's time-zone data, ~0.8 MiB resident in every process that logs
 * (measured in the agent, docs/agent.md), while the UTC getters need none of it.
 */
export function isoUtc(ms: number): string {
  const d = new Date(ms)
  return (
    `${pad(d.getUTCFullYear(), 4)}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}` +
    `T${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.${pad(d.getUTCMilliseconds(), 3)}Z`
  )
}

/** pino's `timestamp` option: the same `"time":"…Z"` field as `pino.stdTimeFunctions.isoTime`. */
const isoTime = () => `,"time":"${isoUtc(Date.now())}"`

export function createLogger(
  component: string,
  level = process.env.KEYLIME_LOG_LEVEL ?? 'info',
  format: LogFormat = logFormatFromEnv(),
): Logger {
  const options = { name: component, level, base: { component }, timestamp: isoTime }
  return format === 'pretty' ? pino(options, prettyStream()) : pino(options)
}
