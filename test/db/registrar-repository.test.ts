import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Kysely } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  DbError,
  dropPgSchema,
  migrate,
  mysqlPoolOptions,
  openDatabase,
  parseDatabaseUrl,
} from '../../src/db/database.ts'
import * as registrarInitial from '../../src/db/migrations/2026112600_registrar.ts'
import {
  type ActivateOptions,
  type RegistrarDatabase,
  type RegistrarRecord,
  RegistrarRepository,
  type RegistrationWrite,
} from '../../src/db/registrar-repository.ts'
import { createMysqlDatabase, type MysqlTestDatabase } from '../helpers/mysql.ts'

const PG_URL = process.env.KEYLIME_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/test'

const write = (over: Partial<RegistrationWrite> = {}): RegistrationWrite => ({
  key: 'a2V5',
  aik_tpm: 'AAA=',
  ek_tpm: 'BBB=',
  ekcert: null,
  iak_tpm: null,
  idevid_tpm: null,
  iak_cert: null,
  idevid_cert: null,
  mtls_cert: 'disabled',
  ip: '127.0.0.1',
  port: 9002,
  ...over,
})

describe('parseDatabaseUrl', () => {
  it('maps upstream spellings', () => {
    expect(parseDatabaseUrl('sqlite', { dataDir: '/d', name: 'reg_data' })).toEqual({
      dialect: 'sqlite',
      target: '/d/reg_data.sqlite',
    })
    expect(parseDatabaseUrl('sqlite:////var/x.db').target).toBe('/var/x.db')
    expect(parseDatabaseUrl('postgresql+psycopg2://u@h/db')).toEqual({
      dialect: 'postgres',
      target: 'postgresql://u@h/db',
    })
    for (const url of ['mysql://u@h:3307/db', 'mysql+pymysql://u@h:3307/db', 'mysql+mysqldb://u@h:3307/db'])
      expect(parseDatabaseUrl(url)).toEqual({ dialect: 'mysql', target: 'mysql://u@h:3307/db' })
    expect(parseDatabaseUrl('mariadb+mariadbconnector://u@h/db?charset=utf8mb4').dialect).toBe('mysql')
    expect(mysqlPoolOptions('mysql://u:p%40ss@h/db?unix_socket=/run/mysqld/mysqld.sock')).toMatchObject({
      user: 'u',
      password: 'p@ss',
      database: 'db',
      socketPath: '/run/mysqld/mysqld.sock',
    })
    // a parameter the pool cannot honour (a TLS mode, say) is refused by name, never silently dropped
    expect(() => parseDatabaseUrl('mysql://u:secret@h/db?ssl_mode=REQUIRED')).toThrow(/ssl_mode/)
    expect(() => parseDatabaseUrl('mysql://u:secret@h/db?ssl_mode=REQUIRED')).not.toThrow(/secret/)
    expect(() => parseDatabaseUrl('mysql://u:secret@h')).toThrow(/names no database/)
    expect(() => parseDatabaseUrl('mysql://u:secret@h')).not.toThrow(/secret/)
    expect(() => parseDatabaseUrl('oracle://u:secret@h/db')).toThrow(DbError)
    expect(() => parseDatabaseUrl('oracle://u:secret@h/db')).not.toThrow(/secret/)
    expect(() => parseDatabaseUrl('sqlite')).toThrow(DbError)
  })
})

interface DialectCase {
  name: string
  open: () => Promise<{ db: Kysely<RegistrarDatabase>; cleanup: () => Promise<void> }>
  reopen: () => Promise<Kysely<RegistrarDatabase>>
}
const sqliteDir = mkdtempSync(join(tmpdir(), 'kl-db-'))
const pgSchema = `t_reg_${randomBytes(6).toString('hex')}`
const dialects: DialectCase[] = [
  {
    name: 'sqlite',
    open: async () => {
      const dir = sqliteDir
      const db = await openDatabase<RegistrarDatabase>('sqlite', {
        dataDir: dir,
        name: 'reg_data',
        migrations: 'registrar',
      })
      return {
        db,
        cleanup: async () => {
          await db.destroy()
          rmSync(dir, { recursive: true, force: true })
        },
      }
    },
    reopen: () => openDatabase('sqlite', { dataDir: sqliteDir, name: 'reg_data', migrations: 'registrar' }),
  },
  {
    name: 'postgres',
    open: async () => {
      const schema = pgSchema
      const db = await openDatabase<RegistrarDatabase>(PG_URL, { pgSchema: schema, migrations: 'registrar' })
      return {
        db,
        cleanup: async () => {
          await db.destroy()
          await dropPgSchema(PG_URL, schema)
        },
      }
    },
    reopen: () => openDatabase(PG_URL, { pgSchema, migrations: 'registrar' }),
  },
  (() => {
    let mysqlDb: MysqlTestDatabase | undefined
    return {
      name: 'mariadb',
      open: async () => {
        const created = await createMysqlDatabase('reg')
        mysqlDb = created
        const db = await openDatabase<RegistrarDatabase>(created.url, { migrations: 'registrar' })
        return {
          db,
          cleanup: async () => {
            await db.destroy()
            await created.drop()
          },
        }
      },
      reopen: () => openDatabase((mysqlDb as MysqlTestDatabase).url, { migrations: 'registrar' }),
    }
  })(),
]

