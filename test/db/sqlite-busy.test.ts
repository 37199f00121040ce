/**
 * A write that meets another process's SQLite write lock waits without blocking the event loop, and completes once
 * the lock is released (better-sqlite3 is synchronous: SQLite's own busy wait would freeze the whole service).
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { type Kysely, sql } from 'kysely'
import { afterEach, describe, expect, it } from 'vitest'
import { openDatabase } from '../../src/db/database.ts'

const dirs: string[] = []
const children: ChildProcess[] = []
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL')
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true })
})

/** Another process that takes the write lock, says "locked", holds it for `holdMs`, then commits. */
async function holdWriteLock(file: string, holdMs: number): Promise<ChildProcess> {
  const script = `
    import Database from 'better-sqlite3'
    const db = new Database(${JSON.stringify(file)})
    db.exec('BEGIN IMMEDIATE')
    db.exec("INSERT INTO t (v) VALUES ('other process')")
    process.stdout.write('locked\\n')
    setTimeout(() => { db.exec('COMMIT'); db.close(); process.exit(0) }, ${holdMs})
  `
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    cwd: process.cwd(),
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  children.push(child)
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => d.toString().includes('locked') && resolve())
    child.once('exit', (code) => reject(new Error(`lock holder exited early (${code})`)))
  })
  return child
}

async function freshDb(): Promise<{ db: Kysely<{ t: { v: string } }>; file: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'keylime-busy-'))
  dirs.push(dir)
  const file = join(dir, 'busy.sqlite')
  const db = await openDatabase<{ t: { v: string } }>(`sqlite:///${file}`, { migrations: false })
  await sql`CREATE TABLE t (v TEXT)`.execute(db)
  return { db, file }
}

describe('SQLite write lock held by another process', () => {
  it('waits asynchronously for a plain write and for a transaction, then writes both', async () => {
    const { db, file } = await freshDb()
    const holder = await holdWriteLock(file, 1500)
    const delay = monitorEventLoopDelay({ resolution: 5 })
    delay.enable()
    const started = Date.now()
    let ticks = 0
    const ticker = setInterval(() => ticks++, 20)
    const write = db.insertInto('t').values({ v: 'plain write' }).execute()
    const txn = db.transaction().execute(async (tx) => {
      await tx.insertInto('t').values({ v: 'in a transaction' }).execute()
    })
    await Promise.all([write, txn])
    clearInterval(ticker)
    delay.disable()
    const waited = Date.now() - started
    expect(waited).toBeGreaterThan(1000) // they really waited for the other process's commit
    // the event loop kept turning meanwhile: SQLite's synchronous wait is a few ms per attempt
    expect(delay.max / 1e6).toBeLessThan(250)
    expect(ticks).toBeGreaterThan(waited / 20 / 3)
    const rows = await db.selectFrom('t').select('v').execute()
    expect(rows.map((r) => r.v).sort()).toEqual(['in a transaction', 'other process', 'plain write'])
    if (holder.exitCode === null) await new Promise((r) => holder.once('exit', r))
    expect(holder.exitCode).toBe(0)
    await db.destroy()
  })

  it('a read is not held up by the other process at all (WAL)', async () => {
    const { db, file } = await freshDb()
    await db.insertInto('t').values({ v: 'before' }).execute()
    await holdWriteLock(file, 3000)
    const t0 = Date.now()
    const rows = await db.selectFrom('t').select('v').execute()
    expect(Date.now() - t0).toBeLessThan(200)
    expect(rows).toEqual([{ v: 'before' }])
    await db.destroy()
  })
})
