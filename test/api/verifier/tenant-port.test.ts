/**
 * The tenant's verifier port over the one verifier client, against a real verifier app over HTTP: outcomes the
 * tenant relies on (404 -> null/false/'not-found', 409 -> "already enrolled", 204 deletes, failures -> TenantError
 * with the verifier's status text and an exit code).
 */
import type { AddressInfo } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type SimFleet, startSimFleet } from '../../../bench/fleet-agents.ts'
import { verifierPort } from '../../../src/tenant/clients.ts'
import { EXIT_FAILED, EXIT_PEER, TenantError } from '../../../src/tenant/errors.ts'
import type { VerifierEnrollBody } from '../../../src/tenant/ports.ts'
import { runtimePolicyB64 } from '../../helpers/runtime-policy.ts'
import { enrollBody, makeVerifier } from '../../unit/verifier/harness.ts'

let fleet: SimFleet
let admin: Awaited<ReturnType<typeof makeVerifier>>
let anonymous: Awaited<ReturnType<typeof makeVerifier>>
let port: ReturnType<typeof verifierPort>
let anonymousPort: ReturnType<typeof verifierPort>

const runtimePolicy = runtimePolicyB64({ '/bin/sh': ['a'.repeat(64)] }, 0)

const urlOf = (app: { server: { address(): unknown } }) =>
  `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`

beforeAll(async () => {
  fleet = await startSimFleet({ count: 1, shareKeys: true })
  admin = await makeVerifier()
  // every caller of this instance is admin (the TLS split itself is covered by the e2e tests)
  admin.app.addHook('onRequest', async (req) => {
    req.headers['x-test-admin'] = '1'
  })
  await admin.app.listen({ host: '127.0.0.1', port: 0 })
  anonymous = await makeVerifier()
  await anonymous.app.listen({ host: '127.0.0.1', port: 0 })
  const opts = { apiVersion: '2.6', tls: {}, timeoutMs: 5000 }
  port = verifierPort({ baseUrl: urlOf(admin.app), ...opts })
  anonymousPort = verifierPort({ baseUrl: urlOf(anonymous.app), ...opts })
})

afterAll(async () => {
  await port?.close()
  await anonymousPort?.close()
  await admin?.app.close()
  await anonymous?.app.close()
  await fleet?.close()
})

describe('tenant verifier port', () => {
  it('enrolls, refuses a second enrollment as "already enrolled", lists, stops and deletes an agent', async () => {
    const agent = fleet.agents[0] as SimFleet['agents'][number]
    const body = enrollBody(agent, fleet.port) as unknown as VerifierEnrollBody
    expect(await port.getAgent(agent.id)).toBeNull()
    await port.addAgent(agent.id, body)
    const again = await port.addAgent(agent.id, body).catch((e: unknown) => e)
    expect(again).toBeInstanceOf(TenantError)
    expect((again as TenantError).message).toBe(
      `agent ${agent.id} is already enrolled at the verifier: delete or update it first`,
    )
    expect(await port.listAgents()).toEqual([agent.id])
    expect(await port.listAgents('another-verifier')).toEqual([])
    expect(Object.keys(await port.bulkInfo('default'))).toEqual([agent.id])
    await port.stopAgent(agent.id)
    expect((await port.getAgent(agent.id))?.operational_state).toBe(10)
    expect(await port.deleteAgent(agent.id)).toBe('deleted')
    expect(await port.deleteAgent(agent.id)).toBe('not-found')
  })

  it('runtime and measured-boot policies: add, show, list, delete (204), delete again (false)', async () => {
    expect(await port.getRuntimePolicy('rp')).toBeNull()
    await port.addRuntimePolicy('rp', { runtime_policy: runtimePolicy }, false)
    expect(await port.getRuntimePolicy('rp')).toMatchObject({ name: 'rp', tmp_policy: null })
    expect(await port.listRuntimePolicies()).toEqual(['rp'])
    expect(await port.deleteRuntimePolicy('rp')).toBe(true)
    expect(await port.deleteRuntimePolicy('rp')).toBe(false)

    await port.addMbPolicy('mb', '{}', false)
    await port.addMbPolicy('mb', '{"a": 1}', true)
    expect(await port.getMbPolicy('mb')).toMatchObject({ name: 'mb' })
    expect(await port.listMbPolicies()).toEqual(['mb'])
    expect(await port.deleteMbPolicy('mb')).toBe(true)
    expect(await port.deleteMbPolicy('mb')).toBe(false)
    expect(await port.getMbPolicy('mb')).toBeNull()
  })

  it('a refusal is a TenantError naming the operation and the verifier status, exit code 1', async () => {
    const err = await anonymousPort.listAgents().catch((e: unknown) => e)
    expect(err).toBeInstanceOf(TenantError)
    expect((err as TenantError).exitCode).toBe(EXIT_FAILED)
    expect((err as TenantError).message).toBe('verifier list: Action requires an admin client certificate')
    const bad = await port.addRuntimePolicy('x', { runtime_policy: 'not base64!' }, false).catch((e) => e)
    expect(bad).toBeInstanceOf(TenantError)
    expect((bad as TenantError).message).toMatch(/^runtime policy x: /)
  })

  it('an unreachable verifier is a TenantError with the peer exit code', async () => {
    const gone = verifierPort({ baseUrl: 'http://127.0.0.1:1', apiVersion: '2.6', tls: {}, timeoutMs: 2000 })
    try {
      const err = await gone.getAgent('x').catch((e: unknown) => e)
      expect(err).toBeInstanceOf(TenantError)
      expect((err as TenantError).exitCode).toBe(EXIT_PEER)
      expect((err as TenantError).message).toMatch(/^verifier status of x: GET \/v2\.6\/agents\/x: /)
    } finally {
      await gone.close()
    }
  })
})
