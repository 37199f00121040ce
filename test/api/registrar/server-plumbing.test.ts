import { createServer } from 'node:net'
import { Type } from '@sinclair/typebox'
import { Kysely, PostgresDialect } from 'kysely'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { JsonClient, PeerError } from '../../../src/api/client.ts'
import { ok } from '../../../src/api/envelope.ts'
import {
  addRoute,
  addVersionedRoute,
  createKeylimeServer,
  databaseUnavailableReason,
  type KeylimeServerOptions,
  sanitizeRequestId,
  tlsServerOptions,
} from '../../../src/api/server.ts'
import { InputFormatError } from '../../../src/common/errors.ts'
import { openDatabase } from '../../../src/db/database.ts'
import { type RegistrarDatabase, RegistrarRepository } from '../../../src/db/registrar-repository.ts'
import { buildRegistrarApp } from '../../../src/registrar/app.ts'
import { RegistrarService } from '../../../src/registrar/registrar-service.ts'
import { softwareTpm } from './software-tpm.ts'
import { makeTestPki, type TestPki } from './tls-material.ts'

const Params = Type.Object({ id: Type.String() })

function buildApp(https?: KeylimeServerOptions['https']) {
  const app = createKeylimeServer({ bodyLimit: 1024, https: https ?? null })
  addRoute(app, {
    method: 'GET',
    url: '/version',
    schema: {},
    handler: async () => ok({ current_version: '2.6' }),
  })
  addVersionedRoute(app, {
    method: 'POST',
    path: '/things/:id',
    schema: { params: Params, body: Type.Object({ x: Type.Integer() }) },
    handler: async (req) => ok({ got: req.body }),
  })
  addVersionedRoute(app, {
    method: 'GET',
    path: '/things/:id',
    schema: { params: Params },
    handler: async () => {
      throw new InputFormatError('bad thing')
    },
  })
  addVersionedRoute(app, {
    method: 'DELETE',
    path: '/things/:id',
    schema: { params: Params },
    handler: async () => {
      throw new Error('secret internal detail')
    },
  })
  addVersionedRoute(app, {
    method: 'GET',
    path: '/admin',
    schema: {},
    admin: true,
    handler: async () => ok({ admin: true }),
  })
  return app
}

describe('createKeylimeServer (inject)', () => {
  const app = buildApp()
  afterAll(() => app.close())

  it('registers every /v2.x prefix and ignores a trailing slash', async () => {
    for (const p of ['/v2', '/v2.0', '/v2.3', '/v2.6']) {
      const r = await app.inject({ method: 'POST', url: `${p}/things/a/`, payload: { x: 1 } })
      expect(r.statusCode).toBe(200)
      expect(r.json()).toEqual({ code: 200, status: 'Success', results: { got: { x: 1 } } })
    }
  })

  it('answers unknown versions and paths 404 with an empty body, other methods 405 empty', async () => {
    for (const url of ['/v2.9/things/a', '/v1.0/things/a', '/nothing']) {
      const r = await app.inject({ method: 'GET', url })
      expect(r.statusCode).toBe(404)
      expect(r.body).toBe('')
    }
    const r = await app.inject({ method: 'PUT', url: '/v2.1/things/a' })
    expect(r.statusCode).toBe(405)
    expect(r.body).toBe('')
    expect(r.headers.allow).toContain('POST')
  })

  it('malformed JSON and oversized bodies are 4xx envelopes, never 500', async () => {
    const bad = await app.inject({
      method: 'POST',
      url: '/v2/things/a',
      payload: '{"x":',
      headers: { 'content-type': 'application/json' },
    })
    expect(bad.statusCode).toBe(400)
    expect(bad.json()).toMatchObject({ code: 400, results: {} })
    const big = await app.inject({ method: 'POST', url: '/v2/things/a', payload: { x: 'y'.repeat(5000) } })
    expect(big.statusCode).toBe(413)
    expect(big.json()).toMatchObject({ code: 413, results: {} })
    const noType = await app.inject({
      method: 'POST',
      url: '/v2/things/a',
      payload: '{"x":2}',
      headers: { 'content-type': 'text/plain' },
    })
    expect(noType.json().results).toEqual({ got: { x: 2 } })
  })

  it('maps KeylimeError.statusCode and hides 5xx details', async () => {
    const r = await app.inject({ method: 'GET', url: '/v2/things/a' })
    expect(r.statusCode).toBe(400)
    expect(r.json()).toEqual({ code: 400, status: 'bad thing', results: {} })
    const e = await app.inject({ method: 'DELETE', url: '/v2/things/a' })
    expect(e.statusCode).toBe(500)
    expect(e.body).not.toContain('secret')
  })

  it('echoes a sanitised X-Request-ID', async () => {
    const r = await app.inject({ method: 'GET', url: '/version', headers: { 'x-request-id': 'ab-c<d>' } })
    expect(r.headers['x-request-id']).toBe('abcd')
    expect(sanitizeRequestId('x'.repeat(50))).toHaveLength(36)
  })

  it('admin routes over plain HTTP answer 400 with an empty body', async () => {
    const r = await app.inject({ method: 'GET', url: '/v2/admin' })
    expect(r.statusCode).toBe(400)
    expect(r.body).toBe('')
  })
})

