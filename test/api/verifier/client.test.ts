import type { AddressInfo } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type SimFleet, startSimFleet } from '../../../bench/fleet-agents.ts'
import { VerifierClient, VerifierClientError } from '../../../src/api/verifier/client.ts'
import type { EnrollBody } from '../../../src/api/verifier/schemas.ts'
import { enrollBody, makeVerifier } from '../../unit/verifier/harness.ts'

let v: Awaited<ReturnType<typeof makeVerifier>>
let fleet: SimFleet
let client: VerifierClient

beforeAll(async () => {
  fleet = await startSimFleet({ count: 1, shareKeys: true })
  v = await makeVerifier()
  // plain HTTP: the harness's identity check sees no x-test-admin header, so this caller is anonymous
  await v.app.listen({ host: '127.0.0.1', port: 0 })
  client = new VerifierClient({ baseUrl: `http://127.0.0.1:${(v.app.server.address() as AddressInfo).port}` })
})
afterAll(async () => {
  await client.close()
  await v.app.close()
  await fleet.close()
})

describe('VerifierClient', () => {
  it('reads /version', async () => {
    expect((await client.version()).current_version).toBe('2.6')
  })
  it('surfaces the 403 of an admin route as a typed error with the status', async () => {
    const err = await client.listAgents().catch((e: unknown) => e)
    expect(err).toBeInstanceOf(VerifierClientError)
    expect((err as VerifierClientError).httpStatus).toBe(403)
    expect((err as VerifierClientError).verifierStatus).toMatch(/admin client certificate/)
  })
  it('drives the agent routes when the caller is admin', async () => {
    const admin = await makeVerifier()
    const app = admin.app
    // this instance treats every caller as admin (the TLS split itself is covered by the e2e tests)
    app.addHook('onRequest', async (req) => {
      req.headers['x-test-admin'] = '1'
    })
    await app.listen({ host: '127.0.0.1', port: 0 })
    const c = new VerifierClient({
      baseUrl: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`,
    })
    try {
      const a = fleet.agents[0] as SimFleet['agents'][number]
      await c.addAgent(a.id, enrollBody(a, fleet.port) as EnrollBody)
      expect(await c.listAgents()).toEqual([a.id])
      expect((await c.getAgent(a.id))?.operational_state).toBe(1)
      expect(Object.keys(await c.bulkInfo('default'))).toEqual([a.id])
      await c.stopAgent(a.id)
      expect((await c.getAgent(a.id))?.operational_state).toBe(10)
      expect(await c.deleteAgent(a.id)).toBe('deleted')
      expect(await c.getAgent(a.id)).toBeNull()
      expect(await c.deleteAgent(a.id)).toBe('not-found')
      await c.putMbPolicy('m', '{}')
      expect(await c.listMbPolicies()).toEqual(['m'])
      expect(await c.deleteMbPolicy('m')).toBe(true)
      expect(await c.getRuntimePolicy('none')).toBeNull()
    } finally {
      await c.close()
      await app.close()
    }
  })
})
