/**
 * Issue #12 item 8: one info line per admin action on the verifier and the registrar, naming who (the client
 * certificate subject), the agent or policy, and what changed, never a secret or a policy body.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type SimFleet, startSimFleet } from '../../../bench/fleet-agents.ts'
import { runtimePolicyJson } from '../../helpers/runtime-policy.ts'
import { ADMIN, enrollBody, makeVerifier } from '../../unit/verifier/harness.ts'
import { softwareTpm } from '../registrar/software-tpm.ts'
import { startThreeServices, type ThreeServices } from './three-services.ts'

const audits = (lines: Record<string, unknown>[]) => lines.filter((l) => typeof l.audit === 'string')

describe('registrar audit lines', () => {
  let three: ThreeServices
  beforeAll(async () => {
    three = await startThreeServices()
  }, 60_000)
  afterAll(() => three?.close())

  it('a delete over mTLS names the client certificate subject and the agent', async () => {
    const registrar = three.services.find((s) => s.name === 'registrar')
    if (!registrar) throw new Error('no registrar')
    const tpm = softwareTpm()
    const b64 = (u: Uint8Array) => Buffer.from(u).toString('base64')
    const reg = await registrar.send(
      'POST',
      '/v2.6/agents/audited-agent',
      JSON.stringify({
        aik_tpm: b64(tpm.akTpm),
        ek_tpm: b64(tpm.ekTpm),
        ekcert: null,
        mtls_cert: 'disabled',
      }),
    )
    expect(reg.status, reg.body).toBe(200)
    const del = await registrar.send('DELETE', '/v2.6/agents/audited-agent')
    expect(del.status, del.body).toBe(200)
    expect(audits(three.logLines())).toEqual([
      expect.objectContaining({
        level: 30,
        audit: 'agent.delete',
        by: 'CN=client',
        agentId: 'audited-agent',
      }),
    ])
  })
})

describe('verifier audit lines', () => {
  let fleet: SimFleet
  const lines: string[] = []
  let v: Awaited<ReturnType<typeof makeVerifier>>
  beforeAll(async () => {
    fleet = await startSimFleet({ count: 1 })
    const pino = (await import('pino')).default
    v = await makeVerifier(
      {},
      undefined,
      undefined,
      pino({ level: 'info' }, { write: (l: string) => void lines.push(l) }),
    )
  })
  afterAll(async () => {
    await v.app.close()
    await fleet.close()
  })

  it('enrol, stop, reactivate, delete and every policy change leave one line each, without secrets', async () => {
    const agent = fleet.agents[0] as SimFleet['agents'][number]
    const policy = runtimePolicyJson({ '/usr/bin/secret-tool': ['a'.repeat(64)] })
    const mb = JSON.stringify({ has_secureboot: false, scrtm_and_bios: [] })
    const call = async (method: 'POST' | 'PUT' | 'DELETE', url: string, payload?: object) => {
      const r = await v.app.inject({ method, url, headers: ADMIN, ...(payload ? { payload } : {}) })
      expect(r.statusCode, `${method} ${url}: ${r.body}`).toBeLessThan(300)
    }
    const rtBody = { runtime_policy: Buffer.from(policy).toString('base64') }
    await call('POST', '/v2.6/allowlists/rt1', rtBody)
    await call('PUT', '/v2.6/allowlists/rt1', rtBody)
    await call('POST', '/v2.6/mbpolicies/mb1', { mb_policy: mb })
    await call('PUT', '/v2.6/mbpolicies/mb1', { mb_policy: mb })
    await call('POST', `/v2.6/agents/${agent.id}`, enrollBody(agent, fleet.port))
    await call('PUT', `/v2.6/agents/${agent.id}/stop`)
    await call('PUT', `/v2.6/agents/${agent.id}/reactivate`)
    await call('DELETE', `/v2.6/agents/${agent.id}`)
    await call('DELETE', '/v2.6/allowlists/rt1')
    await call('DELETE', '/v2.6/mbpolicies/mb1')

    const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>)
    const actions = audits(parsed).map((l) => [l.audit, l.agentId ?? l.policy])
    expect(actions).toEqual([
      ['runtime_policy.add', 'rt1'],
      ['runtime_policy.update', 'rt1'],
      ['mb_policy.add', 'mb1'],
      ['mb_policy.update', 'mb1'],
      ['agent.enrol', agent.id],
      ['agent.stop', agent.id],
      ['agent.reactivate', agent.id],
      ['agent.delete', agent.id],
      ['runtime_policy.delete', 'rt1'],
      ['mb_policy.delete', 'mb1'],
    ])
    for (const l of audits(parsed)) {
      expect(l.level).toBe(30)
      expect(l).toHaveProperty('by')
    }
    const enrol = audits(parsed).find((l) => l.audit === 'agent.enrol')
    expect(enrol).toMatchObject({ ip: agent.ip, port: fleet.port, payloadKey: true })
    // names and checksums only: no policy body, no V key share
    const text = lines.join('\n')
    expect(text).not.toContain('secret-tool')
    expect(text).not.toContain(Buffer.alloc(32, 7).toString('base64'))
  })
})
