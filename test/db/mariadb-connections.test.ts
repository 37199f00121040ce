/**
 * MariaDB connections that go away: a pooled connection the server kills (a restart, `wait_timeout`, an operator's
 * KILL) must not end the process with an unhandled `error` event, its failure is classified as the database being
 * unavailable (the API's 503, the loop's retry), and the pool serves the next query on a new connection.
 */
import { sql } from 'kysely'
import { afterAll, describe, expect, it } from 'vitest'
import { databaseUnavailableReason } from '../../src/api/server.ts'
import { openDatabase } from '../../src/db/database.ts'
import type { RegistrarDatabase } from '../../src/db/registrar-repository.ts'
import { createMysqlDatabase, mysqlAdmin } from '../helpers/mysql.ts'

const cleanups: (() => Promise<void>)[] = []
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

/** Kills every connection of the server's to `database` but the admin's own; returns how many. */
async function killConnections(database: string): Promise<number> {
  const admin = await mysqlAdmin()
  try {
    const [rows] = await admin.query(
      'SELECT id FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()',
      [database],
    )
    const ids = (rows as { id: number }[]).map((r) => r.id)
    for (const id of ids) await admin.query(`KILL CONNECTION ${Number(id)}`)
    return ids.length
  } finally {
    await admin.end()
  }
}

describe('MariaDB connections killed under the pool', () => {
  it('idle ones: the process lives on and the next queries run on new connections', async () => {
    const target = await createMysqlDatabase('conn')
    cleanups.push(target.drop)
    const db = await openDatabase<RegistrarDatabase>(target.url, { migrations: 'registrar', poolSize: 3 })
    cleanups.push(() => db.destroy())
    // three connections in the pool, idle
    await Promise.all([1, 2, 3].map(() => sql`SELECT SLEEP(0.05)`.execute(db)))
    expect(await killConnections(target.name)).toBeGreaterThanOrEqual(1)
    await new Promise((r) => setTimeout(r, 200))
    // a connection whose death the pool has not noticed yet fails as "unavailable", never as anything else
    const outcomes: string[] = []
    for (let i = 0; i < 6; i++) {
      try {
        await sql`SELECT 1`.execute(db)
        outcomes.push('ok')
      } catch (err) {
        outcomes.push(`unavailable:${databaseUnavailableReason(err)}`)
        expect(databaseUnavailableReason(err), String(err)).not.toBeNull()
      }
    }
    expect(outcomes.at(-1)).toBe('ok')
    expect(await db.selectFrom('registrarmain').selectAll().execute()).toEqual([])
  })

  it('one killed in the middle of a query: that query fails as unavailable, the next one runs', async () => {
    const target = await createMysqlDatabase('conn')
    cleanups.push(target.drop)
    const db = await openDatabase<RegistrarDatabase>(target.url, { migrations: 'registrar', poolSize: 2 })
    cleanups.push(() => db.destroy())
    // its outcome is taken at once: the failure arrives while the connection is being killed
    const outcome = sql`SELECT SLEEP(5)`.execute(db).then(
      () => null,
      (e: unknown) => e,
    )
    await new Promise((r) => setTimeout(r, 300))
    expect(await killConnections(target.name)).toBeGreaterThanOrEqual(1)
    const err = await outcome
    expect(err).not.toBeNull()
    expect(databaseUnavailableReason(err), String(err)).not.toBeNull()
    await expect(sql`SELECT 1 AS one`.execute(db)).resolves.toMatchObject({ rows: [{ one: 1 }] })
  })
})
