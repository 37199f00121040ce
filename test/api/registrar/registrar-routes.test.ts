import { createHmac, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import type { Kysely } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { dropPgSchema, openDatabase } from '../../../src/db/database.ts'
import { type RegistrarDatabase, RegistrarRepository } from '../../../src/db/registrar-repository.ts'
import { buildRegistrarApp } from '../../../src/registrar/app.ts'
import { RegistrarService } from '../../../src/registrar/registrar-service.ts'
import { createMysqlDatabase } from '../../helpers/mysql.ts'
import {
  activateCredentialInSoftware,
  ekCertificateFor,
  type SoftwareTpm,
  softwareTpm,
} from './software-tpm.ts'

const PG_URL = process.env.KEYLIME_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/test'
const b64 = (u: Uint8Array) => Buffer.from(u).toString('base64')
const authTag = (challenge: Buffer, id: string) =>
  createHmac('sha384', Buffer.from(challenge.toString('base64'), 'ascii'))
    .update(id)
    .digest('hex')

// Two TPMs shared by all cases (RSA key generation is the slow part).
const tpmA: SoftwareTpm = softwareTpm()
const tpmB: SoftwareTpm = softwareTpm()

interface Harness {
  app: FastifyInstance
  db: Kysely<RegistrarDatabase>
  cleanup: () => Promise<void>
}

async function harness(dialect: 'sqlite' | 'postgres' | 'mariadb'): Promise<Harness> {
  let db: Kysely<RegistrarDatabase>
  let cleanupDb: () => Promise<void>
  if (dialect === 'sqlite') {
    const dir = mkdtempSync(join(tmpdir(), 'kl-reg-'))
    db = await openDatabase<RegistrarDatabase>('sqlite', {
      dataDir: dir,
      name: 'reg_data',
      migrations: 'registrar',
    })
    cleanupDb = async () => rmSync(dir, { recursive: true, force: true })
  } else if (dialect === 'mariadb') {
    const created = await createMysqlDatabase('regapi')
    db = await openDatabase<RegistrarDatabase>(created.url, { migrations: 'registrar' })
    cleanupDb = created.drop
  } else {
    const schema = `t_regapi_${randomBytes(6).toString('hex')}`
    db = await openDatabase<RegistrarDatabase>(PG_URL, { pgSchema: schema, migrations: 'registrar' })
    cleanupDb = () => dropPgSchema(PG_URL, schema)
  }
  const service = new RegistrarService({ repo: new RegistrarRepository(db) })
  const app = buildRegistrarApp({ service, bodyLimit: 64 * 1024 })
  return {
    app,
    db,
    cleanup: async () => {
      await app.close()
      await db.destroy()
      await cleanupDb()
    },
  }
}

/** Rows in both registrar tables: activated records and registrations awaiting activation. */
async function rowCount(db: Kysely<RegistrarDatabase>): Promise<number> {
  let n = 0
  for (const table of ['registrarmain', 'registrarpending'] as const) {
    const r = await db
      .selectFrom(table)
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .executeTakeFirstOrThrow()
    n += Number(r.n)
  }
  return n
}

function registration(tpm: SoftwareTpm, extra: Record<string, unknown> = {}) {
  return {
    aik_tpm: b64(tpm.akTpm),
    ek_tpm: b64(tpm.ekTpm),
    ekcert: null,
    ip: '127.0.0.1',
    port: 9002,
    mtls_cert: 'disabled',
    ...extra,
  }
}

for (const dialect of ['sqlite', 'postgres', 'mariadb'] as const) {
  describe(`registrar routes on ${dialect}`, () => {
    let h: Harness
    beforeAll(async () => {
      h = await harness(dialect)
    })
    afterAll(async () => h.cleanup())

    it('GET /version lists every API version', async () => {
      const r = await h.app.inject({ method: 'GET', url: '/version' })
      expect(r.json()).toEqual({
        code: 200,
        status: 'Success',
        results: {
          current_version: '2.6',
          supported_versions: ['1.0', '2.0', '2.1', '2.2', '2.3', '2.4', '2.5', '2.6', '3.0'],
        },
      })
    })

    it('registers with an EK certificate, and the blob activates only for this EK + AK', async () => {
      const ekcert = await ekCertificateFor(tpmA.ekPublicPem)
      const reg = await h.app.inject({
        method: 'POST',
        url: '/v2.6/agents/agent-a',
        payload: registration(tpmA, {
          ekcert: `-----BEGIN CERTIFICATE-----\n${ekcert.toString('base64')}\n-----END CERTIFICATE-----\n`,
        }),
      })
      expect(reg.statusCode).toBe(200)
      const blob = reg.json().results.blob as string
      const challenge = activateCredentialInSoftware(tpmA, blob)
      expect(challenge.toString('ascii')).toMatch(/^[A-Za-z0-9]{32}$/)
      expect(() => activateCredentialInSoftware({ ...tpmA, akTpm: tpmB.akTpm }, blob)).toThrow(/integrity/)

      const act = await h.app.inject({
        method: 'PUT',
        url: '/v2.6/agents/agent-a',
        payload: { auth_tag: authTag(challenge, 'agent-a') },
      })
      expect(act.statusCode).toBe(200)
      expect(act.json()).toEqual({ code: 200, status: 'Success', results: {} })
      const row = await h.db
        .selectFrom('registrarmain')
        .selectAll()
        .where('agent_id', '=', 'agent-a')
        .executeTakeFirstOrThrow()
      expect(Number(row.active)).toBe(1)
      expect(row.ekcert).toBe(ekcert.toString('base64'))
      expect(row.regcount).toBe(1)
    })

    it('re-registration with the same identity bumps regcount and needs a new activation', async () => {
      const reg = await h.app.inject({
        method: 'POST',
        url: '/v2/agents',
        payload: {
          agent_id: 'agent-a',
          ...registration(tpmA, { ekcert: b64(await ekCertificateFor(tpmA.ekPublicPem)) }),
        },
      })
      // a different certificate for the same key is a different ekcert: refused
      expect(reg.statusCode).toBe(403)
      const same = await h.db
        .selectFrom('registrarmain')
        .select('ekcert')
        .where('agent_id', '=', 'agent-a')
        .executeTakeFirstOrThrow()
      const again = await h.app.inject({
        method: 'POST',
        url: '/v2.1/agents/agent-a',
        payload: registration(tpmA, { ekcert: same.ekcert }),
      })
      expect(again.statusCode).toBe(200)
      // the activated record stays as it was until the new challenge is answered
      const row = await h.db
        .selectFrom('registrarmain')
        .selectAll()
        .where('agent_id', '=', 'agent-a')
        .executeTakeFirstOrThrow()
      expect(row.regcount).toBe(1)
      expect(Number(row.active)).toBe(1)
      const challenge = activateCredentialInSoftware(tpmA, again.json().results.blob)
      const act = await h.app.inject({
        method: 'POST',
        url: '/v3/agents/agent-a/activate',
        payload: { auth_tag: authTag(challenge, 'agent-a') },
      })
      expect(act.statusCode).toBe(200)
      const after = await h.db
        .selectFrom('registrarmain')
        .selectAll()
        .where('agent_id', '=', 'agent-a')
        .executeTakeFirstOrThrow()
      expect(after.regcount).toBe(2)
      expect(after.key).toBe(challenge.toString('base64'))
    })

    it('picks the EK certificate out of a PEM bundle (chain first, as the Rust agent sends it)', async () => {
      const ekcert = await ekCertificateFor(tpmB.ekPublicPem)
      const pem = (der: Buffer) =>
        `-----BEGIN CERTIFICATE-----\n${der.toString('base64')}\n-----END CERTIFICATE-----\n`
      const otherCert = await ekCertificateFor(tpmA.ekPublicPem)
      const r = await h.app.inject({
        method: 'POST',
        url: '/v2.6/agents/agent-bundle',
        payload: registration(tpmB, { ekcert: pem(otherCert) + pem(ekcert) }),
      })
      expect(r.statusCode).toBe(200)
      const row = await h.db
        .selectFrom('registrarpending')
        .select('ekcert')
        .where('agent_id', '=', 'agent-bundle')
        .executeTakeFirstOrThrow()
      expect(row.ekcert).toBe(ekcert.toString('base64'))
      const none = await h.app.inject({
        method: 'POST',
        url: '/v2.6/agents/agent-bundle2',
        payload: registration(tpmB, { ekcert: pem(otherCert) + pem(otherCert) }),
      })
      expect(none.statusCode).toBe(400)
      await h.db.deleteFrom('registrarpending').where('agent_id', '=', 'agent-bundle').execute()
    })

    it('a second TPM cannot take over a UUID (403, record unchanged)', async () => {
      const before = await h.db
        .selectFrom('registrarmain')
        .selectAll()
        .where('agent_id', '=', 'agent-a')
        .executeTakeFirstOrThrow()
      const r = await h.app.inject({
        method: 'POST',
        url: '/v2.6/agents/agent-a',
        payload: registration(tpmB),
      })
      expect(r.statusCode).toBe(403)
      expect(r.json()).toEqual({
        code: 403,
        status: 'Agent re-registration with different TPM identity is forbidden for security reasons',
        results: {},
      })
      const after = await h.db
        .selectFrom('registrarmain')
        .selectAll()
        .where('agent_id', '=', 'agent-a')
        .executeTakeFirstOrThrow()
      expect(after).toEqual(before)
    })

    it('a wrong auth_tag changes nothing and the right one still activates; unknown agents are 404; a missing tag is 400', async () => {
      const reg = await h.app.inject({
        method: 'POST',
        url: '/v2.6/agents/agent-w',
        payload: registration(tpmB),
      })
      expect(reg.statusCode).toBe(200)
      const before = await rowCount(h.db)
      const missing = await h.app.inject({ method: 'PUT', url: '/v2.6/agents/agent-w', payload: {} })
      expect(missing.statusCode).toBe(400)
      const challenge = activateCredentialInSoftware(tpmB, reg.json().results.blob)
      const wrong = await h.app.inject({
        method: 'PUT',
        url: '/v2.6/agents/agent-w/activate',
        payload: { auth_tag: authTag(challenge, 'agent-x') },
      })
      expect(wrong.statusCode).toBe(400)
      expect(wrong.json().status).toMatch(/^Auth tag '.*' for agent 'agent-w' does not match expected value/)
      expect(await rowCount(h.db)).toBe(before)
      const right = await h.app.inject({
        method: 'PUT',
        url: '/v2.6/agents/agent-w',
        payload: { auth_tag: authTag(challenge, 'agent-w') },
      })
      expect(right.statusCode).toBe(200)
      const unknown = await h.app.inject({
        method: 'PUT',
        url: '/v2.6/agents/agent-nobody',
        payload: { auth_tag: authTag(challenge, 'agent-nobody') },
      })
      expect(unknown.statusCode).toBe(404)
      await h.db.deleteFrom('registrarmain').where('agent_id', '=', 'agent-w').execute()
    })

    it('bad input is always a 4xx envelope and writes nothing', async () => {
      const before = await rowCount(h.db)
      const good = registration(tpmB)
      const ekAsAk = { ...good, aik_tpm: good.ek_tpm }
      const truncated = { ...good, aik_tpm: b64(tpmB.akTpm.subarray(0, 40)) }
      const cases: { payload: unknown; url?: string; headers?: Record<string, string> }[] = [
        { payload: '{"aik_tpm": ', headers: { 'content-type': 'application/json' } },
        { payload: '[1,2]', headers: { 'content-type': 'application/json' } },
        { payload: { ...good, aik_tpm: 12 } },
        { payload: { ...good, aik_tpm: undefined } },
        { payload: { ...good, ek_tpm: null } },
        { payload: { ...good, aik_tpm: 'not base64!' } },
        { payload: { ...good, ek_tpm: 'AAAA' } },
        { payload: truncated },
        { payload: ekAsAk },
        { payload: { ...good, ekcert: 'MIIB' } },
        { payload: { ...good, ekcert: b64(await ekCertificateFor(tpmA.ekPublicPem)) } },
        { payload: { ...good, port: 'http' } },
        { payload: { ...good, port: 70000 } },
        { payload: { ...good, ip: 'a b' } },
        { payload: { ...good, mtls_cert: 'nope' } },
        { payload: good, url: '/v2.6/agents/bad%20id' },
        { payload: { ...good, pad: 'x'.repeat(70 * 1024) } },
      ]
      for (const c of cases) {
        const r = await h.app.inject({
          method: 'POST',
          url: c.url ?? '/v2.6/agents/agent-bad',
          payload: c.payload as string,
          ...(c.headers ? { headers: c.headers } : {}),
        })
        expect(r.statusCode, JSON.stringify(c.payload).slice(0, 120)).toBeGreaterThanOrEqual(400)
        expect(r.statusCode).toBeLessThan(500)
        expect(r.json()).toMatchObject({ code: r.statusCode, results: {} })
      }
      expect(await rowCount(h.db)).toBe(before)
    })

    it('unknown API versions are 404 with an empty body; admin routes over HTTP are 400 empty', async () => {
      for (const url of ['/v2.9/agents/agent-a', '/v1.0/agents/agent-a', '/v4/agents']) {
        const r = await h.app.inject({ method: 'POST', url, payload: {} })
        expect(r.statusCode).toBe(404)
        expect(r.body).toBe('')
      }
      for (const [method, url] of [
        ['GET', '/v2.6/agents'],
        ['GET', '/v2.6/agents/agent-a'],
        ['DELETE', '/v2.6/agents/agent-a'],
      ] as const) {
        const r = await h.app.inject({ method, url })
        expect(r.statusCode).toBe(400)
        expect(r.body).toBe('')
      }
      expect(await rowCount(h.db)).toBeGreaterThan(0)
    })

    it('concurrent registrations of one agent are serialised: each gets its own challenge, any one activates', async () => {
      const n = 6
      const results = await Promise.all(
        Array.from({ length: n }, () =>
          h.app.inject({ method: 'POST', url: '/v2.6/agents/agent-c', payload: registration(tpmB) }),
        ),
      )
      expect(results.map((r) => r.statusCode)).toEqual(Array(n).fill(200))
      const rows = await h.db
        .selectFrom('registrarpending')
        .select('key')
        .where('agent_id', '=', 'agent-c')
        .execute()
      const challenges = results.map((r) => activateCredentialInSoftware(tpmB, r.json().results.blob))
      expect(new Set(rows.map((r) => r.key))).toEqual(new Set(challenges.map((c) => c.toString('base64'))))
      const picked = challenges[2] as Buffer
      const act = await h.app.inject({
        method: 'PUT',
        url: '/v2.6/agents/agent-c',
        payload: { auth_tag: authTag(picked, 'agent-c') },
      })
      expect(act.statusCode).toBe(200)
      const row = await h.db
        .selectFrom('registrarmain')
        .selectAll()
        .where('agent_id', '=', 'agent-c')
        .executeTakeFirstOrThrow()
      expect(row.regcount).toBe(1)
      expect(row.key).toBe(picked.toString('base64'))
      expect(
        await h.db.selectFrom('registrarpending').select('key').where('agent_id', '=', 'agent-c').execute(),
      ).toEqual([])
    })
  })
}
