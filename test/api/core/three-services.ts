/**
 * The three services' apps on real sockets, for tests that send raw HTTP (paths like `/agents/..` that an
 * HTTP client library or `inject` would normalise): the registrar over HTTPS with a trusted client certificate (its
 * admin routes need one), the verifier over HTTP with the test harness's admin header, the agent's HTTP surface
 * with services that count calls (none of the hostile requests may reach them).
 */

import { mkdtempSync, rmSync } from 'node:fs'
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Kysely } from 'kysely'
import pino from 'pino'
import { type AgentServices, buildAgentApp } from '../../../src/agent/app.ts'
import type { AgentHttpServer, RouteSchema } from '../../../src/agent/http-server.ts'
import { type KeylimeServer, tlsServerOptions } from '../../../src/api/server.ts'
import { AGENT_API_VERSIONS } from '../../../src/api/versions.ts'
import { openDatabase } from '../../../src/db/database.ts'
import { type RegistrarDatabase, RegistrarRepository } from '../../../src/db/registrar-repository.ts'
import { buildRegistrarApp } from '../../../src/registrar/app.ts'
import { RegistrarService } from '../../../src/registrar/registrar-service.ts'
import { ADMIN, makeVerifier } from '../../unit/verifier/harness.ts'
import { makeTestPki } from '../registrar/tls-material.ts'

/**
 * What the tests use of an app: the registrar's and verifier's fastify, or the agent's own HTTP layer with its route
 * table loaded (the agent loads its route schemas only on demand).
 */
export type TestedApp = Pick<KeylimeServer | AgentHttpServer, 'server' | 'inject' | 'close'> & {
  keylimeRouteTable: readonly {
    method: string
    url: string
    schema: KeylimeServer['keylimeRouteTable'][number]['schema'] | RouteSchema
  }[]
}

export interface ServiceUnderTest {
  name: 'registrar' | 'verifier' | 'agent'
  app: TestedApp
  /** Sends one raw request (the path goes out exactly as given). */
  send(
    method: string,
    path: string,
    body?: string | Buffer,
    headers?: Record<string, string>,
  ): Promise<RawResponse>
}

export interface RawResponse {
  status: number
  headers: IncomingHttpHeaders
  body: string
}

export interface ThreeServices {
  services: ServiceUnderTest[]
  /** How often the agent's services were called. */
  agentCalls: () => number
  /** Info lines the verifier and registrar logged (audit lines among them). */
  logLines: () => Record<string, unknown>[]
  close(): Promise<void>
}

function port(app: TestedApp): number {
  const a = app.server.address()
  if (!a || typeof a === 'string') throw new Error('not listening')
  return a.port
}

export async function startThreeServices(): Promise<ThreeServices> {
  const lines: Record<string, unknown>[] = []
  const log = pino(
    { level: 'info' },
    { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
  )

  const pki = makeTestPki()
  const dir = mkdtempSync(join(tmpdir(), 'kl-core-'))
  const db: Kysely<RegistrarDatabase> = await openDatabase<RegistrarDatabase>('sqlite', {
    dataDir: dir,
    name: 'reg_data',
    migrations: 'registrar',
  })
  const registrar = buildRegistrarApp({
    service: new RegistrarService({ repo: new RegistrarRepository(db) }),
    https: tlsServerOptions({
      certPem: pki.serverCert,
      keyPem: pki.serverKey,
      trustedClientCaPems: [pki.caCert],
    }),
    log,
  })
  await registrar.listen({ host: '127.0.0.1', port: 0 })

  const v = await makeVerifier({}, undefined, undefined, log)
  await v.app.listen({ host: '127.0.0.1', port: 0 })

  let calls = 0
  const counted =
    <T extends unknown[], R>(fn: (...a: T) => R) =>
    (...a: T): R => {
      calls++
      return fn(...a)
    }
  const agentServices: AgentServices = {
    info: counted(() => ({
      agent_uuid: 'u',
      tpm_hash_alg: 'sha256',
      tpm_enc_alg: 'rsa',
      tpm_sign_alg: 'rsassa',
      ak_handle: 1,
    })),
    pubkeyPem: counted(() => 'PEM'),
    identityQuote: counted(async () => ({
      quote: 'r',
      hash_alg: 'sha256',
      enc_alg: 'rsa',
      sign_alg: 'rsassa',
      pubkey: 'PEM',
    })),
    integrityQuote: counted(async () => ({
      quote: 'r',
      hash_alg: 'sha256',
      enc_alg: 'rsa',
      sign_alg: 'rsassa',
    })),
    postUkey: counted(async () => undefined),
    postVkey: counted(async () => undefined),
    verify: counted(() => null),
    postRevocation: counted(() => undefined),
  }
  const agentApp = buildAgentApp({ services: agentServices, apiVersions: [...AGENT_API_VERSIONS] })
  await agentApp.listen({ host: '127.0.0.1', port: 0 })
  const agent: TestedApp = {
    server: agentApp.server,
    inject: agentApp.inject.bind(agentApp),
    close: () => agentApp.close(),
    keylimeRouteTable: await agentApp.routeTable(),
  }

  const sender =
    (app: TestedApp, tls: boolean, extraHeaders: Record<string, string>) =>
    (method: string, path: string, body?: string | Buffer, headers: Record<string, string> = {}) =>
      new Promise<RawResponse>((resolve, reject) => {
        const options = {
          host: '127.0.0.1',
          port: port(app),
          method,
          path,
          headers: {
            ...extraHeaders,
            ...(body !== undefined ? { 'content-length': String(Buffer.byteLength(body)) } : {}),
            ...headers,
          },
          ...(tls
            ? { ca: pki.caCert, cert: pki.clientCert, key: pki.clientKey, servername: 'localhost' }
            : {}),
          agent: false,
        }
        const req = (tls ? httpsRequest : httpRequest)(options, (res) => {
          const chunks: Buffer[] = []
          res.on('data', (c: Buffer) => chunks.push(c))
          res.on('end', () =>
            resolve({
              status: res.statusCode ?? 0,
              headers: res.headers,
              body: Buffer.concat(chunks).toString('utf8'),
            }),
          )
        })
        // a server may answer and close before it has read a large body: the answer is what counts
        req.on('error', (err: NodeJS.ErrnoException) => {
          if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') reject(err)
        })
        req.end(body)
      })

  return {
    services: [
      { name: 'registrar', app: registrar, send: sender(registrar, true, {}) },
      { name: 'verifier', app: v.app, send: sender(v.app, false, ADMIN) },
      { name: 'agent', app: agent, send: sender(agent, false, {}) },
    ],
    agentCalls: () => calls,
    logLines: () => lines,
    close: async () => {
      await Promise.allSettled([registrar.close(), v.app.close(), agent.close()])
      await db.destroy()
      rmSync(dir, { recursive: true, force: true })
    },
  }
}