for (const dialect of dialects) {
  describe(`RegistrarRepository on ${dialect.name}`, () => {
    let db: Kysely<RegistrarDatabase>
    let cleanup: () => Promise<void>
    let repo: RegistrarRepository
    beforeAll(async () => {
      ;({ db, cleanup } = await dialect.open())
      repo = new RegistrarRepository(db)
    })
    afterAll(async () => cleanup())

    const T0 = 1_800_000_000_000
    const LIFE = 300_000
    const reg = { now: T0, lifetimeMs: LIFE, maxPendingPerAgent: 3 }
    const act = (key: string, over: Partial<ActivateOptions> = {}): ActivateOptions => ({
      now: T0 + 1000,
      lifetimeMs: LIFE,
      matches: (k) => k === key,
      check: () => {},
      ...over,
    })

    it('a registration waits apart; activation makes it the record, a re-registration changes nothing until its own', async () => {
      const pending = await repo.register('agent-1', write(), () => {}, reg)
      expect(pending).toMatchObject({ agent_id: 'agent-1', key: 'a2V5', registered_at: T0, port: 9002 })
      expect(await repo.find('agent-1')).toBeUndefined()
      expect(await repo.listIds()).not.toContain('agent-1')
      expect(await repo.activate('agent-1', act('a2V5'))).toBe('activated')
      const first = await repo.find('agent-1')
      expect(first).toMatchObject({
        agent_id: 'agent-1',
        regcount: 1,
        active: true,
        key: 'a2V5',
        ek_tpm: 'BBB=',
      })
      expect(await repo.findPending('agent-1', { now: T0, lifetimeMs: LIFE })).toEqual([])

      let seen: RegistrarRecord | undefined
      await repo.register(
        'agent-1',
        write({ key: 'bmV3', ip: '10.0.0.9', port: 1234, aik_tpm: 'CCC=' }),
        (a) => {
          seen = a
        },
        reg,
      )
      expect(seen?.regcount).toBe(1)
      expect(await repo.find('agent-1')).toEqual(first)
      // the old challenge still answers (an agent repeating its activation); the new one swaps everything at once
      expect(await repo.activate('agent-1', act('a2V5'))).toBe('already_active')
      expect(await repo.activate('agent-1', act('bmV3'))).toBe('activated')
      expect(await repo.find('agent-1')).toMatchObject({
        regcount: 2,
        active: true,
        key: 'bmV3',
        ip: '10.0.0.9',
        port: 1234,
        aik_tpm: 'CCC=',
      })
    })

    it('a refused check writes nothing; a refusing activation check keeps the record and the registration', async () => {
      await expect(
        repo.register(
          'agent-2',
          write(),
          () => {
            throw new Error('refused')
          },
          reg,
        ),
      ).rejects.toThrow('refused')
      expect(await repo.findPending('agent-2', { now: T0, lifetimeMs: LIFE })).toEqual([])
      const before = await repo.find('agent-1')
      await repo.register('agent-1', write({ key: 'b3RoZXI=', ek_tpm: 'DDD=' }), () => {}, reg)
      await expect(
        repo.activate(
          'agent-1',
          act('b3RoZXI=', {
            check: () => {
              throw new Error('identity')
            },
          }),
        ),
      ).rejects.toThrow('identity')
      expect(await repo.find('agent-1')).toEqual(before)
      expect(await repo.findPending('agent-1', { now: T0, lifetimeMs: LIFE })).toHaveLength(1)
    })

    it('a wrong key deletes nothing; unknown agents are not_found', async () => {
      await repo.register('agent-3', write(), () => {}, reg)
      expect(await repo.activate('agent-3', act('nope'))).toBe('mismatch')
      expect(await repo.findPending('agent-3', { now: T0, lifetimeMs: LIFE })).toHaveLength(1)
      const active = await repo.find('agent-1')
      expect(await repo.activate('agent-1', act('nope'))).toBe('mismatch')
      expect(await repo.find('agent-1')).toEqual(active)
      expect(await repo.activate('agent-none', act('a2V5'))).toBe('not_found')
    })

    it('registrations expire: ignored by reads after their lifetime, deleted by the sweep', async () => {
      await repo.register('agent-5', write({ key: 'ZXhw' }), () => {}, reg)
      const late = T0 + LIFE + 1
      expect(await repo.findPending('agent-5', { now: late, lifetimeMs: LIFE })).toEqual([])
      expect(await repo.activate('agent-5', act('ZXhw', { now: late }))).toBe('not_found')
      const swept = await repo.deleteExpired({ now: late, lifetimeMs: LIFE })
      expect(swept).toBeGreaterThanOrEqual(1)
      const left = await db
        .selectFrom('registrarpending')
        .select('agent_id')
        .where('agent_id', '=', 'agent-5')
        .execute()
      expect(left).toEqual([])
    })

    it('keeps at most maxPendingPerAgent registrations per agent, dropping the oldest', async () => {
      for (let i = 0; i < 5; i++) {
        await repo.register('agent-6', write({ key: `k${i}` }), () => {}, { ...reg, now: T0 + i })
      }
      const live = await repo.findPending('agent-6', { now: T0 + 10, lifetimeMs: LIFE })
      expect(live.map((p) => p.key)).toEqual(['k4', 'k3', 'k2'])
      expect(await repo.activate('agent-6', act('k0', { now: T0 + 10 }))).toBe('mismatch')
      expect(await repo.activate('agent-6', act('k3', { now: T0 + 10 }))).toBe('activated')
      expect(await repo.findPending('agent-6', { now: T0 + 10, lifetimeMs: LIFE })).toEqual([])
    })

    it('lists activated ids and deletes record and registrations', async () => {
      await repo.register('agent-4', write(), () => {}, reg)
      expect(await repo.listIds()).not.toContain('agent-4')
      expect(await repo.delete('agent-4')).toBe(true)
      expect(await repo.delete('agent-4')).toBe(false)
      expect(await repo.listIds()).toEqual(expect.arrayContaining(['agent-1', 'agent-6']))
      expect(await repo.delete('agent-6')).toBe(true)
      expect(await repo.find('agent-6')).toBeUndefined()
    })

    it('reopening the same database finds its data and migrates nothing twice', async () => {
      const again = await dialect.reopen()
      try {
        expect((await new RegistrarRepository(again).find('agent-1'))?.regcount).toBe(2)
      } finally {
        await again.destroy()
      }
    })
  })
}

