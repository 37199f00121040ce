import { generateKeyPairSync } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type SimFleet, startSimFleet } from '../../../bench/fleet-agents.ts'
import { signDsseEnvelope } from '../../../src/evidence/ima/index.ts'
import { runtimePolicyB64, runtimePolicyJson } from '../../helpers/runtime-policy.ts'
import { ADMIN, enrollBody, makeVerifier } from '../../unit/verifier/harness.ts'

let fleet: SimFleet
let v: Awaited<ReturnType<typeof makeVerifier>>

beforeAll(async () => {
  fleet = await startSimFleet({ count: 3, shareKeys: true })
  // the loop is not started: these tests look at the API only
  v = await makeVerifier({ enableAgentMtls: true })
})
afterAll(async () => {
  await v.app.close()
  await fleet.close()
})

const agent = (i: number) => fleet.agents[i] as NonNullable<SimFleet['agents'][number]>
const body = (i: number, extra: Record<string, unknown> = {}) =>
  enrollBody(agent(i), fleet.port, {
    mtls_cert: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----',
    ...extra,
  })

/** A request with the admin's credentials (the harness's admin header). */
const asAdmin = (method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, payload?: object | string) =>
  v.app.inject({ method, url, headers: ADMIN, ...(payload === undefined ? {} : { payload }) })

describe('verifier API: public routes', () => {
  it('GET /version and /versions answer without a client certificate', async () => {
    for (const url of ['/version', '/versions']) {
      const res = await v.app.inject({ method: 'GET', url })
      expect(res.statusCode).toBe(200)
      expect(res.json().results).toEqual({
        current_version: '2.6',
        supported_versions: ['1.0', '2.0', '2.1', '2.2', '2.3', '2.4', '2.5', '2.6', '3.0'],
      })
    }
  })
  it('a known path with another method is 405 with an empty body', async () => {
    for (const [method, url] of [
      ['DELETE', '/v2.6/agents'],
      ['POST', '/v2.6/verify/identity'],
      ['PATCH', '/v2.6/agents/x'],
    ] as const) {
      const res = await v.app.inject({ method, url, headers: ADMIN })
      expect(res.statusCode, `${method} ${url}`).toBe(405)
      expect(res.body).toBe('')
    }
  })
  it('echoes a sanitised X-Request-ID', async () => {
    const res = await v.app.inject({
      method: 'GET',
      url: '/version',
      headers: { 'x-request-id': 'ab-c<d>e;1' },
    })
    expect(res.headers['x-request-id']).toBe('abcde1')
  })
  it('unknown versions and paths are 404 with an empty body; /v2.x/ is 405', async () => {
    const res = await asAdmin('GET', '/v2.9/agents')
    expect(res.statusCode).toBe(404)
    expect(res.body).toBe('')
    const root = await v.app.inject({ method: 'GET', url: '/v2.1/' })
    expect(root.statusCode).toBe(405)
    expect(root.json().status).toBe('Not Implemented: Use /agents/ interface instead')
  })
})

describe('verifier API: admin routes refuse anonymous callers', () => {
  const routes: [string, string][] = [
    ['POST', '/v2.6/agents/x'],
    ['GET', '/v2.6/agents/x'],
    ['GET', '/v2.6/agents'],
    ['DELETE', '/v2.6/agents/x'],
    ['PUT', '/v2.6/agents/x/reactivate'],
    ['PUT', '/v2.6/agents/x/stop'],
    ['GET', '/v2.6/allowlists'],
    ['GET', '/v2.6/allowlists/p'],
    ['POST', '/v2.6/allowlists/p'],
    ['PUT', '/v2.6/allowlists/p'],
    ['DELETE', '/v2.6/allowlists/p'],
    ['GET', '/v2.6/mbpolicies'],
    ['POST', '/v2.6/mbpolicies/p'],
    ['DELETE', '/v2.6/mbpolicies/p'],
  ]
  it.each(routes)('%s %s -> 403', async (method, url) => {
    const res = await v.app.inject({
      method: method as 'GET',
      url,
      payload: method === 'GET' || method === 'DELETE' ? undefined : {},
    })
    expect(res.statusCode).toBe(403)
    expect(res.json().errors[0].title).toBe('Forbidden')
  })
})

