/**
 * Stateless push verifiers: two verifier processes on one PostgreSQL database (then on one MariaDB database) behind a small round-robin HTTPS
 * proxy that sends each request to the other verifier than the last one. The same push agent's session is opened
 * on one verifier and proved on the other, its capabilities go to one and its evidence to the other, and it still
 * passes every round, with each attestation counted exactly once.
 */
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer, type Server } from 'node:https'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { Agent } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { RunningPushAgent } from '../../src/agent/push/push-agent.ts'
import { waitFor } from '../../src/devtools/local-cluster.ts'
import { createMysqlDatabase } from '../helpers/mysql.ts'
import { type PushCluster, startPushCluster } from '../helpers/push-cluster.ts'

const PG_URL = process.env.KEYLIME_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/test'

/** The shared databases the verifiers run on: a fresh database on each server, dropped afterwards. */
const SERVERS: { name: string; open(): Promise<{ url: string; drop(): Promise<void> }> }[] = [
  {
    name: 'PostgreSQL',
    open: async () => {
      const dbName = `keylime_push_ha_${randomBytes(4).toString('hex')}`
      await pgAdmin(`CREATE DATABASE ${dbName}`)
      const url = new URL(PG_URL)
      url.pathname = `/${dbName}`
      return { url: url.toString(), drop: () => pgAdmin(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`) }
    },
  },
  { name: 'MariaDB', open: () => createMysqlDatabase('push_ha') },
]

let work: string
let cluster: PushCluster
let proxy: Server
let proxyPort = 0
let agent: RunningPushAgent
/** Requests of the agent each verifier answered, by method and route. */
const served: { backend: number; method: string; path: string; status: number }[] = []

async function pgAdmin(sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: PG_URL })
  await c.connect()
  try {
    await c.query(sql)
  } finally {
    await c.end()
  }
}

/** An HTTPS server with the verifiers' certificate that forwards request i to backend i mod 2. */
async function startRoundRobinProxy(cvCa: string, ports: number[]): Promise<void> {
  const read = (f: string) => readFileSync(join(cvCa, f), 'utf8')
  const upstream = new Agent({ connect: { ca: read('cacert.crt'), checkServerIdentity: () => undefined } })
  let next = 0
  proxy = createServer({ cert: read('server-cert.crt'), key: read('server-private.pem') }, (req, res) => {
    const backend = next++ % ports.length
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const headers: Record<string, string> = {}
      for (const [k, v] of Object.entries(req.headers))
        if (typeof v === 'string' && k !== 'host' && k !== 'connection') headers[k] = v
      upstream
        .request({
          origin: `https://127.0.0.1:${ports[backend]}`,
          path: req.url ?? '/',
          method: (req.method ?? 'GET') as 'GET',
          headers,
          ...(chunks.length > 0 ? { body: Buffer.concat(chunks) } : {}),
        })
        .then(async (r) => {
          const body = Buffer.from(await r.body.arrayBuffer())
          served.push({ backend, method: req.method ?? '', path: req.url ?? '', status: r.statusCode })
          const out: Record<string, string | string[]> = {}
          for (const [k, v] of Object.entries(r.headers))
            if (v !== undefined && k !== 'transfer-encoding' && k !== 'connection') out[k] = v
          res.writeHead(r.statusCode, out).end(body)
        })
        .catch((err: Error) => {
          served.push({ backend, method: req.method ?? '', path: req.url ?? '', status: 502 })
          res.writeHead(502).end(err.message)
        })
    })
  })
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()))
  const address = proxy.address()
  proxyPort = typeof address === 'object' && address ? address.port : 0
}

