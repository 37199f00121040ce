import pino, { type Logger } from 'pino'

export type { Logger }

/** One logger factory for every component; level from KEYLIME_LOG_LEVEL (default info). */
export function createLogger(component: string, level = process.env.KEYLIME_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name: component, level, base: { component } })
}
