/**
 * Takeover of databases left by upstream Keylime 7.x (src/db/takeover), on SQLite, PostgreSQL and MariaDB: for every Alembic
 * revision of 7.x a generated upstream database (test/helpers/upstream-db.ts) is opened by our services' database
 * factory, and every row is found again, converted, in the shape a new database has; the verifier then keeps
 * attesting the agents it took over, continuing their IMA lists where upstream stopped. Unknown and 6.x revisions
 * are refused without a change; the dry run changes nothing.
 */
import { createHash, randomBytes, webcrypto } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as x509 from '@peculiar/x509'
import { type Kysely, sql } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type SimFleet, simMeasure, startSimFleet } from '../../bench/fleet-agents.ts'
import { AgentState } from '../../src/api/verifier/states.ts'
import { DbError, dropPgSchema, type OpenDatabaseOptions, openDatabase } from '../../src/db/database.ts'
import { REGISTRAR_MIGRATIONS, VERIFIER_MIGRATIONS } from '../../src/db/migrations/index.ts'
import { planTakeover, type TakeoverReport } from '../../src/db/takeover/index.ts'
import { type VerifierDatabase, VerifierRepository } from '../../src/db/verifier-repository.ts'
import { runKeylime } from '../helpers/cli.ts'
import { createMysqlDatabase } from '../helpers/mysql.ts'
import { runtimePolicyJson } from '../helpers/runtime-policy.ts'
import {
  buildUpstreamRegistrarDb,
  buildUpstreamVerifierDb,
  UPSTREAM_REVISION_IDS,
  type UpstreamPolicy,
  type UpstreamRegistrarAgent,
  type UpstreamVerifierAgent,
} from '../helpers/upstream-db.ts'
import { makeVerifier, waitFor } from '../unit/verifier/harness.ts'

const PG_URL = process.env.KEYLIME_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/test'
// biome-ignore lint/suspicious/noExplicitAny: upstream and our tables side by side
type AnyDb = Kysely<any>
// biome-ignore lint/suspicious/noExplicitAny: rows of either dialect
type AnyRow = Record<string, any>

interface Target {
  url: string
  opts: OpenDatabaseOptions
  cleanup(): Promise<void>
}

const dialects: { name: string; target(): Promise<Target> }[] = [
  {
    name: 'sqlite',
    target: async () => {
      const dir = mkdtempSync(join(tmpdir(), 'kl-takeover-'))
      return {
        url: `sqlite:///${join(dir, 'cv_data.sqlite')}`,
        opts: {},
        cleanup: async () => rmSync(dir, { recursive: true, force: true }),
      }
    },
  },
  {
    name: 'postgres',
    target: async () => {
      const schema = `t_takeover_${randomBytes(6).toString('hex')}`
      return {
        url: PG_URL,
        opts: { pgSchema: schema, poolSize: 2 },
        cleanup: () => dropPgSchema(PG_URL, schema),
      }
    },
  },
  {
    name: 'mariadb',
    target: async () => {
      // upstream's tables in the server's default collation, as upstream's services leave them
      const created = await createMysqlDatabase('takeover', { serverCollation: true })
      return { url: created.url, opts: { poolSize: 2 }, cleanup: created.drop }
    },
  },
]

const sha256 = (s: string) => createHash('sha256').update(s).digest('hex')

function runtimePolicy(paths: Record<string, string>): string {
  return runtimePolicyJson(
    Object.fromEntries(Object.entries(paths).map(([p, content]) => [p, [sha256(content)]])),
  )
}

/** A DSSE envelope as upstream stores a signed policy (the signature was checked when it was uploaded). */
function envelope(payload: string): string {
  return JSON.stringify({
    payload: Buffer.from(payload).toString('base64'),
    payloadType: 'application/vnd.keylime+json',
    signatures: [{ keyid: 'k1', sig: Buffer.alloc(64, 9).toString('base64') }],
  })
}