describe('TLS listener + JsonClient', () => {
  let pki: TestPki
  let app: ReturnType<typeof buildApp>
  let base: string
  beforeAll(async () => {
    pki = makeTestPki()
    app = buildApp(
      tlsServerOptions({ certPem: pki.serverCert, keyPem: pki.serverKey, trustedClientCaPems: [pki.caCert] }),
    )
    await app.listen({ host: '127.0.0.1', port: 0 })
    const addr = app.server.address()
    if (!addr || typeof addr === 'string') throw new Error('no address')
    base = `https://127.0.0.1:${addr.port}`
  })
  afterAll(() => app.close())

  it('admin: trusted client cert passes, none is 401, foreign CA is 403', async () => {
    const admin = new JsonClient({
      baseUrl: base,
      tls: { ca: pki.caCert, cert: pki.clientCert, key: pki.clientKey },
    })
    expect((await admin.request('GET', '/v2.6/admin')).results).toEqual({ admin: true })
    await admin.close()
    const anon = new JsonClient({ baseUrl: base, tls: { ca: pki.caCert } })
    const e401 = await anon.request('GET', '/v2/admin').catch((e: unknown) => e)
    expect(e401).toBeInstanceOf(PeerError)
    expect((e401 as PeerError).status).toBe(401)
    expect((e401 as PeerError).body).toMatchObject({ errors: [{ status: '401', title: 'Unauthorized' }] })
    expect((await anon.request('GET', '/version')).results).toEqual({ current_version: '2.6' })
    await anon.close()
    const foreign = new JsonClient({
      baseUrl: base,
      tls: { ca: pki.caCert, cert: pki.foreignClientCert, key: pki.foreignClientKey },
    })
    const e403 = await foreign.request('GET', '/v2/admin').catch((e: unknown) => e)
    expect((e403 as PeerError).status).toBe(403)
    await foreign.close()
  })

  it('client refuses a server outside its CA and decodes error envelopes', async () => {
    const wrongCa = new JsonClient({ baseUrl: base, tls: { ca: pki.foreignClientCert }, timeoutMs: 5000 })
    const err = await wrongCa.request('GET', '/version').catch((e: unknown) => e)
    expect(err).toBeInstanceOf(PeerError)
    expect((err as PeerError).status).toBeUndefined()
    await wrongCa.close()
    const wrongPin = new JsonClient({ baseUrl: base, tls: { pinnedServerCert: pki.clientCert } })
    const pinErr = await wrongPin.request('GET', '/version').catch((e: unknown) => e)
    expect(pinErr).toBeInstanceOf(PeerError)
    expect((pinErr as PeerError).message).toMatch(/pinned/)
    await wrongPin.close()
    const c = new JsonClient({ baseUrl: base, tls: { pinnedServerCert: pki.serverCert } })
    const e = await c.request('GET', '/v2/things/x').catch((x: unknown) => x)
    expect(e).toMatchObject({ status: 400, peerStatus: 'bad thing' })
    await c.close()
  })
})