describe('verifier API: agents', () => {
  it('enrolls, shows, lists and bulk-lists an agent', async () => {
    const add = await asAdmin('POST', `/v2.6/agents/${agent(0).id}`, body(0))
    expect(add.statusCode, add.body).toBe(200)
    const show = await asAdmin('GET', `/v2.1/agents/${agent(0).id}/`)
    expect(show.statusCode).toBe(200)
    const r = show.json().results
    expect(r).toMatchObject({
      operational_state: 1,
      ip: agent(0).ip,
      port: fleet.port,
      has_runtime_policy: 0,
      has_mb_refstate: 0,
      verifier_id: 'default',
      attestation_count: 0,
      attestation_status: 'PENDING',
      attestation_period: '0s',
      accept_tpm_hash_algs: ['sha512', 'sha384', 'sha256'],
    })
    expect(r.v).toBe(Buffer.alloc(32, 7).toString('base64'))
    const list = await asAdmin('GET', '/v2.6/agents')
    expect(list.json().results).toEqual({ uuids: [[agent(0).id]] })
    const bulk = await asAdmin('GET', '/v2.6/agents?bulk=1&verifier=default')
    expect(Object.keys(bulk.json().results)).toEqual([agent(0).id])
    const none = await asAdmin('GET', '/v2.6/agents?verifier=other')
    expect(none.json().results).toEqual({ uuids: [] })
    // upstream's tenant always sends `verifier=`: an empty filter means all agents
    const empty = await asAdmin('GET', '/v2.6/agents/?verifier=')
    expect(empty.json().results).toEqual({ uuids: [[agent(0).id]] })
  })

  it('refuses a second enrollment with 409, reading a JSON body sent without Content-Type as upstream tenant does', async () => {
    const res = await asAdmin('POST', `/v2.6/agents/${agent(0).id}`, JSON.stringify(body(0)))
    expect(res.statusCode, res.body).toBe(409)
  })

  it('names the missing key like upstream and validates the body', async () => {
    const { ak_tpm: _drop, ...noAk } = body(1)
    const res = await asAdmin('POST', `/v2.6/agents/${agent(1).id}`, noAk)
    expect(res.statusCode).toBe(400)
    expect(res.json().status).toBe("Exception error: 'ak_tpm'")
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ mtls_cert: null }, /mTLS certificate for agent is required!/],
      [{ ima_sign_verification_keys: 'not json' }, /ima_sign_verification_keys/],
      [{ tpm_policy: '{"99": ["00"]}' }, /PCR/],
      [{ ak_tpm: 'AAAA' }, /ak_tpm/],
      [{ v: 'AAAA' }, /v must be/],
      [
        { runtime_policy: Buffer.from('{"digests": {"/bin/sh": 5}}').toString('base64') },
        /^Runtime policy is malformatted/,
      ],
      [{ runtime_policy: Buffer.from('[1').toString('base64') }, /^Runtime policy is malformatted/],
      [{ mb_policy: '{"scrtm_and_bios": 7' }, /^Measured boot policy is malformatted/],
    ]
    for (const [extra, msg] of cases) {
      const r = await asAdmin('POST', `/v2.6/agents/${agent(1).id}`, body(1, extra))
      expect(r.statusCode, JSON.stringify(extra)).toBe(400)
      expect(r.json().status).toMatch(msg)
    }
    for (const [extra, msg] of [
      [{ runtime_policy_name: 'nope' }, /Runtime policy nope not found/],
      [{ mb_policy_name: 'nope' }, /Measured boot policy nope not found/],
    ] as const) {
      const r = await asAdmin('POST', `/v2.6/agents/${agent(1).id}`, body(1, extra))
      expect(r.statusCode).toBe(404)
      expect(r.json().status).toMatch(msg)
    }
    const bad = await asAdmin('POST', '/v2.6/agents/bad%20id', body(1))
    expect(bad.statusCode).toBe(400)
    expect(bad.json().status).toBe('agent_id not not valid')
    const notJson = await v.app.inject({
      method: 'POST',
      url: `/v2.6/agents/${agent(1).id}`,
      headers: { ...ADMIN, 'content-type': 'application/json' },
      payload: '{nope',
    })
    expect(notJson.statusCode).toBe(400)
  })

  it('stop, reactivate and delete', async () => {
    const id = agent(0).id
    expect((await asAdmin('PUT', `/v2.6/agents/${id}/stop`)).statusCode).toBe(200)
    const show = await asAdmin('GET', `/v2.6/agents/${id}`)
    expect(show.json().results).toMatchObject({ operational_state: 10, attestation_status: 'FAIL' })
    expect((await asAdmin('PUT', `/v2.6/agents/${id}/reactivate`)).statusCode).toBe(200)
    const again = await asAdmin('GET', `/v2.6/agents/${id}`)
    expect(again.json().results.operational_state).toBe(1)
    expect((await asAdmin('PUT', '/v2.6/agents/nobody/reactivate')).statusCode).toBe(400)
    expect((await asAdmin('DELETE', `/v2.6/agents/${id}`)).statusCode).toBe(200)
    expect((await asAdmin('GET', `/v2.6/agents/${id}`)).statusCode).toBe(404)
    expect((await asAdmin('DELETE', `/v2.6/agents/${id}`)).statusCode).toBe(404)
  })

  it('deleting an agent held by another live verifier sets TERMINATED and answers 202', async () => {
    const id = agent(2).id
    await asAdmin('POST', `/v2.6/agents/${id}`, body(2))
    await v.service.repo.db
      .insertInto('verifier_holders')
      .values({ holder: 'someone-else', expires: Date.now() + 60_000 })
      .execute()
    await v.service.repo.db
      .updateTable('verifiermain')
      .set({ lease_holder: 'someone-else', operational_state: 3 })
      .where('agent_id', '=', id)
      .execute()
    const res = await asAdmin('DELETE', `/v2.6/agents/${id}`)
    expect(res.statusCode).toBe(202)
    expect((await v.service.repo.getAgent(id))?.operational_state).toBe(8)
  })
})

