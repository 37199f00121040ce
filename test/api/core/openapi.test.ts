/**
 * OpenAPI documents generated from the route schemas: each service serves `/openapi.json` without a client
 * certificate, and every route declares its schema (responses, path parameters, bodies), so a route added without
 * one fails here.
 */
import { Type } from '@sinclair/typebox'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { addVersionedRoute, createKeylimeServer } from '../../../src/api/server.ts'
import { startThreeServices, type TestedApp, type ThreeServices } from './three-services.ts'

let three: ThreeServices
beforeAll(async () => {
  three = await startThreeServices()
}, 60_000)
afterAll(() => three?.close())

/** What a route lacks; empty when its schema is complete. */
function schemaGaps(app: Pick<TestedApp, 'keylimeRouteTable'>): string[] {
  const gaps: string[] = []
  for (const r of app.keylimeRouteTable) {
    const s = r.schema as Record<string, unknown> | undefined
    const where = `${r.method} ${r.url}`
    if (!s) {
      gaps.push(`${where}: no schema`)
      continue
    }
    if (!s.response) gaps.push(`${where}: no response schema`)
    if (r.url.includes('/:') && !s.params) gaps.push(`${where}: no params schema`)
    if ((r.method === 'POST' || r.method === 'PUT') && !s.body) gaps.push(`${where}: no body schema`)
  }
  return gaps
}

const openapiPath = (url: string) => url.replace(/:(\w+)/g, '{$1}').replace(/\/$/, '') || '/'

describe('route schemas and OpenAPI documents', () => {
  it('the check finds a route registered without a schema', () => {
    const app = createKeylimeServer()
    addVersionedRoute(app, {
      method: 'POST',
      path: '/things/:id',
      schema: {},
      handler: async () => ({}),
    })
    addVersionedRoute(app, {
      method: 'GET',
      path: '/ok/:id',
      schema: { params: Type.Object({ id: Type.String() }), response: { 200: Type.Object({}) } },
      handler: async () => ({}),
    })
    expect(schemaGaps(app)).toContain('POST /v2.6/things/:id: no body schema')
    expect(schemaGaps(app).some((g) => g.includes('/ok/'))).toBe(false)
  })

  it.each(['registrar', 'verifier', 'agent'] as const)('%s: every route declares its schemas', (name) => {
    const s = three.services.find((x) => x.name === name)
    if (!s) throw new Error(name)
    expect(s.app.keylimeRouteTable.length).toBeGreaterThan(5)
    expect(schemaGaps(s.app)).toEqual([])
  })

  it.each(['registrar', 'verifier', 'agent'] as const)(
    '%s: serves an OpenAPI 3 document without a client certificate, listing every route of the newest version',
    async (name) => {
      const s = three.services.find((x) => x.name === name)
      if (!s) throw new Error(name)
      // inject has no TLS: an admin check would refuse it
      const r = await s.app.inject({ method: 'GET', url: '/openapi.json' })
      expect(r.statusCode).toBe(200)
      const doc = r.json() as { openapi: string; paths: Record<string, Record<string, unknown>> }
      expect(doc.openapi).toMatch(/^3\./)
      const documented = s.app.keylimeRouteTable.filter(
        (t) => !/^\/v\d/.test(t.url) || /^\/v(2\.6|3\.0)(\/|$)/.test(t.url),
      )
      expect(documented.length).toBeGreaterThan(3)
      for (const t of documented) {
        const ops = doc.paths[openapiPath(t.url)]
        if (t.url === '/v2.6' || t.url === '/v3.0') continue
        expect(ops, `${t.method} ${t.url}`).toBeDefined()
        expect(ops?.[t.method.toLowerCase()], `${t.method} ${t.url}`).toBeDefined()
      }
      // older prefixes serve the same routes and are not listed again
      expect(Object.keys(doc.paths).some((p) => /^\/v2\.[0-5]\//.test(p))).toBe(false)
    },
  )

  it('an enrolment body in the verifier document names the fields and says that accept lists may be one string', async () => {
    const v = three.services.find((x) => x.name === 'verifier')
    const doc = (await v?.app.inject({ method: 'GET', url: '/openapi.json' }))?.json()
    const body = doc.paths['/v2.6/agents/{agent_id}'].post.requestBody.content['application/json'].schema
    expect(body.required).toContain('ak_tpm')
    expect(JSON.stringify(body.properties.accept_tpm_hash_algs)).toMatch(/one-element list/)
    const param = doc.paths['/v2.6/agents/{agent_id}'].post.parameters[0]
    expect(param).toMatchObject({ name: 'agent_id', in: 'path', required: true })
    expect(param.schema.maxLength).toBe(80)
  })
})