describe('schema errors and an unreachable database', () => {
  it('a body of the wrong type is a 400 naming the field', async () => {
    const app = buildApp()
    const r = await app.inject({ method: 'POST', url: '/v2/things/a', payload: { x: 'seven' } })
    expect(r.statusCode).toBe(400)
    expect(r.json()).toEqual({
      code: 400,
      status: 'Malformed Request Parameter: body.x must be integer',
      results: {},
    })
    await app.close()
  })

  it('classifies database outages by code, including wrapped ones, and nothing else', () => {
    const err = (code: string) => Object.assign(new Error('x'), { code })
    expect(databaseUnavailableReason(err('ECONNREFUSED'))).toBe('ECONNREFUSED')
    expect(databaseUnavailableReason(err('SQLITE_IOERR_WRITE'))).toBe('SQLITE_IOERR_WRITE')
    expect(databaseUnavailableReason(err('57P01'))).toBe('57P01')
    expect(databaseUnavailableReason(new Error('wrapped', { cause: err('08006') }))).toBe('08006')
    expect(databaseUnavailableReason(new Error('Connection terminated unexpectedly'))).toBe('connection lost')
    expect(databaseUnavailableReason(err('PROTOCOL_CONNECTION_LOST'))).toBe('PROTOCOL_CONNECTION_LOST')
    expect(databaseUnavailableReason(err('ER_CON_COUNT_ERROR'))).toBe('ER_CON_COUNT_ERROR')
    expect(databaseUnavailableReason(err('ER_DUP_ENTRY'))).toBeNull()
    expect(databaseUnavailableReason(err('SQLITE_CONSTRAINT_PRIMARYKEY'))).toBeNull()
    expect(databaseUnavailableReason(new InputFormatError('bad'))).toBeNull()
  })

  it('a registrar whose PostgreSQL cannot be reached answers 503 with Retry-After, not a bare 500', async () => {
    const closedPort = await new Promise<number>((resolve) => {
      const s = createServer()
      s.listen(0, '127.0.0.1', () => {
        const a = s.address()
        s.close(() => resolve(typeof a === 'object' && a ? a.port : 1))
      })
    })
    const db = new Kysely<RegistrarDatabase>({
      dialect: new PostgresDialect({
        pool: new pg.Pool({ host: '127.0.0.1', port: closedPort, user: 'postgres', database: 'test' }),
      }),
    })
    const app = buildRegistrarApp({ service: new RegistrarService({ repo: new RegistrarRepository(db) }) })
    const tpm = softwareTpm()
    const b64 = (u: Uint8Array) => Buffer.from(u).toString('base64')
    const r = await app.inject({
      method: 'POST',
      url: '/v2.6/agents/outage',
      payload: { aik_tpm: b64(tpm.akTpm), ek_tpm: b64(tpm.ekTpm), ekcert: null, mtls_cert: 'disabled' },
    })
    expect(r.statusCode).toBe(503)
    expect(r.headers['retry-after']).toBe('5')
    expect(r.json()).toEqual({
      code: 503,
      status: 'Service Unavailable: database unavailable (ECONNREFUSED)',
      results: {},
    })
    await app.close()
    await db.destroy()
  })

  it('a registrar whose MariaDB cannot be reached answers 503 with Retry-After, not a bare 500', async () => {
    const closedPort = await new Promise<number>((resolve) => {
      const s = createServer()
      s.listen(0, '127.0.0.1', () => {
        const a = s.address()
        s.close(() => resolve(typeof a === 'object' && a ? a.port : 1))
      })
    })
    const db = await openDatabase<RegistrarDatabase>(`mysql+pymysql://root@127.0.0.1:${closedPort}/test`, {
      migrations: false,
    })
    const app = buildRegistrarApp({ service: new RegistrarService({ repo: new RegistrarRepository(db) }) })
    const tpm = softwareTpm()
    const b64 = (u: Uint8Array) => Buffer.from(u).toString('base64')
    const r = await app.inject({
      method: 'POST',
      url: '/v2.6/agents/outage',
      payload: { aik_tpm: b64(tpm.akTpm), ek_tpm: b64(tpm.ekTpm), ekcert: null, mtls_cert: 'disabled' },
    })
    expect(r.statusCode).toBe(503)
    expect(r.headers['retry-after']).toBe('5')
    expect(r.json()).toEqual({
      code: 503,
      status: 'Service Unavailable: database unavailable (ECONNREFUSED)',
      results: {},
    })
    await app.close()
    await db.destroy()
  })
})
