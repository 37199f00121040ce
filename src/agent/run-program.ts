/**
 * Runs the programs an agent is told to run (the payload script, revocation actions) so that none of them can hold
 * the agent: each runs in its own process group with stdin closed, is stopped (SIGTERM to the group, SIGKILL two
 * seconds later) when it outlives its timeout, and has its output logged line by line up to a bound, the rest
 * drained and counted but not logged. The agent stops waiting once the program has exited, even when something it
 * left behind (a daemon that escaped the group) still holds its output open.
 */
import { spawn } from 'node:child_process'
import type { Logger } from '../common/log.ts'

/** Output logged per program and stream; the rest is read and dropped. */
export const MAX_LOGGED_BYTES = 64 * 1024
/** Longest line logged as one message; longer ones are cut there. */
export const MAX_LINE_BYTES = 4096
/** How long output may still arrive after the program exited. */
const OUTPUT_GRACE_MS = 500
/** Between SIGTERM and SIGKILL on a timeout. */
const KILL_GRACE_MS = 2000

export interface RunProgramOptions {
  cwd: string
  timeoutMs: number
  log: Logger
  /** Names the program in log lines (`revocation action X`). */
  label: string
  /** The program's whole environment; the agent's own when absent. */
  env?: NodeJS.ProcessEnv
}

export interface ProgramResult {
  /** Exit status; null when it was killed, timed out or could not start. */
  code: number | null
  timedOut: boolean
  /** Output bytes not logged because of the bounds. */
  droppedBytes: number
}

/** Logs complete lines of one stream, at most `MAX_LOGGED_BYTES` in all; counts what it drops. */
class BoundedLineLog {
  private pending = ''
  private logged = 0
  dropped = 0

  constructor(private readonly emit: (line: string) => void) {}

  add(chunk: string): void {
    this.pending += chunk
    let nl = this.pending.indexOf('\n')
    while (nl !== -1) {
      this.line(this.pending.slice(0, nl))
      this.pending = this.pending.slice(nl + 1)
      nl = this.pending.indexOf('\n')
    }
    while (this.pending.length > MAX_LINE_BYTES) {
      this.line(this.pending.slice(0, MAX_LINE_BYTES))
      this.pending = this.pending.slice(MAX_LINE_BYTES)
    }
  }

  end(): void {
    if (this.pending !== '') this.line(this.pending)
    this.pending = ''
  }

  private line(text: string): void {
    const size = Buffer.byteLength(text) + 1
    if (this.logged + size > MAX_LOGGED_BYTES) {
      this.dropped += size
      return
    }
    this.logged += size
    this.emit(text.length > MAX_LINE_BYTES ? text.slice(0, MAX_LINE_BYTES) : text)
  }
}

export function runProgram(cmd: string, args: string[], o: RunProgramOptions): Promise<ProgramResult> {
  const { log, label } = o
  return new Promise((done) => {
    let child: ReturnType<typeof spawn>
    try {
      child = spawn(cmd, args, {
        cwd: o.cwd,
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
        ...(o.env ? { env: o.env } : {}),
      })
    } catch (err) {
      log.error(`${label}: could not start: ${(err as Error).message}`)
      done({ code: null, timedOut: false, droppedBytes: 0 })
      return
    }
    const out = new BoundedLineLog((l) => log.info(`${label}: ${l}`))
    const errOut = new BoundedLineLog((l) => log.warn(`${label}: ${l}`))
    child.stdout?.setEncoding('utf8').on('data', (c: string) => out.add(c))
    child.stderr?.setEncoding('utf8').on('data', (c: string) => errOut.add(c))
    let timedOut = false
    let finished = false
    const killGroup = (sig: NodeJS.Signals) => {
      try {
        if (child.pid) process.kill(-child.pid, sig)
      } catch {
        // the group is gone already
      }
    }
    const timer = setTimeout(() => {
      timedOut = true
      log.error(`${label}: timed out after ${o.timeoutMs} ms, killing it`)
      killGroup('SIGTERM')
      setTimeout(() => killGroup('SIGKILL'), KILL_GRACE_MS).unref()
    }, o.timeoutMs)
    const finish = (code: number | null, signal: NodeJS.Signals | null) => {
      if (finished) return
      finished = true
      clearTimeout(timer)
      out.end()
      errOut.end()
      const droppedBytes = out.dropped + errOut.dropped
      if (droppedBytes > 0)
        log.warn(`${label}: ${droppedBytes} bytes of output not logged (over ${MAX_LOGGED_BYTES} per stream)`)
      if (!timedOut) log.info(`${label}: exited with ${signal ? `signal ${signal}` : `status ${code}`}`)
      done({ code: timedOut || signal ? null : code, timedOut, droppedBytes })
    }
    child.on('error', (err) => {
      log.error(`${label}: ${err.message}`)
      finished = true
      clearTimeout(timer)
      done({ code: null, timedOut: false, droppedBytes: 0 })
    })
    child.on('close', finish)
    child.on('exit', (code, signal) => {
      // what a left-behind process still writes is not waited for
      setTimeout(() => {
        child.stdout?.destroy()
        child.stderr?.destroy()
        finish(code, signal)
      }, OUTPUT_GRACE_MS).unref()
    })
  })
}
