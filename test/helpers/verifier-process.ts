/** A `keylime verifier` process run from source (tsx), as the end-to-end and chaos tests start it. */
import { type ChildProcess, type StdioOptions, spawn } from 'node:child_process'
import { join, resolve } from 'node:path'

const ROOT = resolve(import.meta.dirname, '../..')

/** Starts `keylime verifier ...args` with `env` on top of this process's environment. */
export function spawnVerifierFromSource(
  args: string[],
  env: Record<string, string>,
  stdio: StdioOptions = ['ignore', 'ignore', 'pipe'],
): ChildProcess {
  const code = `
    const { Command } = await import('commander')
    const { registerVerifierCommand } = await import(${JSON.stringify(join(ROOT, 'src/cli/commands/verifier.ts'))})
    const p = new Command('keylime'); registerVerifierCommand(p); await p.parseAsync(process.argv.slice(1), { from: 'user' })`
  return spawn(
    process.execPath,
    ['--import', 'tsx', '--input-type=module', '-e', code, '--', 'verifier', ...args],
    {
      cwd: ROOT,
      env: { ...process.env, ...env },
      stdio,
    },
  )
}
