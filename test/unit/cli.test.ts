import { execFileSync } from 'node:child_process'
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
