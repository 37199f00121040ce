/** Runs the `keylime` command tree in-process, for tests: stdout, stderr and the exit status it set. */
import { vi } from 'vitest'
import { run } from '../../src/cli/main.ts'

export interface CliResult {
  out: string
  err: string
  code: number
}

export async function runKeylime(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  let out = ''
  let err = ''
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((s) => {
    out += String(s)
    return true
  })
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((s) => {
    err += String(s)
    return true
  })
  const saved = { ...process.env }
  Object.assign(process.env, env)
  process.exitCode = 0
  try {
    await run(['node', 'keylime', ...args])
  } finally {
    o.mockRestore()
    e.mockRestore()
    process.env = saved
  }
  const code = Number(process.exitCode ?? 0)
  process.exitCode = 0
  return { out, err, code }
}
