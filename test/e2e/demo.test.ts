import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { explainMbPolicy, parseEventLog, parseMbPolicy, replayEventLog } from '../../src/evidence/mb/index.ts'

describe('keylime demo (the README main command)', () => {
  it('attests two agents with PCR, measured-boot and runtime policies, catches an unknown program and a changed boot loader, and delivers signed revocations', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kl-demo-test-'))
    try {
      const run = spawnSync('node', ['bin/keylime.js', 'demo', '--dir', dir], {
        encoding: 'utf8',
        timeout: 240_000,
      })
      const out = run.stdout + run.stderr
      const expectations = [
        /measured boot: each agent serves a synthetic UEFI boot log \(\d+ events, Secure Boot on/,
        /measured-boot policy demo-boot generated from agent1's boot log/,
        /agent1 also registered its IAK and IDevID/,
        /identity quote verified/,
        /agent1: attestation #(?:[3-9]|[1-9]\d+) passed \(Get Quote: quote, PCR policy, measured boot, IMA list\)/,
        /measured boot passes on both agents/,
        /agent1: payload ran after the first good attestation/,
        /verifier: agent1 Invalid Quote, event ima\.validation\.ima-ng\.not_in_allowlist/,
        /webhook: signed revocation for [\w-]+ verified; context: .*File not found in allowlist: .*cryptominer\.sh/,
        /agent2: verified the revocation and ran its action: "agent_id":/,
        /tampering 2: agent2's boot loader changed/,
        /verifier detected it after [\d.]+s: agent2 Invalid Quote, event measured_boot\.invalid_pcr_4/,
        /webhook: signed revocation for [\w-]+ verified; event measured_boot\.invalid_pcr_4/,
      ]
      for (const re of expectations) expect(out).toMatch(re)
      expect(run.status, out).toBe(0)

      // what the agents served and what the tenant enrolled: a real event log and a reference state it passes
      const log = parseEventLog(readFileSync(join(dir, 'boot-logs', 'agent2-binary_bios_measurements')))
      expect(log.format).toBe('crypto-agile')
      const pcrs = [...(replayEventLog(log).get('sha256')?.keys() ?? [])].sort((x, y) => x - y)
      expect(pcrs).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14])
      const refstate = JSON.parse(readFileSync(join(dir, 'mb-refstate.json'), 'utf8')) as unknown
      expect(explainMbPolicy(parseMbPolicy(refstate, { engine: 'example' }), log)).toEqual([])
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }, 300_000)
})
