/**
 * Upstream also takes a single string where an accept list is expected (`"accept_tpm_hash_algs": "sha256"`). The
 * verifier stores it as the one-element list it means, and the agent then attests; before, the string was stored
 * as is and every quote of a healthy agent failed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type SimFleet, startSimFleet } from '../../../bench/fleet-agents.ts'
import { AgentState } from '../../../src/api/verifier/states.ts'
import { ADMIN, enrollBody, makeVerifier, waitFor } from '../../unit/verifier/harness.ts'

let fleet: SimFleet
let v: Awaited<ReturnType<typeof makeVerifier>>
beforeAll(async () => {
  fleet = await startSimFleet({ count: 1 })
  v = await makeVerifier()
  await v.service.start()
})
afterAll(async () => {
  await v.service.stop()
  await v.app.close()
  await fleet.close()
})

describe('accept lists sent as one string', () => {
  it('are stored as one-element lists and the agent passes attestation', async () => {
    const a = fleet.agents[0] as SimFleet['agents'][number]
    const add = await v.app.inject({
      method: 'POST',
      url: `/v2.6/agents/${a.id}`,
      headers: ADMIN,
      payload: enrollBody(a, fleet.port, {
        accept_tpm_hash_algs: 'sha256',
        accept_tpm_encryption_algs: 'rsa',
        accept_tpm_signing_algs: 'rsassa',
      }),
    })
    expect(add.statusCode, add.body).toBe(200)
    const row = await v.service.repo.getAgent(a.id)
    expect(JSON.parse(row?.accept_tpm_hash_algs ?? 'null')).toEqual(['sha256'])
    const show = await v.app.inject({ method: 'GET', url: `/v2.6/agents/${a.id}`, headers: ADMIN })
    expect(show.json().results).toMatchObject({
      accept_tpm_hash_algs: ['sha256'],
      accept_tpm_encryption_algs: ['rsa'],
      accept_tpm_signing_algs: ['rsassa'],
    })
    await waitFor(() => a.quotes >= 3, 10_000, 'three quotes')
    await v.service.loop.flush()
    const after = await v.service.repo.getAgent(a.id)
    expect(after?.operational_state).toBe(AgentState.GET_QUOTE)
    expect(after?.attestation_count).toBeGreaterThanOrEqual(2)
  })

  it('a list of the wrong type is refused with 400 naming the field', async () => {
    const a = fleet.agents[0] as SimFleet['agents'][number]
    const r = await v.app.inject({
      method: 'POST',
      url: '/v2.6/agents/other-agent',
      headers: ADMIN,
      payload: enrollBody(a, fleet.port, { accept_tpm_hash_algs: [1, 2] }),
    })
    expect(r.statusCode).toBe(400)
    expect(r.json().status).toMatch(/accept_tpm_hash_algs/)
  })
})