describe('migration 2026120600_registrar_pending on a database with unactivated rows', () => {
  for (const dialectName of ['sqlite', 'postgres', 'mariadb'] as const) {
    it(`moves them into registrarpending, where they expire (${dialectName})`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'kl-db-mig-'))
      const schema = `t_regmig_${randomBytes(6).toString('hex')}`
      const mysqlDb = dialectName === 'mariadb' ? await createMysqlDatabase('regmig') : undefined
      const open = (migrations: false | 'registrar') =>
        dialectName === 'sqlite'
          ? openDatabase<RegistrarDatabase>('sqlite', { dataDir: dir, name: 'reg_data', migrations })
          : mysqlDb
            ? openDatabase<RegistrarDatabase>(mysqlDb.url, { migrations })
            : openDatabase<RegistrarDatabase>(PG_URL, { pgSchema: schema, migrations })
      try {
        const old = await open(false)
        await migrate(old, { '2026112600_registrar': registrarInitial }, 'registrar', {
          schema: dialectName === 'postgres' ? schema : undefined,
        })
        const row = { ...write(), virtual: 0, provider_keys: null }
        await old
          .insertInto('registrarmain')
          .values([
            { ...row, agent_id: 'was-active', active: 1, regcount: 3 },
            { ...row, agent_id: 'never-active', key: 'bmV2ZXI=', active: 0, regcount: 1 },
          ])
          .execute()
        await old.destroy()
        const before = Date.now()
        const db = await open('registrar')
        try {
          const repo = new RegistrarRepository(db)
          expect(await repo.listIds()).toEqual(['was-active'])
          expect((await repo.find('was-active'))?.regcount).toBe(3)
          const moved = await repo.findPending('never-active', { now: Date.now(), lifetimeMs: 60_000 })
          expect(moved).toHaveLength(1)
          expect(moved[0]).toMatchObject({ key: 'bmV2ZXI=', ek_tpm: 'BBB=', port: 9002 })
          expect(moved[0]?.registered_at).toBeGreaterThanOrEqual(before)
          expect(await repo.deleteExpired({ now: Date.now() + 61_000, lifetimeMs: 60_000 })).toBe(1)
        } finally {
          await db.destroy()
        }
      } finally {
        rmSync(dir, { recursive: true, force: true })
        if (dialectName === 'postgres') await dropPgSchema(PG_URL, schema)
        await mysqlDb?.drop()
      }
    })
  }
})
