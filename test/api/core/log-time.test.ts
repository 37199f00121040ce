/** The logger's timestamps: the same text as `toISOString` (which pino's isoTime used), and on every log line. */
import { spawnSync } from 'node:child_process'
import { describe, expect, it } from 'vitest'
import { isoUtc } from '../../../src/common/log.ts'

describe('log timestamps', () => {
  it('isoUtc writes what toISOString writes, across leap days, year ends and the four-digit years', () => {
    const times = [
      0,
      1,
      999,
      Date.UTC(2024, 1, 29, 23, 59, 59, 999),
      Date.UTC(2026, 11, 31, 23, 59, 59, 7),
      Date.UTC(2027, 0, 1),
      Date.UTC(2000, 1, 29, 12),
      Date.UTC(1900, 2, 1),
      Date.UTC(9999, 11, 31, 23, 59, 59, 999),
      Date.UTC(0, 0, 1) - 0,
      -1,
      Date.now(),
    ]
    for (let i = 0; i < 2000; i++) times.push(Math.floor(Math.random() * Date.UTC(9999, 11, 31)))
    for (const t of times) expect(isoUtc(t), String(t)).toBe(new Date(t).toISOString())
  })

  it('every JSON log line carries the time as before', () => {
    const before = Date.now()
    const log = new URL('../../../src/common/log.ts', import.meta.url).pathname
    const r = spawnSync(
      process.execPath,
      [
        '--import',
        'tsx',
        '--input-type=module',
        '-e',
        `(await import(${JSON.stringify(log)})).createLogger('unit').info('hello')`,
      ],
      {
        encoding: 'utf8',
        env: { ...process.env, KEYLIME_LOG_LEVEL: 'info', KEYLIME_LOG_FORMAT: 'json' },
        timeout: 30_000,
      },
    )
    expect(r.status, r.stderr).toBe(0)
    const line = JSON.parse(r.stdout.trim()) as Record<string, unknown>
    expect(line).toMatchObject({ level: 30, component: 'unit', msg: 'hello' })
    expect(line.time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
    expect(Date.parse(line.time as string)).toBeGreaterThanOrEqual(before - 1)
    expect(Date.parse(line.time as string)).toBeLessThanOrEqual(Date.now())
  }, 60_000)
})
