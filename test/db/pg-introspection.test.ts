/**
 * The migrator's view of PostgreSQL is the pinned schema only: other tenants' schemas (with their own migration
 * tables, or dropped while we migrate) neither count as ours nor break the migration.
 */
import pg from 'pg'
import { afterAll, expect, it } from 'vitest'
import { openDatabase } from '../../src/db/database.ts'
import { SHARED_SERVERS } from '../helpers/db-servers.ts'

const postgres = SHARED_SERVERS.find((s) => s.name === 'PostgreSQL')
if (postgres === undefined) throw new Error('PostgreSQL is one of the shared servers')
const cleanups: (() => Promise<void>)[] = []
afterAll(async () => {
  for (const c of cleanups.splice(0).reverse()) await c()
})

it('lists the tables of the pinned schema only, and migrates while another schema is dropped', async () => {
  const ours = await postgres.open('introspect')
  const other = await postgres.open('introspect_other')
  cleanups.push(ours.drop, other.drop)
  const admin = new pg.Client({ connectionString: ours.url })
  await admin.connect()
  cleanups.push(() => admin.end())
  // another tenant's schema holding what looks like our bookkeeping table, with a serial column
  await admin.query(`CREATE SCHEMA "${other.pgSchema}"`)
  await admin.query(
    `CREATE TABLE "${other.pgSchema}".kysely_migration_verifier (id serial primary key, name text)`,
  )

  const db = await openDatabase(ours.url, { pgSchema: ours.pgSchema, migrations: 'verifier', poolSize: 2 })
  cleanups.push(() => db.destroy())
  const tables = await db.introspection.getTables({ withInternalKyselyTables: true })
  expect(new Set(tables.map((t) => t.schema))).toEqual(new Set([ours.pgSchema]))
  expect(tables.map((t) => t.name)).toContain('kysely_migration_verifier')
  expect(tables.map((t) => t.name)).toContain('verifiermain')

  // schemas appearing and vanishing beside ours while services start on it
  const churn = (async () => {
    for (let i = 0; i < 30; i++) {
      const name = `${other.pgSchema}_${i}`
      await admin.query(`CREATE SCHEMA "${name}"`)
      await admin.query(`CREATE TABLE "${name}".t (id serial primary key)`)
      await admin.query(`DROP SCHEMA "${name}" CASCADE`)
    }
  })()
  const opens = (async () => {
    for (let i = 0; i < 10; i++) {
      const again = await openDatabase(ours.url, {
        pgSchema: ours.pgSchema,
        migrations: 'verifier',
        poolSize: 1,
      })
      await again.destroy()
    }
  })()
  await Promise.all([churn, opens])
})
