import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { MAX_LOGGED_BYTES, runProgram } from '../../../src/agent/run-program.ts'

/** A real pino logger whose lines the test reads. */
function capturingLogger() {
  const lines: { level: number; msg: string }[] = []
  const stream = new Writable({
    write(chunk, _enc, done) {
      for (const l of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(l))
      done()
    },
  })
  return { log: pino({ level: 'info' }, stream), lines }
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** Waits until a process is gone (an orphan is reaped by init a moment after it died). */
async function gone(pid: number): Promise<boolean> {
  for (let i = 0; i < 50 && alive(pid); i++) await new Promise((r) => setTimeout(r, 50))
  return !alive(pid)
}

describe('runProgram', () => {
  let dir: string
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'run-program-'))
  })
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  function script(name: string, body: string): string {
    const path = join(dir, name)
    writeFileSync(path, `#!/bin/sh\n${body}\n`)
    chmodSync(path, 0o700)
    return path
  }

  it('logs the output line by line and returns the exit status', async () => {
    const { log, lines } = capturingLogger()
    const run = await runProgram(script('ok', 'echo one; echo two >&2; exit 4'), [], {
      cwd: dir,
      timeoutMs: 10_000,
      log,
      label: 'action ok',
    })
    expect(run).toEqual({ code: 4, timedOut: false, droppedBytes: 0 })
    expect(lines.map((l) => l.msg)).toEqual(
      expect.arrayContaining(['action ok: one', 'action ok: two', 'action ok: exited with status 4']),
    )
    expect(lines.find((l) => l.msg === 'action ok: two')?.level).toBe(40)
  })

  it('stops a program that ignores SIGTERM past its timeout, with its children', async () => {
    const { log, lines } = capturingLogger()
    const pids = join(dir, 'hang.pids')
    const t = performance.now()
    const run = await runProgram(script('hang', `trap '' TERM; sleep 600 & echo $$ $! > ${pids}; wait`), [], {
      cwd: dir,
      timeoutMs: 300,
      log,
      label: 'action hang',
    })
    expect(run).toMatchObject({ code: null, timedOut: true })
    expect(performance.now() - t).toBeLessThan(5_000)
    expect(lines.some((l) => l.msg === 'action hang: timed out after 300 ms, killing it')).toBe(true)
    const [shell, sleeper] = readFileSync(pids, 'utf8').trim().split(' ').map(Number) as [number, number]
    expect(await gone(shell)).toBe(true)
    expect(await gone(sleeper)).toBe(true)
  })

  it('logs a bounded part of a flood of output and counts the rest', async () => {
    const { log, lines } = capturingLogger()
    const run = await runProgram(
      script('flood', 'head -c 3000000 /dev/zero | tr "\\0" "x" | fold -w 100; exit 0'),
      [],
      { cwd: dir, timeoutMs: 30_000, log, label: 'action flood' },
    )
    expect(run.code).toBe(0)
    const logged = lines.filter((l) => /^action flood: x+$/.test(l.msg))
    expect(logged.length).toBeGreaterThan(100)
    expect(logged.reduce((n, l) => n + l.msg.length, 0)).toBeLessThanOrEqual(
      MAX_LOGGED_BYTES + 20 * logged.length,
    )
    expect(run.droppedBytes).toBe(3_030_000 - logged.length * 101)
    expect(lines.some((l) => l.msg.includes(`bytes of output not logged`))).toBe(true)
  })

  it('cuts a line without newlines into bounded messages', async () => {
    const { log, lines } = capturingLogger()
    const run = await runProgram(script('long', 'head -c 100000 /dev/zero | tr "\\0" "y"'), [], {
      cwd: dir,
      timeoutMs: 30_000,
      log,
      label: 'action long',
    })
    expect(run.code).toBe(0)
    const parts = lines.filter((l) => /^action long: y+$/.test(l.msg))
    expect(Math.max(...parts.map((l) => l.msg.length))).toBeLessThanOrEqual(4096 + 'action long: '.length)
    expect(
      parts.reduce((n, l) => n + l.msg.length - 'action long: '.length, 0) + run.droppedBytes,
    ).toBeGreaterThanOrEqual(100_000)
  })

  it('does not wait for a process it left behind that still holds the output open', async () => {
    const { log } = capturingLogger()
    const pidFile = join(dir, 'daemon.pid')
    const t = performance.now()
    const run = await runProgram(
      script('daemon', `setsid sh -c 'echo $$ > ${pidFile}; exec sleep 600' & sleep 0.2; echo started`),
      [],
      { cwd: dir, timeoutMs: 20_000, log, label: 'action daemon' },
    )
    expect(run).toMatchObject({ code: 0, timedOut: false })
    expect(performance.now() - t).toBeLessThan(5_000)
    process.kill(Number(readFileSync(pidFile, 'utf8')), 'SIGKILL')
  })

  it('reports a program that cannot start', async () => {
    const { log, lines } = capturingLogger()
    const path = join(dir, 'not-executable')
    writeFileSync(path, '#!/bin/sh\nexit 0\n', { mode: 0o600 })
    const run = await runProgram(path, [], { cwd: dir, timeoutMs: 5_000, log, label: 'action x' })
    expect(run.code).toBeNull()
    expect(lines.some((l) => l.level === 50 && /EACCES/.test(l.msg))).toBe(true)
  })
})
