/** Service logs: ISO-8601 UTC timestamps, `--log-format json|pretty`, KEYLIME_LOG_LEVEL. */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'

const BIN = resolve(import.meta.dirname, '../../bin/keylime.js')
const dir = mkdtempSync(join(tmpdir(), 'kl-logging-'))
const children: ChildProcess[] = []
afterAll(() => {
  for (const c of children) c.kill('SIGKILL')
  rmSync(dir, { recursive: true, force: true })
})

/** Starts a registrar on free ports and resolves with its first stdout line. */
function firstLogLine(args: string[], env: Record<string, string> = {}): Promise<string> {
  const child = spawn(process.execPath, [BIN, 'registrar', '--port', '0', '--tls-port', '0', ...args], {
    env: {
      ...process.env,
      KEYLIME_DIR: join(dir, String(children.length)),
      KEYLIME_REGISTRAR_CONFIG: '/dev/null',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  children.push(child)
  return new Promise((done, fail) => {
    let out = ''
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString()
      const line = out.split('\n')[0]
      if (out.includes('\n') && line !== undefined) {
        child.kill('SIGTERM')
        done(line)
      }
    })
    child.on('exit', (code) => fail(new Error(`registrar exited ${code} before logging: ${out}`)))
  })
}

describe('service logs', () => {
  it('are JSON lines with an ISO-8601 UTC time by default', async () => {
    const line = JSON.parse(await firstLogLine([])) as Record<string, unknown>
    expect(line.time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
    expect(line).toMatchObject({ level: 30, component: 'registrar', msg: 'registrar configuration loaded' })
  })

  it('are readable lines with --log-format pretty', async () => {
    const line = await firstLogLine(['--log-format', 'pretty'])
    expect(line).toMatch(
      /^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] INFO: registrar: registrar configuration loaded/,
    )
  })

  it('follow KEYLIME_LOG_LEVEL: at error, the info lines are gone', async () => {
    // Without TLS material the registrar stops at start-up; at level info it has logged a line by then.
    const run = (level: string) =>
      new Promise<{ out: string; code: number | null }>((done) => {
        const child = spawn(
          process.execPath,
          [BIN, 'registrar', '--port', '0', '--tls-port', '0', '--tls-dir', join(dir, 'none')],
          {
            env: {
              ...process.env,
              KEYLIME_DIR: dir,
              KEYLIME_REGISTRAR_CONFIG: '/dev/null',
              KEYLIME_LOG_LEVEL: level,
            },
            stdio: ['ignore', 'pipe', 'ignore'],
          },
        )
        children.push(child)
        let out = ''
        child.stdout?.on('data', (d: Buffer) => (out += d.toString()))
        child.on('exit', (code) => done({ out, code }))
      })
    const [info, error] = await Promise.all([run('info'), run('error')])
    expect(info.code).toBe(2)
    expect(info.out).toContain('registrar configuration loaded')
    expect(error).toEqual({ out: '', code: 2 })
  })
})
