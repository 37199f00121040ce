import { afterAll, describe, expect, it } from 'vitest'
import {
  type AgentServices,
  buildAgentApp,
  type IntegrityQuoteParams,
  parsePcrMask,
} from '../../../src/agent/app.ts'
import { AGENT_API_VERSIONS } from '../../../src/api/versions.ts'

// The HTTP layer alone: services record what the routes pass them (quotes against swtpm are in test/e2e).
const calls: IntegrityQuoteParams[] = []
const services: AgentServices = {
  info: () => ({
    agent_uuid: 'u',
    tpm_hash_alg: 'sha256',
    tpm_enc_alg: 'rsa',
    tpm_sign_alg: 'rsassa',
    ak_handle: 0x80000001,
  }),
  pubkeyPem: () => 'PEM',
  identityQuote: async (nonce) => ({
    quote: `r${nonce}`,
    hash_alg: 'sha256',
    enc_alg: 'rsa',
    sign_alg: 'rsassa',
    pubkey: 'PEM',
  }),
  integrityQuote: async (p) => {
    calls.push(p)
    return { quote: 'rX', hash_alg: 'sha256', enc_alg: 'rsa', sign_alg: 'rsassa' }
  },
  postUkey: async () => undefined,
  postVkey: async () => undefined,
  verify: (c) => (c === 'known' ? 'ab' : null),
  postRevocation: () => undefined,
}
const app = buildAgentApp({ services, apiVersions: [...AGENT_API_VERSIONS] })
afterAll(() => app.close())

const get = (url: string) => app.inject({ method: 'GET', url })

describe('agent routes', () => {
  it('serves /version and every 2.1-2.6 prefix, /agent/info only from 2.2', async () => {
    const v = await get('/version')
    expect(v.json()).toEqual({
      code: 200,
      status: 'Success',
      results: { supported_version: '2.6', supported_versions: ['2.1', '2.2', '2.3', '2.4', '2.5', '2.6'] },
    })
    for (const ver of AGENT_API_VERSIONS)
      expect((await get(`/v${ver}/keys/pubkey`)).json().results.pubkey).toBe('PEM')
    expect((await get('/v2.2/agent/info')).json().results.ak_handle).toBe(0x80000001)
    expect((await get('/v2.1/agent/info')).statusCode).toBe(400)
    expect((await get('/v2.6/keys/pubkey/')).statusCode).toBe(200)
  })

  it('answers unknown versions, paths and methods with upstream texts', async () => {
    const r = await get('/v2.9/keys/pubkey')
    expect(r.statusCode).toBe(400)
    expect(r.json()).toEqual({ code: 400, status: 'API version not supported: v2.9', results: {} })
    expect((await get('/v1.0/quotes/identity?nonce=a')).json().status).toBe('API version not supported: v1.0')
    const np = await get('/nothing')
    expect(np.statusCode).toBe(400)
    expect(np.json().status).toBe('Not Implemented: Use /v2.1, /v2.2, ... or /version interfaces')
    const del = await app.inject({ method: 'DELETE', url: '/v2.6/keys/pubkey' })
    expect(del.statusCode).toBe(405)
    expect(del.headers.allow).toBe('GET, POST')
    const wrong = await app.inject({ method: 'POST', url: '/v2.6/keys/pubkey', payload: {} })
    expect(wrong.statusCode).toBe(405)
    expect(wrong.headers.allow).toBe('GET')
  })

  it('validates quote parameters exactly as the spec', async () => {
    const bad = [
      '/v2.6/quotes/identity',
      '/v2.6/quotes/identity?nonce=',
      '/v2.6/quotes/identity?nonce=abc-def',
      `/v2.6/quotes/identity?nonce=${'a'.repeat(65)}`,
      '/v2.6/quotes/integrity?nonce=abc&mask=0x1&partial=2',
      '/v2.6/quotes/integrity?nonce=abc&mask=0x1',
      '/v2.6/quotes/integrity?nonce=abc&mask=zz&partial=0',
      '/v2.6/quotes/integrity?nonce=abc&mask=0x1000000&partial=0',
      '/v2.6/quotes/integrity?nonce=abc&partial=0',
      '/v2.6/quotes/integrity?nonce=a%20b&mask=0x1&partial=0',
    ]
    for (const url of bad) {
      const r = await get(url)
      expect(r.statusCode, url).toBe(400)
      expect(r.json().code, url).toBe(400)
      expect(r.json().results, url).toEqual({})
    }
    expect(calls).toHaveLength(0)
    expect((await get(`/v2.6/quotes/identity?nonce=${'a'.repeat(64)}`)).statusCode).toBe(200)
    expect(
      (await get('/v2.6/quotes/integrity?nonce=N1&mask=0x408401&partial=1&ima_ml_entry=7')).statusCode,
    ).toBe(200)
    expect((await get('/v2.3/quotes/integrity?nonce=N2&mask=ff&partial=0&ima_ml_entry=x')).statusCode).toBe(
      200,
    )
    expect(calls).toEqual([
      { nonce: 'N1', pcrs: [0, 10, 15, 22], partial: true, imaMlEntry: 7, apiVersion: '2.6' },
      { nonce: 'N2', pcrs: [0, 1, 2, 3, 4, 5, 6, 7], partial: false, imaMlEntry: 0, apiVersion: '2.3' },
    ])
  })

  it('validates key and revocation bodies; malformed JSON is a 400 envelope', async () => {
    const post = (url: string, payload: string) =>
      app.inject({ method: 'POST', url, payload, headers: { 'content-type': 'application/json' } })
    for (const [url, body] of [
      ['/v2.6/keys/ukey', '{"encrypted_key": 1, "auth_tag": "x"}'],
      ['/v2.6/keys/ukey', '{"encrypted_key": "a"}'],
      ['/v2.6/keys/vkey', '[]'],
      ['/v2.6/keys/vkey', '{not json'],
      ['/v2.6/notifications/revocation', '{"msg": {}}'],
    ] as const) {
      const r = await post(url, body)
      expect(r.statusCode, body).toBe(400)
      expect(r.json().code, body).toBe(400)
    }
    expect((await post('/v2.6/notifications/revocation', '{"msg":"{}","signature":""}')).statusCode).toBe(200)
    const big = await post('/v2.6/keys/vkey', JSON.stringify({ encrypted_key: 'a'.repeat(5 * 1024 * 1024) }))
    expect(big.statusCode).toBe(413)
    expect((await get('/v2.6/keys/verify?challenge=known')).json().results).toEqual({ hmac: 'ab' })
    expect((await get('/v2.6/keys/verify?challenge=other')).json().status).toBe(
      'Bootstrap key not yet available.',
    )
    expect((await get('/v2.6/keys/verify?challenge=')).statusCode).toBe(400)
  })

  it('parses PCR masks', () => {
    expect(parsePcrMask('0x1')).toEqual([0])
    expect(parsePcrMask('400')).toEqual([10])
    expect(parsePcrMask('0xFFFFFF')).toHaveLength(24)
    expect(parsePcrMask('0x')).toBeNull()
    expect(parsePcrMask('-1')).toBeNull()
  })
})
