/**
 * An upstream Keylime database on MariaDB is recognised and refused with nothing changed: MySQL cannot roll back
 * the table changes of a takeover (docs/upgrade-from-upstream.md gives the way through another database).
 */
import { afterAll, describe, expect, it } from 'vitest'
import { DbError, openDatabase } from '../../src/db/database.ts'
import { UPSTREAM_REVISIONS } from '../../src/db/takeover/revisions.ts'
import { planTakeover } from '../../src/db/takeover/takeover.ts'
import { createMysqlDatabase, mysqlAdmin } from '../helpers/mysql.ts'

const cleanups: (() => Promise<void>)[] = []
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

async function tablesOf(database: string): Promise<string[]> {
  const admin = await mysqlAdmin()
  try {
    const [rows] = await admin.query(
      'SELECT table_name AS name FROM information_schema.tables WHERE table_schema = ? ORDER BY table_name',
      [database],
    )
    return (rows as { name: string }[]).map((r) => r.name)
  } finally {
    await admin.end()
  }
}

describe('an upstream Keylime database on MariaDB', () => {
  it.each([UPSTREAM_REVISIONS[0]?.id, UPSTREAM_REVISIONS.at(-1)?.id])(
    'at revision %s: refused by name at start and by the dry run, nothing changed',
    async (revision) => {
      const target = await createMysqlDatabase('upstream')
      cleanups.push(target.drop)
      // biome-ignore lint/suspicious/noExplicitAny: upstream's tables are not ours
      const setup = await openDatabase<any>(target.url, { migrations: false })
      await setup.schema
        .createTable('alembic_version_cloud_verifier')
        .addColumn('version_num', 'varchar(32)', (c) => c.notNull().primaryKey())
        .execute()
      await setup.insertInto('alembic_version_cloud_verifier').values({ version_num: revision }).execute()
      await setup.schema.createTable('verifiermain').addColumn('agent_id', 'varchar(80)').execute()
      const before = await tablesOf(target.name)
      await expect(planTakeover(setup, 'verifier')).rejects.toThrow(
        /does not take over upstream databases on MySQL/,
      )
      await setup.destroy()
      const start = openDatabase(target.url, { migrations: 'verifier' })
      await expect(start).rejects.toBeInstanceOf(DbError)
      await expect(start).rejects.toThrow(new RegExp(`Alembic revision ${revision}.*nothing was changed`))
      expect(await tablesOf(target.name)).toEqual(before)
    },
  )
})
