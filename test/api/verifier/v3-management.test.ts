/**
 * The v3 management routes (keylime-api.md §4.3) with JSON:API bodies: each route, its JSON:API errors, bad input
 * as 4xx with `source.pointer`, the same checks as v2, and the admin check (with real mTLS at the end).
 */
import { createHash } from 'node:crypto'
import { request as httpsRequest } from 'node:https'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type SimFleet, startSimFleet } from '../../../bench/fleet-agents.ts'
import { SoftQuoter } from '../../../bench/fleet-quoter.ts'
import { boundPort } from '../../../src/api/server.ts'
import { emptyRuntimePolicy, formatImaNgEntry } from '../../../src/evidence/ima/index.ts'
import { buildVerifierApp } from '../../../src/verifier/app.ts'
import { ADMIN, capturingLog, enrollBody, makeVerifier } from '../../unit/verifier/harness.ts'
import { makeTestPki } from '../registrar/tls-material.ts'

let fleet: SimFleet
let v: Awaited<ReturnType<typeof makeVerifier>>
const captured = capturingLog()

beforeAll(async () => {
  fleet = await startSimFleet({ count: 2, shareKeys: true })
  // the loop is not started: these tests look at the API only
  v = await makeVerifier({}, undefined, undefined, captured.log)
})
afterAll(async () => {
  await v.app.close()
  await fleet.close()
})

const agent = (i: number) => fleet.agents[i] as NonNullable<SimFleet['agents'][number]>
const JSON_API = 'application/vnd.api+json'

function call(method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, payload?: unknown) {
  return v.app.inject({
    method,
    url,
    headers: { ...ADMIN, 'content-type': JSON_API },
    ...(payload === undefined ? {} : { payload: payload as object }),
  })
}

const agentDoc = (id: string | undefined, attributes: Record<string, unknown>) => ({
  data: { type: 'agent', ...(id === undefined ? {} : { id }), attributes },
})
const b64 = (s: string) => Buffer.from(s).toString('base64')
const policyText = (path: string) => {
  const p = emptyRuntimePolicy()
  p.digests[path] = ['a'.repeat(64)]
  return JSON.stringify(p)
}

/** Every JSON:API error answer has the media type and one error object with status and code. */
function expectError(
  res: Awaited<ReturnType<typeof call>>,
  status: number,
  code: string,
  source?: Record<string, string>,
) {
  expect(res.statusCode, res.body).toBe(status)
  expect(res.headers['content-type']).toContain(JSON_API)
  const err = res.json().errors[0]
  expect(err).toMatchObject({ status: String(status), code })
  expect(typeof err.detail).toBe('string')
  if (source) expect(err.source).toEqual(source)
  return err as { detail: string }
}

