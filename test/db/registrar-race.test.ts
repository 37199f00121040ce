import { randomBytes } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { dropPgSchema, openDatabase } from '../../src/db/database.ts'
import {
  type RegistrarDatabase,
  RegistrarRepository,
  RegistrationConflictError,
  type RegistrationWrite,
} from '../../src/db/registrar-repository.ts'

const PG_URL = process.env.KEYLIME_TEST_PG_URL ?? 'postgresql://postgres@127.0.0.1:5432/test'
const schema = `t_regrace_${randomBytes(6).toString('hex')}`

const write: RegistrationWrite = {
  key: 'a2V5',
  aik_tpm: 'AAA=',
  ek_tpm: 'BBB=',
  ekcert: null,
  iak_tpm: null,
  idevid_tpm: null,
  iak_cert: null,
  idevid_cert: null,
  mtls_cert: null,
  ip: null,
  port: null,
}

// Two registrar processes sharing one PostgreSQL database: no in-process lock helps, the primary key decides.
describe('two registrars on one PostgreSQL database', () => {
  let a: RegistrarRepository
  let b: RegistrarRepository
  const dbs: { destroy(): Promise<void> }[] = []
  beforeAll(async () => {
    const dbA = await openDatabase<RegistrarDatabase>(PG_URL, { pgSchema: schema, migrations: 'registrar' })
    const dbB = await openDatabase<RegistrarDatabase>(PG_URL, { pgSchema: schema, migrations: 'registrar' })
    dbs.push(dbA, dbB)
    a = new RegistrarRepository(dbA)
    b = new RegistrarRepository(dbB)
  })
  afterAll(async () => {
    for (const db of dbs) await db.destroy()
    await dropPgSchema(PG_URL, schema)
  })

  it('a first-registration race yields one row and a 403-mapped conflict, never a 500', async () => {
    let conflicts = 0
    for (let round = 0; round < 10; round++) {
      const id = `race-${round}`
      // B starts its own registration while A's transaction is between its read and its insert
      let second: Promise<unknown> = Promise.resolve()
      const first = a.register(id, write, () => {
        second = b.register(id, write, () => {})
        // it may reject before `first` settles: mark it handled now, the assertions below still read its outcome
        second.catch(() => {})
      })
      const results = await Promise.allSettled([
        first,
        (async () => {
          await first.catch(() => {})
          return second
        })(),
      ])
      const ok = results.filter((r) => r.status === 'fulfilled')
      const failed = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[]
      expect(ok.length).toBeGreaterThanOrEqual(1)
      for (const f of failed) {
        expect(f.reason).toBeInstanceOf(RegistrationConflictError)
        expect((f.reason as RegistrationConflictError).statusCode).toBe(403)
      }
      conflicts += failed.length
      const row = await a.find(id)
      expect(row?.regcount).toBe(ok.length)
    }
    expect(conflicts).toBeGreaterThan(0)
  })
})