describe('verifier API: runtime and measured-boot policies', () => {
  const policy = runtimePolicyB64({ '/bin/sh': ['a'.repeat(64)] })
  it('allowlists CRUD with upstream codes', async () => {
    const post = await asAdmin('POST', '/v2.6/allowlists/p1', { runtime_policy: policy })
    expect(post.statusCode).toBe(201)
    expect((await asAdmin('POST', '/v2.6/allowlists/p1', { runtime_policy: policy })).statusCode).toBe(409)
    const list = await asAdmin('GET', '/v2.6/allowlists')
    expect(list.json().results).toEqual({ 'runtimepolicy names': ['p1'] })
    const show = await asAdmin('GET', '/v2.6/allowlists/p1')
    expect(show.json().results).toMatchObject({ name: 'p1', tmp_policy: null })
    expect(JSON.parse(show.json().results.runtime_policy).digests['/bin/sh']).toEqual(['a'.repeat(64)])
    expect((await asAdmin('PUT', '/v2.6/allowlists/nope', { runtime_policy: policy })).statusCode).toBe(404)
    expect((await asAdmin('PUT', '/v2.6/allowlists/p1', { runtime_policy: policy })).statusCode).toBe(201)
    const bad = await asAdmin('POST', '/v2.6/allowlists/p2', {
      runtime_policy: Buffer.from('[1').toString('base64'),
    })
    expect(bad.statusCode).toBe(400)
    expect(bad.json().status).toMatch(/^Runtime policy is malformatted/)
    const del = await asAdmin('DELETE', '/v2.6/allowlists/p1')
    expect(del.statusCode).toBe(204)
    expect(del.body).toBe('')
    expect((await asAdmin('DELETE', '/v2.6/allowlists/p1')).statusCode).toBe(404)
  })
  it('mbpolicies CRUD (PUT on a missing one is 409 like upstream)', async () => {
    const mb = JSON.stringify({ scrtm: 'x' })
    expect((await asAdmin('POST', '/v2.6/mbpolicies/m1', { mb_policy: mb })).statusCode).toBe(201)
    expect((await asAdmin('POST', '/v2.6/mbpolicies/m1', { mb_policy: mb })).statusCode).toBe(409)
    expect((await asAdmin('PUT', '/v2.6/mbpolicies/m2', { mb_policy: mb })).statusCode).toBe(409)
    const list = await asAdmin('GET', '/v2.6/mbpolicies')
    expect(list.json().results).toEqual({ 'mbpolicy names': ['m1'] })
    const show = await asAdmin('GET', '/v2.6/mbpolicies/m1')
    expect(show.json().results).toEqual({ name: 'm1', mb_policy: mb })
    expect((await asAdmin('DELETE', '/v2.6/mbpolicies/m1')).statusCode).toBe(204)
  })
})

