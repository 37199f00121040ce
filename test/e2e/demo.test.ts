import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

describe('keylime demo (the README main command)', () => {
  it('enrolls two agents with PCR and runtime policies, delivers payloads, detects an unknown program and a PCR change, and signed revocations reach a webhook and the other agent', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kl-demo-test-'))
    try {
      const run = spawnSync('node', ['bin/keylime.js', 'demo', '--dir', dir], {
        encoding: 'utf8',
        timeout: 240_000,
      })
      const out = run.stdout + run.stderr
      expect(out).toMatch(/identity quote verified/)
      expect(out).toMatch(/agent1: attestation #3 passed/)
      expect(out).toMatch(/agent1: payload ran after the first good attestation/)
      expect(out).toMatch(
        /verifier detected it after [\d.]+s: agent1 Invalid Quote, event pcr_validation\.invalid_pcr_15/,
      )
      expect(out).toMatch(/webhook: revocation for [\w-]+ received, RSA-PSS signature verified/)
      expect(out).toMatch(/agent2: verified the revocation and ran its action: "agent_id":/)
      expect(out).toMatch(/agent2 is still attested: Get Quote/)
      expect(run.status, out).toBe(0)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }, 300_000)
})