for (const server of SERVERS)
  describe(`two push verifiers on ${server.name} behind a round-robin proxy`, () => {
    let database: { url: string; drop(): Promise<void> } | undefined
    beforeAll(async () => {
      work = mkdtempSync(join(tmpdir(), 'push-ha-'))
      served.length = 0
      database = await server.open()
      cluster = await startPushCluster({
        work,
        dbUrl: database.url,
        quoteInterval: 1,
        // short tokens, extended by every pass: the agent keeps its one session (see the last test)
        verifierEnv: { KEYLIME_VERIFIER_PUSH_EVIDENCE_TIMEOUT: '30', KEYLIME_VERIFIER_SESSION_LIFETIME: '6' },
      })
      // the second verifier starts while the agent registers (the proxy's port is known before either)
      const { freePort } = await import('../helpers/swtpm.ts')
      const secondPort = await freePort()
      await startRoundRobinProxy(cluster.cvCa, [cluster.verifiers[0]?.port ?? 0, secondPort])
      const [, started] = await Promise.all([
        cluster.startVerifier({ port: secondPort }),
        cluster.startAgent('agent-ha', { verifierPort: proxyPort }).then(async (a) => {
          await waitFor('registration', 60, async () =>
            (await cluster.tenant.registrar.getAgent(a.agent.uuid)) ? true : undefined,
          )
          return a
        }),
      ])
      agent = started.agent
      await cluster.enroll(agent.uuid, started.imaList)
    }, 180_000)

    afterAll(async () => {
      await cluster?.close()
      await new Promise<void>((r) => (proxy ? proxy.close(() => r()) : r()))
      await database?.drop().catch(() => undefined)
      rmSync(work, { recursive: true, force: true })
    })

    it('attest the same agent with alternating requests; every attestation passes and is counted once', async () => {
      await waitFor('five accepted evidence submissions', 60, () =>
        agent.stats.attestations >= 5 ? true : undefined,
      )
      expect(agent.stats.consecutiveFailures).toBe(0)
      // both verifiers answered; evidence went to the verifier that did not create the attestation
      expect(new Set(served.map((s) => s.backend))).toEqual(new Set([0, 1]))
      let crossed = 0
      served.forEach((s, i) => {
        const prev = served[i - 1]
        if (
          s.method === 'PATCH' &&
          s.path.includes('/attestations/') &&
          prev?.method === 'POST' &&
          prev.backend !== s.backend
        )
          crossed++
      })
      expect(crossed).toBeGreaterThanOrEqual(4)
      // a session opened on one verifier was proved on the other
      // the session whose token the first attestation used: opened on one verifier, proved on the other
      const firstAccepted = served.findIndex((s) => s.method === 'PATCH' && s.status === 202)
      const before = served.slice(0, firstAccepted)
      const proved = before.findLastIndex((s) => s.method === 'PATCH' && s.path.includes('/sessions/'))
      expect(before[proved]?.status).toBe(200)
      expect(before[proved - 1]?.method).toBe('POST')
      expect(before[proved - 1]?.path).toMatch(/\/sessions$/)
      expect(before[proved - 1]?.backend).not.toBe(before[proved]?.backend)
      // once attesting (the second verifier may have been starting before), no request of the agent failed
      expect(served.slice(firstAccepted).filter((s) => s.status >= 400)).toEqual([])

      const accepted = agent.stats.attestations
      // every evidence accepted is verified exactly once, by one of the two (the last may still be evaluating)
      const counted = await waitFor('the evaluations to finish', 20, async () => {
        const s = await cluster.tenant.service.cvstatus(agent.uuid)
        const n = Number(s.attestation_count)
        return n >= accepted - 1 ? { n, s } : undefined
      })
      expect(counted.n).toBeLessThanOrEqual(agent.stats.attestations)
      expect(counted.s.attestation_status).toBe('PASS')
      for (const v of cluster.verifiers) {
        const list = await cluster.adminGet(v.port, `/v3.0/agents/${agent.uuid}/attestations`)
        expect(list.status).toBe(200)
        const items = list.body.data as { id: string; attributes: { evaluation: string } }[]
        expect(new Set(items.map((i) => i.id)).size).toBe(items.length)
        expect(items.every((i) => i.attributes.evaluation !== 'fail')).toBe(true)
      }
    })

    it('keeps one session over three token lifetimes: passes extend the token and the agent learns it from the 201/202', async () => {
      const sessions = agent.stats.sessions
      const attestations = agent.stats.attestations
      // session_lifetime 6 s, one attestation a second: 18 attestations span three lifetimes
      await waitFor('eighteen more attestations', 90, () =>
        agent.stats.attestations >= attestations + 18 ? true : undefined,
      )
      expect(agent.stats.sessions).toBe(sessions)
      expect(agent.stats.consecutiveFailures).toBe(0)
    })
  })
