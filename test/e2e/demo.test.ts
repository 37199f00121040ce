import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

describe('keylime demo (the README main command)', () => {
  it('attests two agents with PCR and runtime policies, catches an unknown program and a PCR change, and delivers signed revocations', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kl-demo-test-'))
    try {
      const run = spawnSync('node', ['bin/keylime.js', 'demo', '--dir', dir], {
        encoding: 'utf8',
        timeout: 240_000,
      })
      const out = run.stdout + run.stderr
      const expectations = [
        /identity quote verified/,
        /agent1: attestation #(?:[3-9]|[1-9]\d+) passed/,
        /agent1: payload ran after the first good attestation/,
        /verifier: agent1 Invalid Quote, event ima\.validation\.ima-ng\.not_in_allowlist/,
        /webhook: signed revocation for [\w-]+ verified; context: .*File not found in allowlist: .*cryptominer\.sh/,
        /agent2: verified the revocation and ran its action: "agent_id":/,
        /verifier detected it after [\d.]+s: agent2 Invalid Quote, event pcr_validation\.invalid_pcr_15/,
        /webhook: signed revocation for [\w-]+ verified \(revocation\)/,
      ]
      for (const re of expectations) expect(out).toMatch(re)
      expect(run.status, out).toBe(0)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }, 300_000)
})
