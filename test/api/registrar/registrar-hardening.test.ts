/**
 * The registrar's public port against hostile callers (issue: "fail closed and stay up", registrar item): a
 * registration burst is throttled per source, registrations never activated expire, and neither a wrong auth_tag
 * nor a replayed registration (an agent's public EK, AK and EK certificate sent by someone else) changes the
 * record of a real, activated agent. Also: a re-registration takes effect only once its challenge is answered, a
 * new AK proven under the same EK replaces the old one, and `require_trusted_ek_cert` refuses EK certificates that
 * do not chain to the store. SQLite and PostgreSQL, fastify inject.
 */
import { createHmac, randomBytes, X509Certificate } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import type { Kysely } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseCertificateTolerant } from '../../../src/crypto/ek-trust.ts'
import { dropPgSchema, openDatabase } from '../../../src/db/database.ts'
import { type RegistrarDatabase, RegistrarRepository } from '../../../src/db/registrar-repository.ts'
import { buildRegistrarApp } from '../../../src/registrar/app.ts'
import { RegistrarService, type RegistrarServiceOptions } from '../../../src/registrar/registrar-service.ts'
import { createMysqlDatabase } from '../../helpers/mysql.ts'
import { activateCredentialInSoftware, deviceCa, type SoftwareTpm, softwareTpm } from './software-tpm.ts'

const PG_URL = process.env.KEYLIME_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/test'
const b64 = (u: Uint8Array) => Buffer.from(u).toString('base64')
const pem = (der: Buffer) =>
  `-----BEGIN CERTIFICATE-----\n${der.toString('base64')}\n-----END CERTIFICATE-----\n`
const authTag = (challenge: Buffer, id: string) =>
  createHmac('sha384', Buffer.from(challenge.toString('base64'), 'ascii'))
    .update(id)
    .digest('hex')

const LIFETIME_MS = 120_000
const real: SoftwareTpm = softwareTpm()
const attackerTpm: SoftwareTpm = softwareTpm()
let ca: Awaited<ReturnType<typeof deviceCa>>
let foreignCa: Awaited<ReturnType<typeof deviceCa>>
let realEkCert: Buffer
let realMtls: string
let attackerMtls: string

beforeAll(async () => {
  ca = await deviceCa()
  foreignCa = await deviceCa()
  realEkCert = await ca.issue(real.ekPublicPem, 'EK')
  // as the registrar stores it (re-emitted from its DER)
  realMtls = new X509Certificate(await ca.issue(real.ekPublicPem, 'agent mTLS')).toString()
  attackerMtls = new X509Certificate(
    await foreignCa.issue(attackerTpm.ekPublicPem, 'attacker mTLS'),
  ).toString()
})

interface Harness {
  app: FastifyInstance
  db: Kysely<RegistrarDatabase>
  service: RegistrarService
  clock: { now: number }
  close: () => Promise<void>
}

type DbHandle = { db: Kysely<RegistrarDatabase>; drop: () => Promise<void> }

async function openDb(dialect: 'sqlite' | 'postgres' | 'mariadb'): Promise<DbHandle> {
  if (dialect === 'sqlite') {
    const dir = mkdtempSync(join(tmpdir(), 'kl-reg-hard-'))
    const db = await openDatabase<RegistrarDatabase>('sqlite', {
      dataDir: dir,
      name: 'reg_data',
      migrations: 'registrar',
    })
    return { db, drop: async () => rmSync(dir, { recursive: true, force: true }) }
  }
  if (dialect === 'mariadb') {
    const created = await createMysqlDatabase('reghard')
    const db = await openDatabase<RegistrarDatabase>(created.url, { migrations: 'registrar' })
    return { db, drop: created.drop }
  }
  const schema = `t_reghard_${randomBytes(6).toString('hex')}`
  const db = await openDatabase<RegistrarDatabase>(PG_URL, { pgSchema: schema, migrations: 'registrar' })
  return { db, drop: () => dropPgSchema(PG_URL, schema) }
}

function harness(handle: DbHandle, opts: Partial<RegistrarServiceOptions> = {}): Harness {
  const clock = { now: Date.UTC(2026, 11, 6, 12) }
  const service = new RegistrarService({
    repo: new RegistrarRepository(handle.db),
    challengeLifetimeMs: LIFETIME_MS,
    now: () => clock.now,
    ...opts,
  })
  const app = buildRegistrarApp({ service })
  return { app, db: handle.db, service, clock, close: () => app.close() }
}

