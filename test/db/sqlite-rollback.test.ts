/**
 * A transaction SQLite already ended on its own (a COMMIT that hit a disk I/O error rolls back by itself) reports its
 * real error, not "cannot rollback - no transaction is active" from the rollback that follows.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { sql } from 'kysely'
import { afterAll, describe, expect, it } from 'vitest'
import { openDatabase } from '../../src/db/database.ts'
import type { VerifierDatabase } from '../../src/db/verifier-repository.ts'

const dir = mkdtempSync(join(tmpdir(), 'kl-rollback-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('SQLite transactions', () => {
  it('keep the real error when SQLite has already rolled back', async () => {
    const db = await openDatabase<VerifierDatabase>('sqlite', {
      dataDir: dir,
      name: 'cv',
      migrations: 'verifier',
    })
    try {
      const failing = db.transaction().execute(async (tx) => {
        await tx.insertInto('mbpolicies').values({ name: 'p', mb_policy: '{}' }).execute()
        // what SQLite does itself when a statement or COMMIT fails with SQLITE_IOERR/SQLITE_FULL
        await sql`rollback`.execute(tx)
        throw new Error('disk I/O error')
      })
      await expect(failing).rejects.toThrow('disk I/O error')
      expect(await db.selectFrom('mbpolicies').selectAll().execute()).toEqual([])
      // the connection is usable afterwards
      await db
        .transaction()
        .execute((tx) => tx.insertInto('mbpolicies').values({ name: 'q', mb_policy: '{}' }).execute())
      expect((await db.selectFrom('mbpolicies').select('name').execute()).map((r) => r.name)).toEqual(['q'])
    } finally {
      await db.destroy()
    }
  })
})
