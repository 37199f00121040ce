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

export function createLogger(
  component: string,
  level = process.env.KEYLIME_LOG_LEVEL ?? 'info',
  format: LogFormat = logFormatFromEnv(),
): Logger {
  const options = { name: component, level, base: { component }, timestamp: pino.stdTimeFunctions.isoTime }
  return format === 'pretty' ? pino(options, prettyStream()) : pino(options)
}