function body(tpm: SoftwareTpm, extra: Record<string, unknown> = {}) {
  return { aik_tpm: b64(tpm.akTpm), ek_tpm: b64(tpm.ekTpm), ip: '10.1.1.1', port: 9002, ...extra }
}

/** Registers and activates as the holder of `tpm` would; returns the HTTP status of each step. */
async function registerAndActivate(
  h: Harness,
  id: string,
  tpm: SoftwareTpm,
  extra: Record<string, unknown> = {},
): Promise<{ register: number; activate: number }> {
  const reg = await h.app.inject({ method: 'POST', url: `/v2.6/agents/${id}`, payload: body(tpm, extra) })
  if (reg.statusCode !== 200) return { register: reg.statusCode, activate: 0 }
  const challenge = activateCredentialInSoftware(tpm, reg.json().results.blob)
  const act = await h.app.inject({
    method: 'PUT',
    url: `/v2.6/agents/${id}`,
    payload: { auth_tag: authTag(challenge, id) },
  })
  return { register: reg.statusCode, activate: act.statusCode }
}

async function mainRow(h: Harness, id: string) {
  return h.db.selectFrom('registrarmain').selectAll().where('agent_id', '=', id).executeTakeFirst()
}

async function pendingCount(h: Harness, id?: string): Promise<number> {
  let q = h.db.selectFrom('registrarpending').select((eb) => eb.fn.countAll<number>().as('n'))
  if (id !== undefined) q = q.where('agent_id', '=', id)
  return Number((await q.executeTakeFirstOrThrow()).n)
}

