/**
 * Every route of the registrar, the verifier and the agent, taken from the apps' own route tables (a new route is
 * covered without editing this file), requested over real sockets with: a body of the wrong type, an agent id or
 * policy name of `..` (raw, percent-encoded, with a trailing slash) and 1,000 characters, and a 10 MB body. Each
 * answer must be a 4xx in the Keylime envelope (a JSON:API error document on the verifier's v3 routes), and no hostile request may reach the agent's services.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { RawResponse, ServiceUnderTest, ThreeServices } from './three-services.ts'
import { startThreeServices } from './three-services.ts'

let three: ThreeServices
beforeAll(async () => {
  three = await startThreeServices()
}, 60_000)
afterAll(() => three?.close())

interface Target {
  method: string
  url: string
  hasBody: boolean
  objectBody: boolean
}

/** One entry per route and method; every version prefix registers the same handler, so the newest is used. */
function targets(s: ServiceUnderTest): Target[] {
  const seen = new Map<string, Target>()
  for (const r of s.app.keylimeRouteTable) {
    const key = `${r.method} ${r.url.replace(/^\/v\d+(\.\d+)?(?=\/|$)/, '/vX')}`
    const body = r.schema?.body as { type?: string } | undefined
    const t = {
      method: r.method,
      url: r.url,
      hasBody: r.method === 'POST' || r.method === 'PUT' || r.method === 'PATCH',
      objectBody: body?.type === 'object',
    }
    const prev = seen.get(key)
    // keep the highest version of a path
    if (!prev || versionOf(prev.url) < versionOf(t.url)) seen.set(key, t)
  }
  return [...seen.values()]
}

const versionOf = (url: string) => Number(/^\/v(\d+(?:\.\d+)?)/.exec(url)?.[1] ?? 0)

/** A 4xx in the Keylime envelope; the verifier's v3 routes answer a JSON:API error document instead. */
function expectEnvelope4xx(r: RawResponse, what: string): void {
  expect(r.status, `${what}: ${r.body.slice(0, 200)}`).toBeGreaterThanOrEqual(400)
  expect(r.status, what).toBeLessThan(500)
  const body = JSON.parse(r.body) as Record<string, unknown>
  if (/^(GET|POST|PUT|PATCH|DELETE) \/v3[./]/.test(what) && Array.isArray(body.errors)) {
    expect(body.errors[0], what).toMatchObject({ status: String(r.status) })
    expect(typeof body.errors[0].detail, what).toBe('string')
    return
  }
  expect(body, what).toMatchObject({ code: r.status, results: {} })
  expect(typeof body.status, what).toBe('string')
}

const ID_PARAM = /:(agent_id|name)\b/
const HOSTILE_IDS = ['..', '%2e%2e', '..%2F', '.', 'a'.repeat(1000)]
const TEN_MB = Buffer.alloc(10_000_000, 0x7b) // '{' repeated: not JSON either

describe('hostile input on every route of every service', () => {
  it('the route tables are not empty (the apps registered their routes)', () => {
    const counts = three.services.map((s) => targets(s).length)
    expect(
      counts.every((n) => n >= 5),
      String(counts),
    ).toBe(true)
  })

  it.each(['registrar', 'verifier', 'agent'] as const)(
    '%s: wrong body types are 400 envelopes',
    async (name) => {
      const s = three.services.find((x) => x.name === name) as ServiceUnderTest
      const bodied = targets(s).filter((t) => t.objectBody)
      expect(bodied.length).toBeGreaterThan(0)
      for (const t of bodied) {
        const url = t.url.replace(ID_PARAM, 'valid-id')
        for (const body of ['[1,2]', '"text"', '42', 'null', '{"x":', '{"agent_id": 7, "encrypted_key": 1}'])
          expectEnvelope4xx(await s.send(t.method, url, body), `${t.method} ${url} ${body}`)
      }
    },
  )

  it.each(['registrar', 'verifier', 'agent'] as const)(
    '%s: ids of dots, encoded dots and 1,000 characters are 4xx envelopes',
    async (name) => {
      const s = three.services.find((x) => x.name === name) as ServiceUnderTest
      const withId = targets(s).filter((t) => ID_PARAM.test(t.url))
      if (name !== 'agent') expect(withId.length).toBeGreaterThan(0)
      for (const t of withId) {
        for (const id of HOSTILE_IDS) {
          for (const trailing of ['', '/']) {
            const url = t.url.replace(ID_PARAM, id) + trailing
            const r = await s.send(t.method, url, t.hasBody ? '{}' : undefined)
            expectEnvelope4xx(r, `${t.method} ${url.slice(0, 80)}`)
            // a dot-only id never reaches a handler: the schema refuses it
            expect(r.status, `${t.method} ${url.slice(0, 80)}`).toBe(400)
          }
        }
      }
      // the agent has no id in its paths; dot segments there are unknown paths, answered as upstream
      if (name === 'agent') {
        for (const path of ['/v2.6/keys/..', '/v2.6/%2e%2e/keys/pubkey', `/v2.6/${'a'.repeat(1000)}`])
          expectEnvelope4xx(await s.send('GET', path), path)
      }
    },
  )

  it.each(['registrar', 'verifier', 'agent'] as const)('%s: a 10 MB body is a 4xx envelope', async (name) => {
    const s = three.services.find((x) => x.name === name) as ServiceUnderTest
    for (const t of targets(s).filter((x) => x.hasBody)) {
      const url = t.url.replace(ID_PARAM, 'valid-id')
      expectEnvelope4xx(await s.send(t.method, url, TEN_MB), `${t.method} ${url} 10 MB`)
    }
  })

  it.each(['registrar', 'verifier', 'agent'] as const)(
    '%s: over-long paths are answered by the router (414) or node itself (431) in the envelope',
    async (name) => {
      const s = three.services.find((x) => x.name === name) as ServiceUnderTest
      const longParam = await s.send('GET', `/v2.6/agents/${'a'.repeat(3000)}`)
      expectEnvelope4xx(longParam, 'id of 3,000 characters')
      if (name !== 'agent') expect(longParam.status).toBe(414)
      const hugeUrl = await s.send('GET', `/v2.6/agents/${'a'.repeat(20_000)}`)
      expectEnvelope4xx(hugeUrl, 'URL of 20,000 characters')
      expect(hugeUrl.status).toBe(431)
    },
  )

  it('no hostile request reached the agent services', () => {
    expect(three.agentCalls()).toBe(0)
  })
})
