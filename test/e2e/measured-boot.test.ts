/**
 * Measured boot end to end on swtpm: a real machine's UEFI event log is extended into the agent's swtpm (so the
 * quote matches the log), the agent serves that log, the tenant enrolls with a reference state generated from it
 * (inline `--mb-policy` and a named policy), attestation passes; then one event is tampered with (an extra extend in
 * the TPM, or one digest changed in the served log) and the verifier fails the agent with a measured-boot event.
 */
import { spawn } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { extendEventLogIntoTpm } from '../../src/devtools/event-log-replay.ts'
import { type ClusterAgent, LocalCluster, waitFor } from '../../src/devtools/local-cluster.ts'
import { extendPlan, parseEventLog } from '../../src/evidence/mb/index.ts'
import { pcrExtend } from '../../src/tpm/keylime-client.ts'
import { Tpm } from '../../src/tpm/tpm.ts'
import { fixture } from '../helpers/fixture.ts'

// A crypto-agile log from a real machine (RHEL 8 on GCE, Secure Boot on): no H-CRTM, default StartupLocality.
const LOG_NAME = 'go-tpm-tools-rhel8-gce.bin'

function keylime(...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('node', ['bin/keylime.js', ...args])
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    child.on('exit', (status) => resolve({ status, stdout, stderr }))
  })
}

interface CvStatus {
  operational_state: number
  attestation_count: number
  last_event_id: string | null
}

describe('measured boot with a real event log on swtpm', () => {
  let dir: string
  let cluster: LocalCluster
  const logBytes = fixture(`eventlogs/${LOG_NAME}`)
  const agents: { agent: ClusterAgent; logPath: string }[] = []
  let refstate: string

  const tenant = (...args: string[]) => keylime('tenant', '--config', cluster.tenantConf, ...args)
  const cvstatus = async (uuid: string): Promise<CvStatus | undefined> => {
    const r = await tenant('-c', 'cvstatus', '-u', uuid, '--json')
    if (r.status !== 0) return undefined
    return (JSON.parse(r.stdout) as Record<string, CvStatus>)[uuid]
  }
  const waitPassing = (uuid: string) =>
    waitFor('attestations to pass', 60, async () => {
      const s = await cvstatus(uuid)
      if (s?.operational_state === 9) throw new Error(`agent failed: ${s.last_event_id}`)
      return s && s.operational_state === 3 && s.attestation_count >= 2 ? s : undefined
    })
  const waitFailed = (uuid: string) =>
    waitFor('the verifier to fail the agent', 60, async () => {
      const s = await cvstatus(uuid)
      return s?.operational_state === 9 ? s : undefined
    })

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kl-mb-e2e-'))
    mkdirSync(join(dir, 'logs-served'))
    cluster = new LocalCluster({ dir, quoteInterval: 1, stepTimeout: 90 })
    await cluster.startServices()
    for (const name of ['mbagent1', 'mbagent2']) {
      const logPath = join(dir, 'logs-served', `${name}.bin`)
      writeFileSync(logPath, logBytes)
      const agent = await cluster.startAgent(name, ['--measuredboot-ml-path', logPath])
      // Quotes start only after enrollment, so extending now (sharing the swtpm with the registering agent) is
      // like the firmware having measured the boot before the agent ran.
      await extendEventLogIntoTpm(agent.swtpm.transport, logBytes)
      agents.push({ agent, logPath })
    }
    refstate = join(dir, 'refstate.json')
    const created = await keylime(
      'policy',
      'create',
      'measured-boot',
      '-e',
      join(dir, 'logs-served', 'mbagent1.bin'),
      '-o',
      refstate,
    )
    if (created.status !== 0) throw new Error(`policy create failed: ${created.stderr}`)
    for (const { agent } of agents) {
      await waitFor('registration', 60, async () => {
        const r = await tenant('-c', 'regstatus', '-u', agent.uuid, '--json')
        return r.status === 0 ? true : undefined
      })
    }
  }, 180_000)

  afterAll(async () => {
    await cluster?.stop()
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  it('passes with the log as --mb-policy reference state, and fails when one more digest is extended into PCR 4', async () => {
    const { agent } = agents[0] as { agent: ClusterAgent }
    const add = await tenant('-c', 'add', '-u', agent.uuid, '--mb-policy', refstate)
    expect(add.status, add.stderr).toBe(0)
    await waitPassing(agent.uuid)

    const tpm = await Tpm.open(agent.swtpm.transport)
    try {
      await pcrExtend(tpm, 4, { sha1: Buffer.alloc(20, 0xab), sha256: Buffer.alloc(32, 0xab) })
    } finally {
      await tpm.close()
    }
    const failed = await waitFailed(agent.uuid)
    expect(failed.last_event_id).toBe('measured_boot.invalid_pcr_4')
  }, 120_000)

  it('passes with a named policy, and fails when one event digest of the served log is changed', async () => {
    const { agent, logPath } = agents[1] as { agent: ClusterAgent; logPath: string }
    const name = `rhel8-gce-${agent.uuid.slice(0, 8)}`
    const upload = await tenant('-c', 'addmbpolicy', '--mb-policy-name', name, '--mb-policy', refstate)
    expect(upload.status, upload.stderr).toBe(0)
    const add = await tenant('-c', 'add', '-u', agent.uuid, '--mb-policy-name', name)
    expect(add.status, add.stderr).toBe(0)
    await waitPassing(agent.uuid)

    // Change one byte of the sha256 digest of a PCR-4 event (a boot loader image) in the log the agent serves.
    const step = extendPlan(parseEventLog(logBytes)).steps.find((s) => s.pcr === 4 && s.digests.sha256)
    const digest = step?.digests.sha256
    if (!digest) throw new Error('the log has no PCR 4 event')
    const tampered = Buffer.from(readFileSync(logPath))
    const at = tampered.indexOf(Buffer.from(digest))
    expect(at).toBeGreaterThan(0)
    tampered[at] = (tampered[at] as number) ^ 0xff
    writeFileSync(logPath, tampered)

    const failed = await waitFailed(agent.uuid)
    expect(failed.last_event_id).toBe('measured_boot.invalid_pcr_4')
  }, 120_000)
})