for (const dialect of ['sqlite', 'postgres', 'mariadb'] as const) {
  describe(`registrar hardening on ${dialect}`, () => {
    let handle: DbHandle
    beforeAll(async () => {
      handle = await openDb(dialect)
    })
    afterAll(async () => {
      await handle.db.destroy()
      await handle.drop()
    })

    it('a registration burst from one source is throttled with 429 + Retry-After before its body is read', async () => {
      const h = harness(handle, { rateLimit: { limit: 10, windowMs: 60_000 } })
      try {
        const burst = []
        for (let i = 0; i < 40; i++) {
          const tpm = i % 2 === 0 ? real : attackerTpm
          burst.push(
            await h.app.inject({
              method: 'POST',
              url: `/v2.6/agents/fake-${i}`,
              payload: body(tpm),
              remoteAddress: '203.0.113.7',
            }),
          )
        }
        const codes = burst.map((r) => r.statusCode)
        expect(codes.slice(0, 10)).toEqual(Array(10).fill(200))
        expect(codes.slice(10)).toEqual(Array(30).fill(429))
        const refused = burst[10]
        expect(refused?.json()).toEqual({
          code: 429,
          status: expect.stringMatching(/^Too many registration requests from this address; retry in \d+ s$/),
          results: {},
        })
        // one token comes back every 6 s
        expect(refused?.headers['retry-after']).toBe('6')
        expect(await pendingCount(h)).toBe(10)
        // refused before the body is parsed: malformed JSON is a 429, not a 400
        const junk = await h.app.inject({
          method: 'POST',
          url: '/v2.6/agents/junk',
          payload: '{"aik_tpm": ',
          headers: { 'content-type': 'application/json' },
          remoteAddress: '203.0.113.7',
        })
        expect(junk.statusCode).toBe(429)
        // activations count too; reads do not
        const put = await h.app.inject({
          method: 'PUT',
          url: '/v2.6/agents/fake-0',
          payload: { auth_tag: 'ab' },
          remoteAddress: '203.0.113.7',
        })
        expect(put.statusCode).toBe(429)
        const version = await h.app.inject({ method: 'GET', url: '/version', remoteAddress: '203.0.113.7' })
        expect(version.statusCode).toBe(200)

        // another source is not affected; a neighbour in the same IPv6 /64 is
        const other = await h.app.inject({
          method: 'POST',
          url: '/v2.6/agents/other-source',
          payload: body(real),
          remoteAddress: '198.51.100.2',
        })
        expect(other.statusCode).toBe(200)
        const v6 = async (address: string) =>
          (
            await h.app.inject({
              method: 'POST',
              url: '/v2.6/agents/v6',
              payload: body(real),
              remoteAddress: address,
            })
          ).statusCode
        const v6codes: number[] = []
        for (let i = 1; i <= 10; i++) v6codes.push(await v6(`2001:db8:1:2::${i.toString(16)}`))
        expect(v6codes).toEqual(Array(10).fill(200))
        expect(await v6('2001:db8:1:2:ffff:ffff:ffff:ffff')).toBe(429)
        expect(await v6('2001:db8:1:3::1')).toBe(200)

        // the bucket refills with time
        h.clock.now += 6_000
        const later = await h.app.inject({
          method: 'POST',
          url: '/v2.6/agents/later',
          payload: body(real),
          remoteAddress: '203.0.113.7',
        })
        expect(later.statusCode).toBe(200)

        // none of the burst is an agent: nothing is listed or shown, and all of it expires
        expect(await h.service.list()).toEqual([])
        const show = await h.service.show('fake-0').catch((e: { statusCode: number; message: string }) => e)
        expect(show).toMatchObject({
          statusCode: 404,
          message: "Agent with ID 'fake-0' has not been activated",
        })
        h.clock.now += LIFETIME_MS + 1
        const waiting = await pendingCount(h)
        // 'v6' was registered 11 times: one agent keeps at most 8 challenges
        expect(waiting).toBe(10 + 1 + 8 + 1)
        expect(await h.service.sweepExpired()).toBe(waiting)
        expect(await pendingCount(h)).toBe(0)
      } finally {
        await h.close()
      }
    })

    it('registrations never activated expire: their challenge no longer activates and the sweep deletes them', async () => {
      const h = harness(handle)
      try {
        const reg = await h.app.inject({ method: 'POST', url: '/v2.6/agents/slow', payload: body(real) })
        expect(reg.statusCode).toBe(200)
        const challenge = activateCredentialInSoftware(real, reg.json().results.blob)
        h.clock.now += LIFETIME_MS - 1
        await h.service.sweepExpired()
        expect(await pendingCount(h, 'slow')).toBe(1)
        h.clock.now += 2
        // expired rows are ignored before the sweep reaches them
        const late = await h.app.inject({
          method: 'PUT',
          url: '/v2.6/agents/slow',
          payload: { auth_tag: authTag(challenge, 'slow') },
        })
        expect(late.statusCode).toBe(404)
        expect(await pendingCount(h, 'slow')).toBe(1)
        expect(await h.service.sweepExpired()).toBeGreaterThanOrEqual(1)
        expect(await pendingCount(h, 'slow')).toBe(0)
        expect(await mainRow(h, 'slow')).toBeUndefined()
        // an activated record never expires
        expect(await registerAndActivate(h, 'prompt', real)).toEqual({ register: 200, activate: 200 })
        h.clock.now += 10 * LIFETIME_MS
        await h.service.sweepExpired()
        expect((await h.service.show('prompt')).agent_id).toBe('prompt')
      } finally {
        await h.close()
      }
    })

    it('a wrong auth_tag on any activation route leaves an activated record intact', async () => {
      const h = harness(handle)
      try {
        expect(await registerAndActivate(h, 'victim', real, { mtls_cert: realMtls })).toEqual({
          register: 200,
          activate: 200,
        })
        const before = await mainRow(h, 'victim')
        expect(before).toBeDefined()
        for (const [method, url] of [
          ['PUT', '/v2.6/agents/victim'],
          ['PUT', '/v2.1/agents/victim/activate'],
          ['POST', '/v3/agents/victim/activate'],
        ] as const) {
          const r = await h.app.inject({ method, url, payload: { auth_tag: 'ab'.repeat(48) } })
          expect(r.statusCode, url).toBe(400)
          expect(r.json().status).toMatch(/does not match expected value\. Nothing was changed/)
        }
        expect(await mainRow(h, 'victim')).toEqual(before)
        expect((await h.service.show('victim')).mtls_cert).toBe(realMtls)
      } finally {
        await h.close()
      }
    })

    it("a replayed registration (the agent's public EK, AK and EK certificate) leaves its record intact", async () => {
      const h = harness(handle)
      try {
        const identity = { ekcert: b64(realEkCert), mtls_cert: realMtls, ip: '10.1.1.1', port: 9002 }
        expect(await registerAndActivate(h, 'target', real, identity)).toEqual({
          register: 200,
          activate: 200,
        })
        const before = await mainRow(h, 'target')
        // the attacker has everything public about the agent but not its TPM
        const replay = body(real, { ...identity, ip: '192.0.2.66', port: 6666, mtls_cert: attackerMtls })
        for (let i = 0; i < 3; i++) {
          const r = await h.app.inject({ method: 'POST', url: '/v2.6/agents/target', payload: replay })
          expect(r.statusCode).toBe(200)
          // the blob is sealed to the real EK: the attacker's own TPM cannot open it
          expect(() => activateCredentialInSoftware(attackerTpm, r.json().results.blob)).toThrow()
        }
        expect(await mainRow(h, 'target')).toEqual(before)
        expect(await h.service.show('target')).toMatchObject({
          ip: '10.1.1.1',
          port: 9002,
          mtls_cert: realMtls,
        })
        expect(await h.service.list()).toContain('target')

        // the real agent restarting while replays are in flight: its own challenge still activates, with its data
        const mine = await h.app.inject({
          method: 'POST',
          url: '/v2.6/agents/target',
          payload: body(real, { ...identity, port: 9003 }),
        })
        const replayed = await h.app.inject({ method: 'POST', url: '/v2.6/agents/target', payload: replay })
        expect(replayed.statusCode).toBe(200)
        expect(await mainRow(h, 'target')).toEqual(before)
        const challenge = activateCredentialInSoftware(real, mine.json().results.blob)
        const act = await h.app.inject({
          method: 'PUT',
          url: '/v2.6/agents/target',
          payload: { auth_tag: authTag(challenge, 'target') },
        })
        expect(act.statusCode).toBe(200)
        expect(await h.service.show('target')).toMatchObject({
          ip: '10.1.1.1',
          port: 9003,
          mtls_cert: realMtls,
          regcount: 2,
        })
        // the replays' challenges died with the activation
        expect(await pendingCount(h, 'target')).toBe(0)
      } finally {
        await h.close()
      }
    })

    it('a new AK proven under the same EK replaces the old one; another EK is refused (403) and changes nothing', async () => {
      const h = harness(handle)
      try {
        expect(await registerAndActivate(h, 'rotating', real)).toEqual({ register: 200, activate: 200 })
        const newAk: SoftwareTpm = { ...real, akTpm: softwareTpm().akTpm }
        expect(await registerAndActivate(h, 'rotating', newAk)).toEqual({ register: 200, activate: 200 })
        expect((await h.service.show('rotating')).aik_tpm).toBe(b64(newAk.akTpm))
        const before = await mainRow(h, 'rotating')
        expect(await registerAndActivate(h, 'rotating', attackerTpm)).toEqual({ register: 403, activate: 0 })
        expect(await mainRow(h, 'rotating')).toEqual(before)
      } finally {
        await h.close()
      }
    })

    it('a registration made before another TPM activated the id cannot take it over at its own activation', async () => {
      const h = harness(handle)
      try {
        const early = await h.app.inject({
          method: 'POST',
          url: '/v2.6/agents/contested',
          payload: body(attackerTpm),
        })
        expect(early.statusCode).toBe(200)
        expect(await registerAndActivate(h, 'contested', real)).toEqual({ register: 200, activate: 200 })
        const before = await mainRow(h, 'contested')
        // the earlier registration was dropped with the activation, so its answer finds nothing to activate
        const challenge = activateCredentialInSoftware(attackerTpm, early.json().results.blob)
        const late = await h.app.inject({
          method: 'PUT',
          url: '/v2.6/agents/contested',
          payload: { auth_tag: authTag(challenge, 'contested') },
        })
        expect(late.statusCode).toBe(400)
        expect(await mainRow(h, 'contested')).toEqual(before)
      } finally {
        await h.close()
      }
    })

    it('require_trusted_ek_cert refuses a missing EK certificate or one outside tpm_cert_store', async () => {
      const store = { dir: '(memory)', certificates: [parseCertificateTolerant(ca.caDer)], warnings: [] }
      const h = harness(handle, { certStore: store, requireTrustedEkCert: true })
      try {
        const attempt = async (id: string, extra: Record<string, unknown>) => {
          const r = await h.app.inject({
            method: 'POST',
            url: `/v2.6/agents/${id}`,
            payload: body(real, extra),
          })
          return { code: r.statusCode, status: r.json().status as string }
        }
        expect(await attempt('no-cert', {})).toEqual({
          code: 400,
          status:
            'Could not register agent with invalid data: an ekcert chained to tpm_cert_store is required (require_trusted_ek_cert)',
        })
        const foreign = await attempt('foreign', {
          ekcert: b64(await foreignCa.issue(real.ekPublicPem, 'EK')),
        })
        expect(foreign.code).toBe(400)
        expect(foreign.status).toMatch(/ekcert is not trusted \(require_trusted_ek_cert\): /)
        expect(await pendingCount(h, 'no-cert')).toBe(0)
        expect(await pendingCount(h, 'foreign')).toBe(0)
        expect(await registerAndActivate(h, 'trusted', real, { ekcert: pem(realEkCert) })).toEqual({
          register: 200,
          activate: 200,
        })
        expect(() => harness(handle, { requireTrustedEkCert: true })).toThrow(/tpm_cert_store/)
      } finally {
        await h.close()
      }
    })
  })
}