describe('verifier API: on-demand verification (public)', () => {
  it('verify/identity checks the stored AK and the nonce', async () => {
    const a = agent(1)
    await asAdmin('POST', `/v2.6/agents/${a.id}`, body(1))
    const quote = a.quoter.quote('nonce123', [16])
    const q = (nonce: string) =>
      `/v2.6/verify/identity?agent_uuid=${a.id}&quote=${encodeURIComponent(quote)}&nonce=${nonce}&hash_alg=sha256`
    const good = await v.app.inject({ method: 'GET', url: q('nonce123') })
    expect(good.json().results).toEqual({ valid: 1 })
    const replay = await v.app.inject({ method: 'GET', url: q('other') })
    expect(replay.json().results.valid).toBe(0)
    expect(replay.json().results.reason).toMatch(/nonce/)
    const missing = await v.app.inject({ method: 'GET', url: `/v2.6/verify/identity?agent_uuid=${a.id}` })
    expect(missing.statusCode).toBe(400)
    expect(missing.json().status).toBe("missing query parameter 'quote'")
    const unknown = await v.app.inject({ method: 'GET', url: q('x').replace(a.id, 'ghost') })
    expect(unknown.statusCode).toBe(404)
  })
  it('verify/evidence evaluates a tpm quote against a tpm_policy without state', async () => {
    const a = agent(1)
    const quote = a.quoter.quote('evnonce', [15])
    const pcr15 = (a.quoter.pcrs.get(15) as Buffer).toString('hex')
    const data = { quote, nonce: 'evnonce', hash_alg: 'sha256', tpm_ek: 'x', tpm_ak: a.quoter.akTpm }
    const pass = await v.app.inject({
      method: 'POST',
      url: '/v2.6/verify/evidence',
      payload: { type: 'tpm', data: { ...data, tpm_policy: JSON.stringify({ '15': [pcr15] }) } },
    })
    expect(pass.statusCode).toBe(200)
    expect(pass.json().results).toMatchObject({ valid: true, failures: [] })
    const fail = await v.app.inject({
      method: 'POST',
      url: '/v2.6/verify/evidence',
      payload: { type: 'tpm', data: { ...data, tpm_policy: JSON.stringify({ '15': ['00'] }) } },
    })
    expect(fail.json().results.valid).toBe(false)
    expect(fail.json().results.failures[0].type).toBe('pcr_validation.invalid_pcr_15')
    const missing = await v.app.inject({
      method: 'POST',
      url: '/v2.6/verify/evidence',
      payload: { type: 'tpm', data: { quote } },
    })
    expect(missing.statusCode).toBe(400)
    const badType = await v.app.inject({
      method: 'POST',
      url: '/v2.6/verify/evidence',
      payload: { type: 'zzz', data: {} },
    })
    expect(badType.statusCode).toBe(400)
    expect(badType.json().status).toBe('invalid evidence type')
  })
})

