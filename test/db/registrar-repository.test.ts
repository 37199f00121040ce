import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Kysely } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DbError, dropPgSchema, openDatabase, parseDatabaseUrl } from '../../src/db/database.ts'
import {
  type RegistrarDatabase,
  RegistrarRepository,
  type RegistrationWrite,
} from '../../src/db/registrar-repository.ts'

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
    expect(() => parseDatabaseUrl('mysql://u:secret@h/db')).toThrow(DbError)
    expect(() => parseDatabaseUrl('mysql://u:secret@h/db')).not.toThrow(/secret/)
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

    it('inserts, bumps regcount on re-registration and resets active', async () => {
      const first = await repo.register('agent-1', write(), () => {})
      expect(first).toMatchObject({
        agent_id: 'agent-1',
        regcount: 1,
        active: false,
        port: 9002,
        ek_tpm: 'BBB=',
      })
      expect(await repo.activate('agent-1', (k) => k === 'a2V5')).toBe('activated')
      expect((await repo.find('agent-1'))?.active).toBe(true)
      const second = await repo.register('agent-1', write({ key: 'bmV3' }), (existing) => {
        expect(existing?.regcount).toBe(1)
      })
      expect(second).toMatchObject({ regcount: 2, active: false, key: 'bmV3' })
    })

    it('a refused check writes nothing', async () => {
      await expect(
        repo.register('agent-2', write(), () => {
          throw new Error('refused')
        }),
      ).rejects.toThrow('refused')
      expect(await repo.find('agent-2')).toBeUndefined()
    })

    it('a wrong key deletes the record; unknown agents are not_found', async () => {
      await repo.register('agent-3', write(), () => {})
      expect(await repo.activate('agent-3', () => false)).toBe('mismatch_deleted')
      expect(await repo.find('agent-3')).toBeUndefined()
      expect(await repo.activate('agent-3', () => true)).toBe('not_found')
    })

    it('lists ids and deletes', async () => {
      await repo.register('agent-4', write(), () => {})
      expect(await repo.listIds()).toEqual(expect.arrayContaining(['agent-1', 'agent-4']))
      expect(await repo.delete('agent-4')).toBe(true)
      expect(await repo.delete('agent-4')).toBe(false)
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