let certDer: string
beforeAll(async () => {
  const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' }
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      name: 'CN=agent-mtls',
      keys,
      signingAlgorithm: alg,
      notBefore: new Date(),
      notAfter: new Date(Date.now() + 1e10),
    },
    webcrypto as never,
  )
  certDer = Buffer.from(cert.rawData).toString('base64')
})

const AK = Buffer.from('0118000b00050072000000100016000b0800000000000100', 'hex').toString('base64')
const PCR10 = Buffer.alloc(32, 0xab)
const mbRefstate = JSON.stringify({ scrtm_and_bios: [{ scrtm: '0x1234' }], has_secureboot: true })

function fixtureAgents(): { agents: UpstreamVerifierAgent[]; policies: UpstreamPolicy[] } {
  const plain = runtimePolicy({ '/usr/bin/good': 'good binary' })
  const signed = runtimePolicy({ '/usr/sbin/sshd': 'sshd' })
  return {
    policies: [
      { name: 'agent-a', ima_policy: plain, checksum: sha256(plain), generator: 3 },
      {
        name: 'fleet-signed',
        ima_policy: envelope(signed),
        checksum: sha256(envelope(signed)),
        generator: 3,
      },
    ],
    agents: [
      {
        agent_id: 'agent-a',
        ip: '10.0.0.1',
        port: 9002,
        v: Buffer.alloc(32, 1).toString('base64'),
        ak_tpm: AK,
        tpm_policy: JSON.stringify({ '15': ['00'.repeat(32)], mask: '0x8000' }),
        ima_policy_id: 1,
        mb_refstate: mbRefstate,
        ima: { boottime: 1_780_000_000, pcr10: PCR10, nextEntry: 5 },
      },
      {
        agent_id: 'agent-b',
        ip: 'fd00::2',
        port: 9002,
        v: Buffer.alloc(32, 2).toString('base64'),
        ak_tpm: AK,
        tpm_policy: JSON.stringify({ mask: '0x0' }),
        ima_policy_id: 2,
        operational_state: AgentState.INVALID_QUOTE,
        severity_level: 6,
        last_event_id: 'ima.validation.ima-ng.not_in_allowlist',
        mtls_cert: `-----BEGIN CERTIFICATE-----\n${certDer}\n-----END CERTIFICATE-----\n`,
      },
      {
        agent_id: 'agent-c',
        ip: '10.0.0.3',
        port: 9002,
        v: Buffer.alloc(32, 3).toString('base64'),
        ak_tpm: AK,
        tpm_policy: JSON.stringify({ mask: '0x0' }),
        accept_tpm_signing_algs: ['rsassa'],
      },
    ],
  }
}

function registrarAgents(): UpstreamRegistrarAgent[] {
  const base = {
    aik_tpm: AK,
    ek_tpm: AK,
    ekcert: certDer,
    ip: '10.0.0.1',
    port: 9002,
    regcount: 2,
  }
  return [
    {
      ...base,
      agent_id: 'agent-a',
      key: 'a'.repeat(44),
      mtlsCertDer: certDer,
      active: true,
      iak: { iak_tpm: AK, idevid_tpm: AK, iak_cert: certDer, idevid_cert: certDer },
    },
    { ...base, agent_id: 'agent-never-activated', key: 'b'.repeat(44), mtlsCertDer: null, active: false },
  ]
}

