import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

describe('keylime demo --push', () => {
  it('enrolls a push agent without contacting it, attests it, catches a changed program and delivers a signed revocation', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kl-push-demo-test-'))
    try {
      const run = spawnSync('node', ['bin/keylime.js', 'demo', '--push', '--dir', dir], {
        encoding: 'utf8',
        timeout: 240_000,
      })
      const out = run.stdout + run.stderr
      const expectations = [
        /verifier in push mode at https:\/\/127\.0\.0\.1:\d+/,
        /push agent [\w-]+ started on swtpm \(no listening port\)/,
        /push agent registered with the registrar/,
        /registrar: EK certificate trusted \(push model: the agent is not contacted\)/,
        /measured-boot reference state generated from the boot log/,
        /push agent: attestation #(?:[3-9]|[1-9]\d+) passed/,
        /verifier detected it after [\d.]+s: attestation_status FAIL, event ima\.validation\.ima-ng\.runtime_policy_hash/,
        /webhook: signed revocation for [\w-]+ verified \(event ima\.validation\.ima-ng\.runtime_policy_hash\)/,
      ]
      for (const re of expectations) expect(out).toMatch(re)
      expect(run.status, out).toBe(0)
      // the push agent never listened: its log shows no listener, only its verifier
      const agentLog = readFileSync(join(dir, 'logs', 'push-agent1.log'), 'utf8')
      expect(agentLog).toMatch(/attesting to https:\/\/127\.0\.0\.1:\d+\/v3\.0/)
      // the measured-boot policy made the verifier ask for the UEFI log too
      expect(agentLog).toMatch(/evidence for attestation \d+ \(tpm_quote, uefi_log, ima_log\) accepted/)
      expect(agentLog).not.toMatch(/listening/)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }, 300_000)
})