describe('v3 agents', () => {
  it('POST /v3/agents enrols with the v2 fields as attributes: 201, Location, the status resource', async () => {
    const res = await call('POST', '/v3/agents', agentDoc('v3-a0', enrollBody(agent(0), fleet.port)))
    expect(res.statusCode, res.body).toBe(201)
    expect(res.headers['content-type']).toContain(JSON_API)
    expect(res.headers.location).toBe('/v3/agents/v3-a0')
    const data = res.json().data
    expect(data).toMatchObject({ type: 'agent', id: 'v3-a0', links: { self: '/v3/agents/v3-a0' } })
    expect(data.attributes).toMatchObject({
      operational_state: 1,
      ip: agent(0).ip,
      port: fleet.port,
      has_runtime_policy: 0,
      verifier_id: 'default',
    })
    // the same agent as the v2 API sees it
    const v2 = await v.app.inject({ method: 'GET', url: '/v2.6/agents/v3-a0', headers: ADMIN })
    expect(v2.json().results.ip).toBe(agent(0).ip)
    const line = captured.lines.find((l) => l.audit === 'agent.enrol' && l.agentId === 'v3-a0')
    expect(line).toBeDefined()
  })

  it('takes the id from attributes.agent_id, and refuses a duplicate with 409 conflict', async () => {
    const body = { ...enrollBody(agent(1), fleet.port), agent_id: 'v3-a1' }
    expect((await call('POST', '/v3.0/agents', agentDoc(undefined, body))).statusCode).toBe(201)
    const again = await call('POST', '/v3/agents', agentDoc('v3-a1', enrollBody(agent(1), fleet.port)))
    expect(expectError(again, 409, 'conflict').detail).toBe('Agent of uuid v3-a1 already exists')
  })

  it('refuses bad enrolment input with 4xx naming the member', async () => {
    const base = enrollBody(agent(1), fleet.port)
    expectError(await call('POST', '/v3/agents', agentDoc(undefined, base)), 422, 'invalid_resource_data', {
      pointer: '/data/id',
    })
    expectError(
      await call('POST', '/v3/agents', agentDoc('x', { ...base, agent_id: 'y' })),
      422,
      'invalid_resource_data',
      { pointer: '/data/attributes/agent_id' },
    )
    const { ak_tpm: _, ...noAk } = base
    expectError(await call('POST', '/v3/agents', agentDoc('x', noAk)), 422, 'invalid_resource_data', {
      pointer: '/data/attributes/ak_tpm',
    })
    expectError(
      await call('POST', '/v3/agents', agentDoc('x', { ...base, tpm_policy: 15 })),
      422,
      'invalid_resource_data',
      { pointer: '/data/attributes/tpm_policy' },
    )
    expectError(
      await call('POST', '/v3/agents', { data: { type: 'session', id: 'x', attributes: base } }),
      422,
      'invalid_resource_data',
      { pointer: '/data/type' },
    )
    expectError(await call('POST', '/v3/agents', base), 400, 'bad_request', { pointer: '/data' })
    expectError(await call('POST', '/v3/agents', agentDoc('../x', base)), 422, 'invalid_resource_data', {
      pointer: '/data/id',
    })
    // checks beyond the schema are the enrolment's own (v2's texts)
    const named = await call('POST', '/v3/agents', agentDoc('x', { ...base, runtime_policy_name: 'nope' }))
    expect(named.statusCode).toBe(404)
    expect(named.json().errors[0].code).toBe('not_found')
    const badJson = await v.app.inject({
      method: 'POST',
      url: '/v3/agents',
      headers: { ...ADMIN, 'content-type': JSON_API },
      payload: '{"data": ',
    })
    expectError(badJson, 400, 'bad_request')
    expect((await call('GET', '/v3/agents/x')).statusCode).toBe(404)
  })

  it('GET /v3/agents lists resources; GET one links under the version asked', async () => {
    const list = await call('GET', '/v3/agents')
    expect(list.statusCode).toBe(200)
    const ids = list.json().data.map((d: { id: string }) => d.id)
    expect(ids).toEqual(expect.arrayContaining(['v3-a0', 'v3-a1']))
    const mine = await call('GET', '/v3/agents?filter[verifier]=default')
    expect(mine.json().data.map((d: { id: string }) => d.id)).toEqual(ids)
    expect((await call('GET', '/v3/agents?filter[verifier]=other')).json().data).toEqual([])
    const one = await call('GET', '/v3.0/agents/v3-a1')
    expect(one.json().data.links.self).toBe('/v3.0/agents/v3-a1')
    expect(one.json().data.attributes.ip).toBe(agent(1).ip)
    expectError(await call('GET', '/v3/agents/nobody'), 404, 'not_found')
    expectError(await call('GET', '/v3/agents/a%20b'), 400, 'bad_request', { parameter: 'agent_id' })
  })

  it('GET one with a bearer token is 401 in pull mode: there are no push sessions, and the token is never ignored', async () => {
    const res = await v.app.inject({
      method: 'GET',
      url: '/v3/agents/v3-a1',
      headers: { ...ADMIN, authorization: 'Bearer x.y' },
    })
    expectError(res, 401, 'unauthorized')
  })

  it('PATCH accept_attestations stops and restarts an agent', async () => {
    const stopped = await call('PATCH', '/v3/agents/v3-a1', agentDoc('v3-a1', { accept_attestations: false }))
    expect(stopped.statusCode, stopped.body).toBe(200)
    expect(stopped.json().data.attributes.operational_state).toBe(10)
    const restarted = await call(
      'PATCH',
      '/v3/agents/v3-a1',
      agentDoc(undefined, { accept_attestations: true }),
    )
    expect(restarted.json().data.attributes.operational_state).toBe(1)
    expectError(
      await call('PATCH', '/v3/agents/v3-a1', agentDoc('other', { accept_attestations: true })),
      409,
      'conflict',
      { pointer: '/data/id' },
    )
    expectError(
      await call('PATCH', '/v3/agents/v3-a1', agentDoc(undefined, { accept_attestations: 'yes' })),
      422,
      'invalid_resource_data',
      { pointer: '/data/attributes/accept_attestations' },
    )
    expectError(
      await call('PATCH', '/v3/agents/v3-a1', agentDoc(undefined, { ip: '10.0.0.1' })),
      422,
      'invalid_resource_data',
    )
    expectError(
      await call('PATCH', '/v3/agents/nobody', agentDoc(undefined, { accept_attestations: true })),
      404,
      'not_found',
    )
  })

  it('DELETE answers 204 and the agent is gone; a second DELETE is 404', async () => {
    const res = await call('DELETE', '/v3/agents/v3-a1')
    expect(res.statusCode).toBe(204)
    expect(res.body).toBe('')
    expect((await call('GET', '/v3/agents/v3-a1')).statusCode).toBe(404)
    expectError(await call('DELETE', '/v3/agents/v3-a1'), 404, 'not_found')
  })
})