async function columnsOf(db: AnyDb, table: string, kind: string): Promise<string[]> {
  const q =
    kind === 'mariadb'
      ? sql<{
          c: string
        }>`select concat(column_name, ' ', column_type, ' ', is_nullable, ' ', coalesce(column_default, '')) as c
         from information_schema.columns where table_schema = database() and table_name = ${table}`
      : kind === 'postgres'
        ? sql<{
            c: string
          }>`select column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '') as c
         from information_schema.columns where table_schema = current_schema() and table_name = ${table}`
        : sql<{
            c: string
          }>`select name || ' ' || type || ' ' || "notnull" || ' ' || coalesce(dflt_value, '') as c
         from pragma_table_info(${table})`
  return (await q.execute(db)).rows.map((r) => r.c.replace(/_seq\d*'/, "_seq'")).sort()
}

async function tables(db: AnyDb, kind: string): Promise<string[]> {
  const q =
    kind === 'mariadb'
      ? sql<{
          n: string
        }>`select table_name as n from information_schema.tables where table_schema = database()`
      : kind === 'postgres'
        ? sql<{
            n: string
          }>`select table_name as n from information_schema.tables where table_schema = current_schema()`
        : sql<{ n: string }>`select name as n from sqlite_master where type = 'table'`
  return (await q.execute(db)).rows.map((r) => r.n).sort()
}

const OUR_TABLES = ['verifiermain', 'allowlists', 'mbpolicies', 'registrarmain', 'registrarpending']

/**
 * PostgreSQL runs the revisions whose shapes differ there (first and last, SERIAL ids and foreign keys of the
 * policy tables, booleans of the registrar, plain-token sessions); SQLite runs every revision.
 */
const PG_REVISIONS = ['f838d3cdeead', '9d2f6fab52b1', '330024be7bef', '460d7adda633', 'a59cc9366774']
/** MariaDB: the first and the last revision (AUTO_INCREMENT ids, LONGTEXT policies, TINYINT booleans). */
const MARIADB_REVISIONS = [UPSTREAM_REVISION_IDS[0] as string, UPSTREAM_REVISION_IDS.at(-1) as string]

for (const dialect of dialects) {
  const pg = dialect.name === 'postgres'
  const kind = dialect.name
  describe(`takeover of upstream databases (${dialect.name})`, () => {
    const cleanups: (() => Promise<void>)[] = []
    afterAll(async () => {
      for (const c of cleanups.splice(0).reverse()) await c()
    })
    async function fresh(): Promise<Target> {
      const t = await dialect.target()
      cleanups.push(() => t.cleanup())
      return t
    }

    /** The shape of our tables in a new database, to compare the taken-over ones with. */
    let freshShape: Record<string, string[]>
    beforeAll(async () => {
      const t = await fresh()
      const v = await openDatabase(t.url, { ...t.opts, migrations: 'verifier' })
      const r = await openDatabase(t.url, { ...t.opts, migrations: 'registrar' })
      freshShape = {}
      for (const table of OUR_TABLES) freshShape[table] = await columnsOf(v, table, kind)
      await v.destroy()
      await r.destroy()
    })

    it.each(kind === 'mariadb' ? MARIADB_REVISIONS : pg ? PG_REVISIONS : UPSTREAM_REVISION_IDS)(
      'revision %s: every row kept, converted, in the shape of a new database',
      async (rev) => {
        const t = await fresh()
        const raw: AnyDb = await openDatabase(t.url, { ...t.opts, migrations: false })
        const fixture = fixtureAgents()
        await buildUpstreamVerifierDb(raw, rev, { ...fixture, pushAttestations: true })
        await buildUpstreamRegistrarDb(raw, rev, registrarAgents())
        const pushBefore = (await tables(raw, kind)).filter((n) =>
          ['attestations', 'evidence_items'].includes(n),
        )
        await raw.destroy()

        const reports: TakeoverReport[] = []
        const onTakeover = (r: TakeoverReport) => reports.push(r)
        const db: AnyDb = await openDatabase(t.url, { ...t.opts, migrations: 'verifier', onTakeover })
        const reg: AnyDb = await openDatabase(t.url, { ...t.opts, migrations: 'registrar', onTakeover })
        try {
          expect(reports.map((r) => [r.service, r.revision])).toEqual([
            ['verifier', rev],
            ['registrar', rev],
          ])
          for (const table of OUR_TABLES)
            expect(await columnsOf(db, table, kind), table).toEqual(freshShape[table])
          const applied = async (service: string) =>
            (
              await sql<{
                name: string
              }>`select name from ${sql.table(`kysely_migration_${service}`)}`.execute(db)
            ).rows
              .map((r) => r.name)
              .sort()
          expect(await applied('verifier')).toEqual(Object.keys(VERIFIER_MIGRATIONS).sort())
          expect(await applied('registrar')).toEqual(Object.keys(REGISTRAR_MIGRATIONS).sort())
          const all = await tables(db, kind)
          expect(all).toContain('upstream_alembic_version_cloud_verifier')
          expect(all).not.toContain('alembic_version_cloud_verifier')
          expect(all.filter((n) => n.startsWith('upstream_takeover_'))).toEqual([])

          // read as the verifier reads them: the fleet migrations moved attestation state and policy texts
          const repo = new VerifierRepository(db as Kysely<VerifierDatabase>)
          const agents = await repo.listAgents()
          expect(agents.map((a) => a.agent_id)).toEqual(['agent-a', 'agent-b', 'agent-c'])
          const [a, b, c] = agents as unknown as [AnyRow, AnyRow, AnyRow]
          expect(a.tpm_policy).toBe(fixture.agents[0]?.tpm_policy)
          expect(JSON.parse(a.accept_tpm_hash_algs)).toEqual(['sha512', 'sha384', 'sha256'])
          expect(JSON.parse(c.accept_tpm_signing_algs)).toEqual(['rsassa'])
          expect(Number(a.attestation_count)).toBe(17)
          expect(Number(a.next_ima_ml_entry)).toBe(5)
          expect(JSON.parse(a.ima_state)).toEqual({
            version: 1,
            nextEntry: 5,
            pcr10: { sha256: PCR10.toString('hex') },
            learnedKeyrings: {},
            progress: null,
          })
          expect(JSON.parse(a.tpm_clockinfo)).toEqual({
            clock: 1000,
            resetCount: 0,
            restartCount: 0,
            safe: 1,
          })
          expect(a.lease_holder).toBeNull()
          expect(Number(b.operational_state)).toBe(AgentState.INVALID_QUOTE)
          expect(b.last_event_id).toBe('ima.validation.ima-ng.not_in_allowlist')
          expect(b.ip).toBe('fd00::2')
          expect(b.mtls_cert).toContain(certDer)
          expect(c.ima_state).toBeNull()
          expect(Number(c.accept_attestations)).toBe(1)

          const policies = (await Promise.all(
            (
              await db.selectFrom('allowlists').select('name').orderBy('id').execute()
            ).map((p) => repo.getAllowlist(p.name)),
          )) as unknown as [AnyRow, AnyRow]
          expect(policies.map((p) => [Number(p.id), p.name])).toEqual([
            [1, 'agent-a'],
            [2, 'fleet-signed'],
          ])
          expect(policies[0].ima_policy).toBe(fixture.policies[0]?.ima_policy)
          expect(JSON.parse(policies[1].ima_policy).digests['/usr/sbin/sshd']).toEqual([sha256('sshd')])
          expect(policies[1].checksum).toBe(fixture.policies[1]?.checksum)
          expect(Number(a.ima_policy_id)).toBe(1)
          const mb = await repo.getMbPolicyById(a.mb_policy_id)
          expect(mb).toMatchObject({ name: 'agent-a', mb_policy: mbRefstate })
          // ids handed out after the takeover do not collide with the ones carried over
          await db.insertInto('allowlists').values({ name: 'after-takeover', ima_policy: null }).execute()
          const added = await db
            .selectFrom('allowlists')
            .select('id')
            .where('name', '=', 'after-takeover')
            .executeTakeFirst()
          expect(Number(added?.id)).toBeGreaterThan(2)

          for (const push of pushBefore) {
            const n = await sql<{ n: number }>`select count(*) as n from ${sql.table(push)}`.execute(db)
            expect(Number(n.rows[0]?.n), push).toBe(1)
          }
          const idx = UPSTREAM_REVISION_IDS.indexOf(rev)
          // the push migration creates `sessions` where the takeover left none; upstream's hashed-token sessions
          // are kept, plain-token ones were dropped (agents open new ones)
          expect(all).toContain('sessions')
          const sessions = await sql<{ n: number }>`select count(*) as n from sessions`.execute(db)
          expect(Number(sessions.rows[0]?.n)).toBe(
            idx >= UPSTREAM_REVISION_IDS.indexOf('5a8b2c3d4e6f') ? 1 : 0,
          )

          const records = await reg.selectFrom('registrarmain').selectAll().execute()
          expect(records.map((r) => r.agent_id)).toEqual(['agent-a'])
          const rec = records[0] as AnyRow
          expect(Number(rec.active)).toBe(1)
          expect(Number(rec.regcount)).toBe(2)
          expect(rec.ekcert).toBe(certDer)
          expect(rec.mtls_cert).toMatch(/^-----BEGIN CERTIFICATE-----\n/)
          expect(rec.mtls_cert.replace(/-----[A-Z ]+-----|\s/g, '')).toBe(certDer)
          if (idx >= UPSTREAM_REVISION_IDS.indexOf('00766b7fd0c5')) expect(rec.iak_cert).toBe(certDer)
          const pending = await reg.selectFrom('registrarpending').select('agent_id').execute()
          expect(pending.map((p) => p.agent_id)).toEqual(['agent-never-activated'])
        } finally {
          await db.destroy()
          await reg.destroy()
        }
        // a second start finds its own database: nothing is taken over again
        const again = await openDatabase(t.url, { ...t.opts, migrations: 'verifier', onTakeover })
        await again.destroy()
        expect(reports).toHaveLength(2)
      },
    )

    it('refuses an Alembic revision it does not know, and one of Keylime 6.x, changing nothing', async () => {
      for (const [rev, message] of [
        ['0123456789ab', /revision 0123456789ab, which Keylime TS does not know.*nothing was changed/],
        ['8c0f8ded1f90', /8c0f8ded1f90, from Keylime 6\.x: run upstream Keylime 7\.x on it once/],
      ] as const) {
        const t = await fresh()
        const raw: AnyDb = await openDatabase(t.url, { ...t.opts, migrations: false })
        await buildUpstreamVerifierDb(raw, 'f838d3cdeead', fixtureAgents())
        await sql`update alembic_version_cloud_verifier set version_num = ${rev}`.execute(raw)
        const before = await tables(raw, kind)
        await raw.destroy()
        await expect(openDatabase(t.url, { ...t.opts, migrations: 'verifier' })).rejects.toThrow(message)
        const after: AnyDb = await openDatabase(t.url, { ...t.opts, migrations: false })
        expect(await tables(after, kind)).toEqual(before)
        await after.destroy()
      }
    })

    if (kind === 'mariadb')
      it('a takeover failing halfway undoes its table changes (MySQL cannot roll them back)', async () => {
        const t = await fresh()
        const raw: AnyDb = await openDatabase(t.url, { ...t.opts, migrations: false })
        const rev = UPSTREAM_REVISION_IDS.at(-1) as string
        await buildUpstreamVerifierDb(raw, rev, { ...fixtureAgents(), pushAttestations: true })
        // the name verifiermain is to be set aside under is taken: the third rename fails, after two succeeded
        await sql`create table upstream_takeover_verifiermain (x integer)`.execute(raw)
        const before = await tables(raw, kind)
        const shapes = async (db: AnyDb) =>
          Promise.all(['allowlists', 'verifiermain', 'attestations'].map((x) => columnsOf(db, x, kind)))
        const shapeBefore = await shapes(raw)
        await expect(openDatabase(t.url, { ...t.opts, migrations: 'verifier' })).rejects.toThrow(DbError)
        // kysely's own bookkeeping tables stay, empty: the next start still finds upstream's database
        expect((await tables(raw, kind)).filter((x) => !x.startsWith('kysely_migration'))).toEqual(before)
        expect(await raw.selectFrom('kysely_migration_verifier').selectAll().execute()).toEqual([])
        expect(await shapes(raw)).toEqual(shapeBefore)
        // the push table's reference into verifiermain is back: a push row of an unknown agent is refused
        await expect(
          raw
            .insertInto('attestations')
            .values({
              agent_id: 'nobody',
              index: 0,
              system_info__boot_time: 'x',
              capabilities_received_at: 'x',
            })
            .execute(),
        ).rejects.toMatchObject({ code: 'ER_NO_REFERENCED_ROW_2' })
        // with the obstacle gone, the takeover goes through
        await sql`drop table upstream_takeover_verifiermain`.execute(raw)
        await raw.destroy()
        const db: AnyDb = await openDatabase(t.url, { ...t.opts, migrations: 'verifier' })
        expect((await new VerifierRepository(db as Kysely<VerifierDatabase>).listAgents()).length).toBe(3)
        await db.destroy()
      })

    it('dry run: reports what would change and changes nothing; auto_migrate_db off refuses to start', async () => {
      const t = await fresh()
      const raw: AnyDb = await openDatabase(t.url, { ...t.opts, migrations: false })
      await buildUpstreamVerifierDb(raw, '160f932fde5b', fixtureAgents())
      const before = await tables(raw, kind)
      const report = await planTakeover(raw, 'verifier')
      expect(report?.revision).toBe('160f932fde5b')
      expect(report?.description).toBe('160f932fde5b (Keylime 7.9.0)')
      expect(report?.tables.find((x) => x.name === 'verifiermain')?.rows).toBe(3)
      expect(report?.tables.find((x) => x.name === 'mbpolicies')?.note).toMatch(
        /3 from verifiermain.mb_refstate/,
      )
      expect(report?.conversions['tpm_policy double JSON encoding removed']).toBe(3)
      expect(report?.conversions['runtime policy kept as its verified DSSE payload']).toBe(1)
      expect(await tables(raw, kind)).toEqual(before)
      expect(
        Number((await raw.selectFrom('verifiermain').select(sql`count(*)`.as('n')).executeTakeFirst())?.n),
      ).toBe(3)
      await raw.destroy()
      await expect(
        openDatabase(t.url, { ...t.opts, migrations: false, service: 'verifier' }),
      ).rejects.toThrow(
        /upstream Keylime's \(Alembic revision 160f932fde5b \(Keylime 7\.9\.0\)\) and auto_migrate_db is off/,
      )
    })

    const attested = pg || kind === 'mariadb' ? [UPSTREAM_REVISION_IDS.at(-1)] : UPSTREAM_REVISION_IDS
    for (const rev of attested as string[]) {
      it(`revision ${rev}: the verifier keeps attesting the agents it took over, IMA lists continued`, async () => {
        const fleet: SimFleet = await startSimFleet({ count: 2, shareKeys: true })
        cleanups.push(() => fleet.close())
        const t = await fresh()
        const raw: AnyDb = await openDatabase(t.url, { ...t.opts, migrations: false })
        // upstream attested these five entries already; the policy allows only what comes after them, so a
        // replay from entry 0 would fail the agent: passing proves the list continues where upstream stopped
        const [withIma, plain] = fleet.agents as [SimFleet['agents'][number], SimFleet['agents'][number]]
        for (let i = 0; i < 5; i++) simMeasure(withIma, `/upstream/era/${i}`, `old ${i}`)
        const pcr10 = Buffer.from(withIma.quoter.pcrs.get(10) as Buffer)
        const policy = runtimePolicy({ '/usr/bin/new': 'new binary' })
        const agentRow = (a: SimFleet['agents'][number], mask: string, pcrs: number[]) => ({
          agent_id: a.id,
          ip: a.ip,
          port: fleet.port,
          v: Buffer.alloc(32, 7).toString('base64'),
          ak_tpm: a.quoter.akTpm,
          tpm_policy: JSON.stringify({
            ...Object.fromEntries(
              pcrs.map((p) => [String(p), [(a.quoter.pcrs.get(p) as Buffer).toString('hex')]]),
            ),
            mask,
          }),
          accept_tpm_signing_algs: ['ecschnorr', 'rsassa', 'ecdsa'],
          operational_state: AgentState.GET_QUOTE,
        })
        await buildUpstreamVerifierDb(raw, rev, {
          policies: [{ name: withIma.id, ima_policy: policy, checksum: sha256(policy), generator: 3 }],
          agents: [
            {
              ...agentRow(withIma, '0x8000', [15]),
              ima_policy_id: 1,
              // upstream stores boottime 0 for agents that do not report it (seen with upstream's own services)
              ima: { boottime: 0, pcr10, nextEntry: 5 },
            },
            agentRow(plain, '0x8000', [15]),
          ],
        })
        await raw.destroy()
        const db = await openDatabase<VerifierDatabase>(t.url, { ...t.opts, migrations: 'verifier' })
        const v = await makeVerifier({ quoteIntervalMs: 100 }, db, '127.0.0.1:0')
        cleanups.push(async () => {
          await v.service.stop()
          await db.destroy()
        })
        simMeasure(withIma, '/usr/bin/new', 'new binary')
        await v.service.start()
        await waitFor(
          () => withIma.quotes >= 3 && plain.quotes >= 3,
          15_000,
          'quotes from the taken-over agents',
        )
        await v.service.loop.flush()
        const rows = await v.service.repo.listAgents()
        for (const row of rows) {
          expect(row.operational_state, `${row.agent_id}: ${row.last_event_id}`).toBe(AgentState.GET_QUOTE)
          expect(Number(row.attestation_count)).toBeGreaterThan(17)
        }
        const imaRow = rows.find((r) => r.agent_id === withIma.id)
        expect(JSON.parse(imaRow?.ima_state ?? '{}').nextEntry).toBe(6)
        expect(Number(imaRow?.next_ima_ml_entry)).toBe(6)
      })
    }
  })
}

describe('keylime db upgrade', () => {
  it('prints the takeover with --dry-run without changing anything, then performs it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kl-takeover-cli-'))
    try {
      const url = `sqlite:///${join(dir, 'cv_data.sqlite')}`
      const raw: AnyDb = await openDatabase(url, { migrations: false })
      await buildUpstreamVerifierDb(raw, '5a8b2c3d4e6f', fixtureAgents())
      await raw.destroy()
      const args = ['db', 'upgrade', '--service', 'verifier', '--database-url', url]
      const dry = await runKeylime([...args, '--dry-run'])
      expect(dry.code, dry.err).toBe(0)
      expect(dry.out).toContain(
        'verifier database: upstream Keylime at Alembic revision 5a8b2c3d4e6f (Keylime 7.14.0); would be taken over in place',
      )
      expect(dry.out).toMatch(/verifiermain: 3 rows/)
      expect(dry.out).toContain('verifier database: would run 2026120601_verifier_events_leases')
      const again = await runKeylime([...args, '--dry-run'])
      expect(again.out).toBe(dry.out)
      const done = await runKeylime(args)
      expect(done.code, done.err).toBe(0)
      expect(done.out).toContain('was taken over in place')
      expect(done.out).toContain('verifier database: ran 2026120601_verifier_events_leases')
      const after = await runKeylime([...args, '--dry-run'])
      expect(after.out).toBe('verifier database: no migration to run\n')
      const bad = await runKeylime(['db', 'upgrade', '--service', 'tenant', '--database-url', url])
      expect(bad.code).toBe(2)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
