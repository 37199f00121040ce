import { execFileSync, spawnSync } from 'node:child_process'
import { describe, expect, it } from 'vitest'

const run = (...args: string[]) => execFileSync('node', ['bin/keylime.js', ...args], { encoding: 'utf8' })

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
describe('keylime tenant command line', () => {
  it('documents its commands and exit codes in --help', () => {
    const help = execFileSync('node', ['bin/keylime.js', 'tenant', '--help'], { encoding: 'utf8' })
    expect(help).toContain('addruntimepolicy')
    expect(help).toContain('Exit status')
  })

  it('exits 2 on an unknown command', () => {
    const unknown = spawnSync('node', ['bin/keylime.js', 'tenant', '-c', 'frobnicate'], { encoding: 'utf8' })
    expect(unknown.status).toBe(2)
    expect(unknown.stderr).toContain('unknown tenant command')
  })
})