describe('v3 IMA policies', () => {
  it('create, read, list, replace, delete', async () => {
    const created = await call('POST', '/v3/policies/ima', {
      data: { type: 'ima_policy', id: 'p1', attributes: { runtime_policy: b64(policyText('/bin/a')) } },
    })
    expect(created.statusCode, created.body).toBe(201)
    expect(created.headers.location).toBe('/v3/policies/ima/p1')
    expect(created.json().data.attributes).toMatchObject({
      name: 'p1',
      runtime_policy: policyText('/bin/a'),
      checksum: createHash('sha256').update(policyText('/bin/a')).digest('hex'),
    })
    const list = await call('GET', '/v3/policies/ima')
    expect(list.json().data).toEqual([
      { type: 'ima_policy', id: 'p1', attributes: { name: 'p1' }, links: { self: '/v3/policies/ima/p1' } },
    ])
    const patched = await call('PATCH', '/v3/policies/ima/p1', {
      data: { type: 'ima_policy', attributes: { runtime_policy: b64(policyText('/bin/b')) } },
    })
    expect(patched.statusCode).toBe(200)
    const shown = await call('GET', '/v3/policies/ima/p1')
    expect(shown.json().data.attributes.runtime_policy).toBe(policyText('/bin/b'))
    // the v2 API sees the same store
    const v2 = await v.app.inject({ method: 'GET', url: '/v2.6/allowlists/p1', headers: ADMIN })
    expect(v2.json().results.runtime_policy).toBe(policyText('/bin/b'))
    expect((await call('DELETE', '/v3/policies/ima/p1')).statusCode).toBe(204)
    expectError(await call('GET', '/v3/policies/ima/p1'), 404, 'not_found')
    // the same audit lines as the v2 routes write: action, policy and the stored checksum
    const digest = (text: string) => createHash('sha256').update(text).digest('hex')
    expect(captured.lines.filter((l) => l.policy === 'p1').map((l) => [l.audit, l.checksum])).toEqual([
      ['runtime_policy.add', digest(policyText('/bin/a'))],
      ['runtime_policy.update', digest(policyText('/bin/b'))],
      ['runtime_policy.delete', undefined],
    ])
  })

  it('refuses duplicates, missing policies, malformed ones and policies in use', async () => {
    const doc = (name: string, text: string) => ({
      data: { type: 'ima_policy', attributes: { name, runtime_policy: b64(text) } },
    })
    expect((await call('POST', '/v3/policies/ima', doc('p2', policyText('/x')))).statusCode).toBe(201)
    expectError(await call('POST', '/v3/policies/ima', doc('p2', policyText('/x'))), 409, 'conflict')
    const bad = expectError(
      await call('POST', '/v3/policies/ima', doc('p3', '{"digests": 5}')),
      400,
      'bad_request',
    )
    expect(bad.detail).toMatch(/^Runtime policy is malformatted/)
    expectError(
      await call('PATCH', '/v3/policies/ima/nope', {
        data: { type: 'ima_policy', attributes: { runtime_policy: b64(policyText('/x')) } },
      }),
      404,
      'not_found',
    )
    expectError(
      await call('POST', '/v3/policies/ima', { data: { type: 'ima_policy', id: 'p4', attributes: {} } }),
      422,
      'invalid_resource_data',
      { pointer: '/data/attributes/runtime_policy' },
    )
    // in use by an agent enrolled with it by name: 409, as v2
    const enrolled = await call(
      'POST',
      '/v3/agents',
      agentDoc('v3-user', enrollBody(agent(1), fleet.port, { runtime_policy_name: 'p2' })),
    )
    expect(enrolled.statusCode, enrolled.body).toBe(201)
    expect(enrolled.json().data.attributes.has_runtime_policy).toBe(1)
    const inUse = expectError(await call('DELETE', '/v3/policies/ima/p2'), 409, 'conflict')
    expect(inUse.detail).toBe("Can't delete allowlist as it's currently in use by agent v3-user")
    expect((await call('DELETE', '/v3/agents/v3-user')).statusCode).toBe(204)
    expect((await call('DELETE', '/v3/policies/ima/p2')).statusCode).toBe(204)
  })
})

