import { execFileSync, spawnSync } from 'node:child_process'
import { describe, expect, it } from 'vitest'

const run = (...args: string[]) =>
  execFileSync('node', ['bin/keylime.js', ...args], { encoding: 'utf8', timeout: 60_000 })

describe('keylime CLI', () => {
  it('prints help listing every component', () => {
    const help = run('--help')
    for (const cmd of [
      'agent',
      'registrar',
      'verifier',
      'tenant',
      'ca',
      'policy',
      'tpm',
      'ima',
      'eventlog',
      'demo',
    ]) {
      expect(help).toMatch(new RegExp(`^\\s+${cmd}\\b`, 'm'))
    }
  })
})
/** Source files a `keylime` command loads (a resolve hook reports every module the process resolves). */
function modulesLoadedBy(args: string[]): string[] {
  const hook = `data:text/javascript,${encodeURIComponent(
    `import { register } from 'node:module'
register('data:text/javascript,' + encodeURIComponent('export async function resolve(s, c, next) { const r = await next(s, c); process._rawDebug("MODULE " + r.url); return r }'))`,
  )}`
  const r = spawnSync(process.execPath, ['--import', hook, 'bin/keylime.js', ...args], {
    encoding: 'utf8',
    timeout: 60_000,
  })
  return r.stderr
    .split('\n')
    .filter((l) => l.startsWith('MODULE '))
    .map((l) => l.slice('MODULE '.length))
}

describe('lazy loading', () => {
  it('--help and a tenant command load neither the services nor fastify and the database', () => {
    for (const args of [
      ['--help'],
      ['tenant', '-c', 'cvlist', '--cvport', '1', '--tls-dir', '/nonexistent'],
    ]) {
      const loaded = modulesLoadedBy(args)
      expect(
        loaded.some((u) => u.includes('/src/cli/main.ts')),
        args.join(' '),
      ).toBe(true)
      expect(
        loaded
          // the agent's option table (its defaults) is what `keylime agent --help` lists
          .filter((u) => !u.endsWith('/src/agent/config.ts') && !u.endsWith('/src/agent/option-checks.ts'))
          .filter((u) =>
            /\/src\/(verifier|registrar|agent|db)\/|\/node_modules\/(fastify|kysely|better-sqlite3)\//.test(
              u,
            ),
          ),
        args.join(' '),
      ).toEqual([])
    }
  })
})

describe('keylime tenant command line', () => {
  it('documents its commands and exit codes in --help', () => {
    const help = run('tenant', '--help')
    expect(help).toContain('addruntimepolicy')
    expect(help).toContain('Exit status')
  })

  it('exits 2 on an unknown command', () => {
    const unknown = spawnSync('node', ['bin/keylime.js', 'tenant', '-c', 'frobnicate'], {
      encoding: 'utf8',
      timeout: 60_000,
    })
    expect(unknown.status).toBe(2)
    expect(unknown.stderr).toContain('unknown tenant command')
  })
})
