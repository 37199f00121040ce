/**
 * The fleet migrations on a database in the earlier shape (as an older release, or a converted upstream database,
 * leaves it), on SQLite and PostgreSQL: attestation state moves to its own table, policy texts move to bodies
 * stored once by digest; afterwards bodies nobody references are collected.
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Kysely } from 'kysely'
import { afterAll, describe, expect, it } from 'vitest'
import { AgentState } from '../../src/api/verifier/states.ts'
import { dropPgSchema, migrate, openDatabase } from '../../src/db/database.ts'
import { VERIFIER_MIGRATIONS } from '../../src/db/migrations/index.ts'
import { type VerifierDatabase, VerifierRepository } from '../../src/db/verifier-repository.ts'
import { PolicyStore } from '../../src/verifier/policy-store.ts'
import { createMysqlDatabase } from '../helpers/mysql.ts'

const PG_URL = process.env.KEYLIME_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/test'
const EARLIER = Object.fromEntries(
  Object.entries(VERIFIER_MIGRATIONS).filter(([name]) => name < '2026120720'),
)
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex')

const cleanups: (() => Promise<void>)[] = []
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

const dialects = [
  {
    name: 'sqlite',
    open: async () => {
      const dir = mkdtempSync(join(tmpdir(), 'kl-vmig-'))
      const db = await openDatabase<VerifierDatabase>(`sqlite:///${join(dir, 'cv.sqlite')}`, {
        migrations: false,
      })
      cleanups.push(async () => rmSync(dir, { recursive: true, force: true }))
      return { db, schema: undefined }
    },
  },
  {
    name: 'postgresql',
    open: async () => {
      const schema = `t_vmig_${randomBytes(5).toString('hex')}`
      const db = await openDatabase<VerifierDatabase>(PG_URL, {
        pgSchema: schema,
        migrations: false,
        poolSize: 2,
      })
      cleanups.push(() => dropPgSchema(PG_URL, schema))
      return { db, schema }
    },
  },
  {
    name: 'mariadb',
    open: async () => {
      const created = await createMysqlDatabase('vmig')
      cleanups.push(() => created.drop())
      const db = await openDatabase<VerifierDatabase>(created.url, { migrations: false, poolSize: 2 })
      return { db, schema: undefined }
    },
  },
]

for (const d of dialects) {
  describe(`fleet migrations (${d.name})`, () => {
    it('move attestation state and policy texts, then collect bodies nobody references', async () => {
      const { db, schema } = await d.open()
      cleanups.push(() => db.destroy())
      await migrate(db, EARLIER, 'verifier', { schema })
      // biome-ignore lint/suspicious/noExplicitAny: the earlier shape has columns the current types no longer model
      const old = db as Kysely<any>
      const shared = JSON.stringify({
        meta: { version: 1 },
        digests: { '/bin/a': ['aa'] },
        pad: 'x'.repeat(10_000),
      })
      const other = JSON.stringify({ meta: { version: 1 }, digests: { '/bin/b': ['bb'] } })
      for (const [name, text] of [
        ['p1', shared],
        ['p2', shared],
        ['p3', other],
      ])
        await old
          .insertInto('allowlists')
          .values({ name, ima_policy: text, generator: 3, checksum: null })
          .execute()
      await old.insertInto('mbpolicies').values({ name: 'm1', mb_policy: '{"mb": 1}' }).execute()
      const ids = Object.fromEntries(
        (await old.selectFrom('allowlists').select(['id', 'name']).execute()).map((r) => [r.name, r.id]),
      )
      const ima = JSON.stringify({
        version: 1,
        nextEntry: 42,
        pcr10: {},
        learnedKeyrings: {},
        progress: null,
      })
      await old
        .insertInto('verifiermain')
        .values([
          {
            agent_id: 'a1',
            ip: '127.0.0.1',
            port: 9002,
            operational_state: AgentState.GET_QUOTE,
            ima_policy_id: ids.p1,
            attestation_count: 7,
            last_received_quote: 1_700_000_001,
            last_successful_attestation: 1_700_000_000,
            tpm_clockinfo: '{"clock":5}',
            ima_state: ima,
            next_ima_ml_entry: 42,
            lease_holder: 'gone@host/1.2.3.4:1#0',
            lease_expires: 9_999_999_999_999,
          },
          {
            agent_id: 'a2',
            ip: '127.0.0.1',
            port: 9003,
            operational_state: AgentState.GET_QUOTE,
            ima_policy_id: ids.p2,
            attestation_count: 0,
          },
        ])
        .execute()

      await migrate(db, VERIFIER_MIGRATIONS, 'verifier', { schema })
      const repo = new VerifierRepository(db)

      const bodies = await db
        .selectFrom('verifier_policy_bodies')
        .select(['digest', 'kind'])
        .orderBy('kind')
        .execute()
      expect(bodies).toHaveLength(3)
      expect(new Set(bodies.map((b) => b.digest))).toEqual(
        new Set([sha256(shared), sha256(other), sha256('{"mb": 1}')]),
      )
      const lists = await db
        .selectFrom('allowlists')
        .select(['name', 'ima_policy', 'body_digest'])
        .orderBy('name')
        .execute()
      expect(lists).toEqual([
        { name: 'p1', ima_policy: null, body_digest: sha256(shared) },
        { name: 'p2', ima_policy: null, body_digest: sha256(shared) },
        { name: 'p3', ima_policy: null, body_digest: sha256(other) },
      ])
      expect((await repo.getAllowlist('p2'))?.ima_policy).toBe(shared)
      expect((await repo.getMbPolicy('m1'))?.mb_policy).toBe('{"mb": 1}')

      const a1 = await repo.getAgent('a1')
      expect(a1).toMatchObject({
        attestation_count: 7,
        tpm_clockinfo: '{"clock":5}',
        ima_state: ima,
        next_ima_ml_entry: 42,
        // the old per-row expiry no longer counts: the holder has no heartbeat row, so the agent is claimable
        lease_expires: null,
      })
      expect(Number(a1?.last_received_quote)).toBe(1_700_000_001)
      const legacy = await old
        .selectFrom('verifiermain')
        .select(['ima_state', 'attestation_count'])
        .where('agent_id', '=', 'a1')
        .executeTakeFirst()
      expect(legacy).toEqual({ ima_state: null, attestation_count: 0 })
      await db.updateTable('verifiermain').set({ verifier_id: 'v' }).execute()
      expect((await repo.claimAgents('v', 'me', Date.now(), 10)).map((r) => r.agent_id)).toEqual(['a1', 'a2'])

      // the loop's policy store: a body by digest, a row written inline in the old shape, a body changed in place
      const store = new PolicyStore(repo, 'example')
      const valid = JSON.stringify({
        meta: { version: 1, generator: 3 },
        digests: { '/bin/ok': ['cc'.repeat(32)] },
      })
      await db
        .insertInto('allowlists')
        .values({
          name: 'inline',
          ima_policy: valid,
          generator: 3,
          checksum: null,
          tpm_policy: null,
          body_digest: null,
        })
        .execute()
      // read back by name: MySQL has no INSERT … RETURNING
      const inlineId = await db
        .selectFrom('allowlists')
        .select('id')
        .where('name', '=', 'inline')
        .executeTakeFirstOrThrow()
      expect(await store.runtimeFor(inlineId.id)).not.toBeNull()
      await repo.insertAllowlist({
        name: 'stored',
        ima_policy: valid,
        checksum: sha256(valid),
        generator: 3,
        tpm_policy: null,
      })
      const stored = await repo.allowlistMeta('stored')
      await db
        .updateTable('verifier_policy_bodies')
        .set({ body: `${valid} ` })
        .where('digest', '=', sha256(valid))
        .execute()
      // (a store that compiled it already keeps what was enrolled under that digest; a fresh one reads the body)
      await expect(new PolicyStore(repo, 'example').runtimeFor(stored?.id as number)).rejects.toThrow(
        /does not match its digest/,
      )
      await repo.deleteAllowlist('stored')
      await repo.deleteAllowlist('inline')
      // deleting an agent deletes its attestation state with it
      await repo.deleteAgent('a1')
      expect(await db.selectFrom('verifier_attestation_state').select('agent_id').execute()).toEqual([
        { agent_id: 'a2' },
      ])
      // collection: a body goes when the last name referencing it goes, not before
      await repo.deleteAllowlist('p3')
      await repo.deleteAllowlist('p1')
      expect(await repo.policyBody(sha256(other))).toBeUndefined()
      expect((await repo.policyBody(sha256(shared)))?.kind).toBe('runtime')
      await repo.updateAllowlist('p2', {
        ima_policy: other,
        checksum: sha256(other),
        generator: 3,
        tpm_policy: null,
      })
      expect(await repo.policyBody(sha256(shared))).toBeUndefined()
      expect((await repo.getAllowlist('p2'))?.ima_policy).toBe(other)
      await repo.deleteMbPolicy('m1')
      expect(await db.selectFrom('verifier_policy_bodies').select('digest').execute()).toEqual([
        { digest: sha256(other) },
      ])
    })
  })
}