describe('v3 UEFI reference states', () => {
  const mb = JSON.stringify({ scrtm: 'x' })
  it('create, read, list, replace, delete; PATCH of a missing one is 404', async () => {
    const created = await call('POST', '/v3/refstates/uefi', {
      data: { type: 'uefi_refstate', id: 'r1', attributes: { mb_policy: mb } },
    })
    expect(created.statusCode, created.body).toBe(201)
    expect(created.json().data).toMatchObject({ id: 'r1', attributes: { name: 'r1', mb_policy: mb } })
    expect((await call('GET', '/v3/refstates/uefi')).json().data.map((d: { id: string }) => d.id)).toEqual([
      'r1',
    ])
    const mb2 = JSON.stringify({ scrtm: 'y' })
    const patched = await call('PATCH', '/v3.0/refstates/uefi/r1', {
      data: { type: 'uefi_refstate', id: 'r1', attributes: { mb_policy: mb2 } },
    })
    expect(patched.json().data.attributes.mb_policy).toBe(mb2)
    expect((await call('GET', '/v3/refstates/uefi/r1')).json().data.links.self).toBe('/v3/refstates/uefi/r1')
    expectError(
      await call('PATCH', '/v3/refstates/uefi/nope', {
        data: { type: 'uefi_refstate', attributes: { mb_policy: mb2 } },
      }),
      404,
      'not_found',
    )
    expectError(
      await call('POST', '/v3/refstates/uefi', {
        data: { type: 'uefi_refstate', id: 'r1', attributes: { mb_policy: mb } },
      }),
      409,
      'conflict',
    )
    const bad = expectError(
      await call('POST', '/v3/refstates/uefi', {
        data: { type: 'uefi_refstate', id: 'r2', attributes: { mb_policy: '{"scrtm": ' } },
      }),
      400,
      'bad_request',
    )
    expect(bad.detail).toMatch(/^Measured boot policy is malformatted/)
    expect((await call('DELETE', '/v3/refstates/uefi/r1')).statusCode).toBe(204)
    expectError(await call('DELETE', '/v3/refstates/uefi/r1'), 404, 'not_found')
    // refused requests leave no audit line
    expect(captured.lines.filter((l) => l.policy === 'r1').map((l) => l.audit)).toEqual([
      'mb_policy.add',
      'mb_policy.update',
      'mb_policy.delete',
    ])
  })
})

