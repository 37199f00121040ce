/**
 * Enrolment stores the agent and the policies it brings in one transaction: racing identical adds (two verifier
 * services on separate connections) give one 200 and one 409 and leave only the winner's policies, on SQLite and
 * PostgreSQL; a refused insert leaves no policy behind.
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Kysely } from 'kysely'
import { afterAll, describe, expect, it, vi } from 'vitest'
import { SoftQuoter } from '../../bench/fleet-quoter.ts'
import { AgentState } from '../../src/api/verifier/states.ts'
import { dropPgSchema, openDatabase } from '../../src/db/database.ts'
import {
  bodyInput,
  DuplicateError,
  type VerifierDatabase,
  VerifierRepository,
} from '../../src/db/verifier-repository.ts'
import { createMysqlDatabase } from '../helpers/mysql.ts'
import { runtimePolicyB64 } from '../helpers/runtime-policy.ts'
import { makeVerifier } from '../unit/verifier/harness.ts'

const PG_URL = process.env.KEYLIME_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/test'
const quoter = new SoftQuoter()
const runtimePolicy = (marker: string) => runtimePolicyB64({ [`/usr/bin/${marker}`]: ['ab'.repeat(32)] })

function body(marker: string) {
  return {
    v: Buffer.alloc(32, 7).toString('base64'),
    cloudagent_ip: '127.0.0.1',
    cloudagent_port: 9002,
    tpm_policy: '{}',
    runtime_policy: runtimePolicy(marker),
    runtime_policy_name: `rt-${marker}`,
    mb_policy: JSON.stringify({ marker }),
    mb_policy_name: `mb-${marker}`,
    ima_sign_verification_keys: '',
    metadata: '{}',
    revocation_key: '',
    accept_tpm_hash_algs: ['sha256'],
    accept_tpm_encryption_algs: ['rsa', 'ecc'],
    accept_tpm_signing_algs: ['rsassa', 'ecdsa'],
    ak_tpm: quoter.akTpm,
    mtls_cert: 'disabled',
    supported_version: '2.6',
  }
}

const cleanups: (() => Promise<void>)[] = []
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

const dialects = [
  {
    name: 'sqlite',
    open: async () => {
      const dir = mkdtempSync(join(tmpdir(), 'kl-venrol-'))
      cleanups.push(async () => rmSync(dir, { recursive: true, force: true }))
      const url = `sqlite:///${join(dir, 'cv.sqlite')}`
      return () => openDatabase<VerifierDatabase>(url, { migrations: 'verifier' })
    },
  },
  {
    name: 'postgresql',
    open: async () => {
      const schema = `t_venrol_${randomBytes(6).toString('hex')}`
      cleanups.push(() => dropPgSchema(PG_URL, schema))
      return () =>
        openDatabase<VerifierDatabase>(PG_URL, { pgSchema: schema, migrations: 'verifier', poolSize: 4 })
    },
  },
  {
    name: 'mariadb',
    open: async () => {
      const created = await createMysqlDatabase('venrol')
      cleanups.push(() => created.drop())
      return () => openDatabase<VerifierDatabase>(created.url, { migrations: 'verifier', poolSize: 4 })
    },
  },
]

for (const d of dialects) {
  describe(`enrolment in one transaction (${d.name})`, () => {
    let dbs: Kysely<VerifierDatabase>[] = []
    afterAll(async () => {
      for (const db of dbs) await db.destroy()
    })

    it('racing identical adds: one wins, the loser leaves no policy behind', async () => {
      const open = await d.open()
      dbs = [await open(), await open()]
      const [a, b] = await Promise.all(dbs.map((db) => makeVerifier({}, db)))
      if (!a || !b) throw new Error('verifiers')
      const repo = new VerifierRepository(dbs[0] as Kysely<VerifierDatabase>)
      const storeA = vi.spyOn(a.service.repo, 'enrolAgent')
      const storeB = vi.spyOn(b.service.repo, 'enrolAgent')
      for (let round = 0; round < 6; round++) {
        const id = `race-${round}`
        const results = await Promise.allSettled([
          a.service.enrol(id, body(`a${round}`)),
          b.service.enrol(id, body(`b${round}`)),
        ])
        const ok = results.filter((r) => r.status === 'fulfilled')
        const refused = results.filter((r) => r.status === 'rejected')
        expect(ok).toHaveLength(1)
        expect(refused).toHaveLength(1)
        expect((refused[0] as PromiseRejectedResult).reason).toMatchObject({
          statusCode: 409,
          message: `Agent of uuid ${id} already exists`,
        })
        const winner = results[0]?.status === 'fulfilled' ? `a${round}` : `b${round}`
        const loser = winner.startsWith('a') ? `b${round}` : `a${round}`
        const row = await repo.getAgent(id)
        expect((await repo.getAllowlistById(row?.ima_policy_id ?? -1))?.name).toBe(`rt-${winner}`)
        expect((await repo.getMbPolicyById(row?.mb_policy_id ?? -1))?.name).toBe(`mb-${winner}`)
        expect(await repo.getAllowlist(`rt-${loser}`)).toBeUndefined()
        expect(await repo.getMbPolicy(`mb-${loser}`)).toBeUndefined()
      }
      // the primary key decides every round: both adds reach the insert, whichever finishes its checks first
      expect(storeA.mock.calls.length + storeB.mock.calls.length).toBe(12)
      // an add of an agent long enrolled is refused by the same insert
      await expect(a.service.enrol('race-0', body('late'))).rejects.toMatchObject({
        statusCode: 409,
        message: 'Agent of uuid race-0 already exists',
      })
      expect((await repo.getAgent('race-0'))?.ima_policy_id).not.toBeNull()
      expect(await repo.getAllowlist('rt-late')).toBeUndefined()
      await a.app.close()
      await b.app.close()
    })

    it('racing adds whose policy bodies are already stored: one wins, the loser leaves no policy name behind', async () => {
      const [a, b] = await Promise.all(dbs.map((db) => makeVerifier({}, db)))
      if (!a || !b) throw new Error('verifiers')
      const repo = a.service.repo
      const seeded = (marker: string) => ({
        ...body(marker),
        runtime_policy: runtimePolicy('seed'),
        mb_policy: JSON.stringify({ marker: 'seed' }),
      })
      await a.service.enrol('seed', seeded('seed'))
      for (let round = 0; round < 4; round++) {
        const id = `stored-race-${round}`
        const results = await Promise.allSettled([
          a.service.enrol(id, seeded(`sa${round}`)),
          b.service.enrol(id, seeded(`sb${round}`)),
        ])
        expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1)
        const refused = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[]
        expect(refused).toHaveLength(1)
        expect(refused[0]?.reason).toMatchObject({ statusCode: 409 })
        const winner = results[0]?.status === 'fulfilled' ? `sa${round}` : `sb${round}`
        const loser = winner === `sa${round}` ? `sb${round}` : `sa${round}`
        const row = await repo.getAgent(id)
        expect((await repo.getAllowlistById(row?.ima_policy_id ?? -1))?.name).toBe(`rt-${winner}`)
        expect((await repo.getMbPolicyById(row?.mb_policy_id ?? -1))?.name).toBe(`mb-${winner}`)
        expect(await repo.getAllowlist(`rt-${loser}`)).toBeUndefined()
        expect(await repo.getMbPolicy(`mb-${loser}`)).toBeUndefined()
      }
      await a.app.close()
      await b.app.close()
    })

    it('agents enrolled with one policy text store it once and parse it once; the last one out collects it', async () => {
      const [a] = await Promise.all([makeVerifier({}, dbs[0] as Kysely<VerifierDatabase>)])
      if (!a) throw new Error('verifier')
      const parse = vi.spyOn(a.service.policies, 'compileRuntimeTextChecked')
      const repo = a.service.repo
      const shared = { ...body('shared'), runtime_policy_name: null, mb_policy_name: null }
      for (let i = 0; i < 3; i++) {
        const returned = await a.service.enrol(`same-${i}`, shared)
        // what enrolment hands the loop is the row as stored (PostgreSQL reads it back in the insert itself)
        const stored = await repo.getAgent(`same-${i}`)
        expect(returned).toEqual(stored)
        expect((await repo.getAllowlistById(stored?.ima_policy_id ?? -1))?.name).toBe(`same-${i}`)
        expect((await repo.getMbPolicyById(stored?.mb_policy_id ?? -1))?.name).toBe(`same-${i}`)
        expect(a.service.loop.has(`same-${i}`)).toBe(true)
      }
      expect(parse).toHaveBeenCalledTimes(1)
      const digest = createHash('sha256')
        .update(Buffer.from(runtimePolicy('shared'), 'base64').toString('utf8'))
        .digest('hex')
      const names = await repo.db
        .selectFrom('allowlists')
        .select(['name', 'body_digest'])
        .where('name', 'like', 'same-%')
        .orderBy('name')
        .execute()
      expect(names).toEqual([0, 1, 2].map((i) => ({ name: `same-${i}`, body_digest: digest })))
      const bodies = await repo.db
        .selectFrom('verifier_policy_bodies')
        .select((eb) => eb.fn.countAll<number | string>().as('n'))
        .where('digest', '=', digest)
        .executeTakeFirstOrThrow()
      expect(Number(bodies.n)).toBe(1)
      for (let i = 0; i < 3; i++) {
        expect(await repo.policyBody(digest)).toMatchObject({ kind: 'runtime', generator: 3 })
        await repo.deleteAgent(`same-${i}`)
      }
      expect(await repo.policyBody(digest)).toBeUndefined()
      await a.app.close()
    })

    it('a refused agent insert rolls its new policies back', async () => {
      const repo = new VerifierRepository(dbs[0] as Kysely<VerifierDatabase>)
      await expect(
        repo.enrolAgent(
          { agent_id: 'race-0', operational_state: AgentState.START },
          {
            runtime: { name: 'orphan-rt', body: bodyInput('{"rt":1}'), checksum: 'c', generator: 3 },
            mb: { name: 'orphan-mb', body: bodyInput('{"mb":1}') },
          },
        ),
      ).rejects.toBeInstanceOf(DuplicateError)
      expect(await repo.getAllowlist('orphan-rt')).toBeUndefined()
      expect(await repo.getMbPolicy('orphan-mb')).toBeUndefined()
      expect(await repo.policyBody(bodyInput('{"rt":1}').digest)).toBeUndefined()
      expect(await repo.policyBody(bodyInput('{"mb":1}').digest)).toBeUndefined()
    })
  })
}