describe('verifier API: enrollment with policies', () => {
  const rt = (digest: string) => runtimePolicyB64({ '/usr/bin/x': [digest] })

  it('stores a policy given with the agent under its id and drops it with the agent; named ones survive', async () => {
    const a = agent(1)
    await asAdmin('DELETE', `/v2.6/agents/${a.id}`)
    const add = await asAdmin('POST', `/v2.6/agents/${a.id}`, body(1, { runtime_policy: rt('b'.repeat(64)) }))
    expect(add.statusCode, add.body).toBe(200)
    const show = await asAdmin('GET', `/v2.6/agents/${a.id}`)
    expect(show.json().results.has_runtime_policy).toBe(1)
    expect((await v.service.repo.getAllowlist(a.id))?.ima_policy).toContain('b'.repeat(64))
    await asAdmin('DELETE', `/v2.6/agents/${a.id}`)
    expect(await v.service.repo.getAllowlist(a.id)).toBeUndefined()

    const named = await asAdmin(
      'POST',
      `/v2.6/agents/${a.id}`,
      body(1, { runtime_policy: rt('c'.repeat(64)), runtime_policy_name: 'shared' }),
    )
    expect(named.statusCode).toBe(200)
    const inUse = await asAdmin('DELETE', '/v2.6/allowlists/shared')
    expect(inUse.statusCode).toBe(409)
    expect(inUse.json().status).toBe(`Can't delete allowlist as it's currently in use by agent ${a.id}`)
    await asAdmin('DELETE', `/v2.6/agents/${a.id}`)
    expect(await v.service.repo.getAllowlist('shared')).toBeDefined()
    const again = await asAdmin(
      'POST',
      `/v2.6/agents/${a.id}`,
      body(1, { runtime_policy: rt('d'.repeat(64)), runtime_policy_name: 'shared' }),
    )
    expect(again.statusCode).toBe(409)
    expect(await v.service.repo.getAgent(a.id)).toBeUndefined()
  })
})

describe('verifier API: DSSE-signed runtime policies', () => {
  const policyJson = runtimePolicyJson({ '/usr/bin/y': ['e'.repeat(64)] })
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const keyB64 = Buffer.from(publicKey.export({ type: 'spki', format: 'pem' }) as string).toString('base64')
  const signed = signDsseEnvelope(Buffer.from(policyJson), privateKey)
  const b64 = (x: unknown) => Buffer.from(JSON.stringify(x)).toString('base64')

  it('accepts a signed policy with its key and stores the payload; refuses a bad signature with 401', async () => {
    const ok = await asAdmin('POST', '/v2.6/allowlists/signed1', {
      runtime_policy: b64(signed),
      runtime_policy_key: keyB64,
    })
    expect(ok.statusCode, ok.body).toBe(201)
    expect((await v.service.repo.getAllowlist('signed1'))?.ima_policy).toBe(policyJson)
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey
    const bad = await asAdmin('POST', '/v2.6/allowlists/signed2', {
      runtime_policy: b64(signed),
      runtime_policy_key: Buffer.from(other.export({ type: 'spki', format: 'pem' }) as string).toString(
        'base64',
      ),
    })
    expect(bad.statusCode).toBe(401)
  })

  it('with require_allow_list_signatures an unsigned policy is refused', async () => {
    const strict = await makeVerifier({ requireAllowListSignatures: true })
    try {
      const res = await strict.app.inject({
        method: 'POST',
        url: '/v2.6/allowlists/p',
        headers: ADMIN,
        payload: { runtime_policy: Buffer.from(policyJson).toString('base64') },
      })
      expect(res.statusCode).toBe(401)
      expect(res.json().status).toMatch(/signature required/)
    } finally {
      await strict.app.close()
    }
  })
})