describe('POST /v3/verify/evidence (public)', () => {
  const quoter = new SoftQuoter({ keyType: 'rsa' })
  const entry = formatImaNgEntry('/bin/ok', createHash('sha256').update('content').digest(), 'sha256')
  quoter.extendDigest(10, entry.templateDigests[quoter.hashAlg])
  const evidence = (path: string) => {
    const policy = emptyRuntimePolicy()
    policy.digests[path] = [createHash('sha256').update('content').digest('hex')]
    return {
      quote: quoter.quote('n3', [10]),
      nonce: 'n3',
      hash_alg: quoter.hashAlg,
      tpm_ek: 'unused',
      tpm_ak: quoter.akTpm,
      runtime_policy: JSON.stringify(policy),
      ima_measurement_list: `${entry.line}\n`,
    }
  }
  const post = (attributes: unknown) =>
    v.app.inject({
      method: 'POST',
      url: '/v3/verify/evidence',
      headers: { 'content-type': JSON_API },
      payload: { data: { type: 'evidence', attributes } } as object,
    })

  it('verifies evidence without a client certificate, through the same pipeline as v2', async () => {
    const pass = await post({ evidence_type: 'tpm', evidence: evidence('/bin/ok') })
    expect(pass.statusCode, pass.body).toBe(200)
    expect(pass.json().data).toMatchObject({
      type: 'evidence_verification',
      attributes: { valid: true, failures: [] },
    })
    const fail = await post({ evidence_type: 'tpm', evidence: evidence('/bin/other') })
    expect(fail.json().data.attributes.valid).toBe(false)
    expect(fail.json().data.attributes.failures[0].type).toBe('ima.validation.ima-ng.not_in_allowlist')
  })

  it('names missing parameters, unknown evidence types and malformed documents', async () => {
    const missing = await post({ evidence_type: 'tpm', evidence: { nonce: 'x' } })
    expect(missing.statusCode).toBe(400)
    const codes = missing.json().errors.map((e: { code: string }) => e.code)
    expect(codes).toContain('qoute_validation.missing_param')
    expect(codes).toContain('default.missing_policy')
    const tee = await post({ evidence_type: 'tee', evidence: {} })
    expect(tee.statusCode).toBe(400)
    expect(tee.json().errors[0].detail).toBe('invalid evidence type')
    const noType = await post({ evidence: {} })
    expect(noType.statusCode).toBe(422)
    expect(noType.json().errors[0].source).toEqual({ pointer: '/data/attributes/evidence_type' })
  })
})

describe('v3 admin routes refuse callers without an admin certificate', () => {
  const routes: [string, string][] = [
    ['GET', '/v3/agents'],
    ['POST', '/v3/agents'],
    ['GET', '/v3/agents/x'],
    ['PATCH', '/v3/agents/x'],
    ['DELETE', '/v3/agents/x'],
    ['GET', '/v3/policies/ima'],
    ['POST', '/v3/policies/ima'],
    ['GET', '/v3/policies/ima/p'],
    ['PATCH', '/v3/policies/ima/p'],
    ['DELETE', '/v3/policies/ima/p'],
    ['GET', '/v3/refstates/uefi'],
    ['POST', '/v3/refstates/uefi'],
    ['GET', '/v3.0/refstates/uefi/r'],
    ['PATCH', '/v3/refstates/uefi/r'],
    ['DELETE', '/v3/refstates/uefi/r'],
  ]
  it.each(routes)('%s %s is 403 before the body is read', async (method, url) => {
    const res = await v.app.inject({
      method: method as 'GET',
      url,
      payload: method === 'GET' ? undefined : '{',
    })
    expect(res.statusCode).toBe(403)
    expect(res.json().errors[0]).toMatchObject({ status: '403', title: 'Forbidden' })
  })

  it('over real TLS: no client certificate is refused, the trusted one is admitted', async () => {
    const pki = makeTestPki()
    const app = await buildVerifierApp({
      service: v.service,
      https: {
        cert: pki.serverCert,
        key: pki.serverKey,
        ca: [pki.caCert],
        requestCert: true,
        rejectUnauthorized: false,
        minVersion: 'TLSv1.2',
      },
    })
    await app.listen({ host: '127.0.0.1', port: 0 })
    const get = (withCert: boolean, foreign = false) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = httpsRequest(
          {
            host: '127.0.0.1',
            port: boundPort(app),
            path: '/v3/policies/ima',
            ca: pki.caCert,
            checkServerIdentity: () => undefined,
            agent: false,
            ...(withCert
              ? foreign
                ? { cert: pki.foreignClientCert, key: pki.foreignClientKey }
                : { cert: pki.clientCert, key: pki.clientKey }
              : {}),
          },
          (res) => {
            let body = ''
            res.on('data', (c: Buffer) => {
              body += c.toString()
            })
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
          },
        )
        req.on('error', reject)
        req.end()
      })
    try {
      const anonymous = await get(false)
      expect(anonymous.status).toBe(403)
      expect(JSON.parse(anonymous.body).errors[0].title).toBe('Forbidden')
      expect((await get(true, true)).status).toBe(403)
      const admin = await get(true)
      expect(admin.status).toBe(200)
      expect(Array.isArray(JSON.parse(admin.body).data)).toBe(true)
    } finally {
      await app.close()
    }
  })
})
