/**
 * The SQLite writer thread (src/db/sqlite-writer.ts): push mode's batched writes run on a second connection in a
 * worker thread, against a real database file, and behave as they did on the main connection.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { CompiledQuery, type Kysely } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { databaseUnavailableReason } from '../../src/api/server.ts'
import { openDatabase, sqliteDatabaseFile } from '../../src/db/database.ts'
import {
  type CompletedEvaluation,
  type NewAttestationRow,
  type PushDatabase,
  PushRepository,
} from '../../src/db/push-repository.ts'
import {
  openSqliteWriter,
  type SqliteWriterThread,
  sqliteWriterThread,
  WRITER_EXITED,
} from '../../src/db/sqlite-writer.ts'

const attestation = (agentId: string, index: number): NewAttestationRow => ({
  agent_id: agentId,
  index,
  system_info__boot_time: null,
  capabilities_received_at: '2026-12-07T00:00:00Z',
  challenges_expire_at: '2099-01-01T00:00:00Z',
  evidence_requested: '[]',
  ima_starting_offset: null,
})

const evidence = (agentId: string, index: number, holder = 'me') => ({
  agentId,
  index,
  evidenceCollected: '["quote"]',
  receivedAt: '2026-12-07T00:00:01Z',
  holder,
  expires: 9_000_000_000_000,
})

const verdict = (agentId: string, index: number, holder: string): CompletedEvaluation => ({
  agentId,
  index,
  holder,
  attestation: {
    evaluation: 'pass',
    failure_reason: null,
    verification_completed_at: '2026-12-07T00:00:02Z',
    ima_state: null,
    ima_certified_entry_count: null,
    event_id: null,
    event_context: null,
    evidence_collected: null,
  },
  agent: {
    push_deadline: 1,
    hash_alg: 'sha256',
    sign_alg: 'rsassa',
    enc_alg: 'rsa',
    operational_state: 3,
    failures: 'reset',
    last_event_id: null,
    last_event_context: null,
    severity_level: null,
  },
  state: {
    passed: true,
    last_received_quote: 2,
    last_successful_attestation: 2,
    tpm_clockinfo: null,
    next_ima_ml_entry: null,
    ima_state: null,
  },
})

describe('SQLite writer thread', () => {
  let dir: string
  let db: Kysely<PushDatabase>
  let writer: Kysely<PushDatabase>
  let thread: SqliteWriterThread
  let repo: PushRepository
  const exits: string[] = []

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kl-sqlite-writer-'))
    db = await openDatabase<PushDatabase>(`sqlite:///${join(dir, 'cv_data.sqlite')}`, {
      migrations: 'verifier',
    })
    const file = sqliteDatabaseFile(db)
    expect(file).toBe(join(dir, 'cv_data.sqlite'))
    writer = openSqliteWriter<PushDatabase>(file as string, { onExit: (reason) => exits.push(reason) })
    thread = sqliteWriterThread(writer) as SqliteWriterThread
    repo = new PushRepository(db, writer)
    await db
      .insertInto('verifiermain')
      .values(
        ['a', 'b', 'c', 'd', 'e'].map((agent_id) => ({
          agent_id,
          verifier_id: 'default',
          operational_state: 3,
          attestation_count: 0,
        })),
      )
      .execute()
  })

  afterAll(async () => {
    await writer.destroy()
    await db.destroy()
    rmSync(dir, { recursive: true, force: true })
  })

  it('a :memory: database has no file a second connection could share', async () => {
    const mem = await openDatabase('sqlite::memory:', { migrations: false })
    expect(sqliteDatabaseFile(mem)).toBeNull()
    await mem.destroy()
  })

  it('commits on the thread; the main connection reads the rows once the write resolved', async () => {
    const done = await repo.writeRequests([attestation('a', 0), attestation('b', 0)], [])
    expect(done.inserted).toEqual(new Set([PushRepository.key('a', 0), PushRepository.key('b', 0)]))
    expect((await repo.getAttestation('a', 0))?.stage).toBe('awaiting_evidence')
    const both = await repo.writeRequests([attestation('c', 0)], [evidence('a', 0)])
    expect(both.submitted).toEqual(new Set([PushRepository.key('a', 0)]))
    expect(both.inserted).toEqual(new Set([PushRepository.key('c', 0)]))
    const a = await repo.getAttestation('a', 0)
    expect(a?.stage).toBe('evaluating_evidence')
    expect(a?.evaluation_holder).toBe('me')
    const written = await repo.completeMany([verdict('a', 0, 'me')], '2099-01-01T00:00:00Z')
    expect([...written.written]).toEqual(['a'])
    expect((await repo.getAttestation('a', 0))?.evaluation).toBe('pass')
    const agent = await db
      .selectFrom('verifiermain')
      .selectAll()
      .where('agent_id', '=', 'a')
      .executeTakeFirst()
    expect(agent?.hash_alg).toBe('sha256')
  })

  it('a lost race reports as before: duplicate insert, evidence no longer awaited, a verdict not held', async () => {
    expect(await repo.insertAttestations([attestation('b', 0)])).toEqual(new Set())
    expect(await repo.submitEvidenceMany([evidence('a', 0)])).toEqual(new Set())
    expect(await repo.submitEvidenceMany([evidence('b', 0, 'other')])).toEqual(
      new Set([PushRepository.key('b', 0)]),
    )
    expect((await repo.completeMany([verdict('b', 0, 'me')], null)).written).toEqual(new Set())
    expect((await repo.getAttestation('b', 0))?.evaluation).toBe('pending')
  })

  it("a refused statement carries SQLite's code and its transaction is rolled back", async () => {
    const err = await repo
      .writeRequests([attestation('d', 0), attestation('nobody', 0)], [])
      .catch((e: unknown) => e)
    expect(err).toBeInstanceOf(Error)
    expect((err as { code?: string }).code).toBe('SQLITE_CONSTRAINT_FOREIGNKEY')
    // not an outage: push-writes retries such a batch row by row
    expect(databaseUnavailableReason(err)).toBeNull()
    expect(await repo.getAttestation('d', 0)).toBeUndefined()
    // the connection is usable again (not left inside the failed transaction)
    expect(await repo.insertAttestations([attestation('d', 0)])).toEqual(
      new Set([PushRepository.key('d', 0)]),
    )
  })

  it('blobs go both ways as Buffers', async () => {
    const r = await writer.executeQuery<{ b: unknown }>(
      CompiledQuery.raw('select ? as b', [Buffer.from([1, 2, 3])]),
    )
    expect(Buffer.isBuffer(r.rows[0]?.b)).toBe(true)
    expect(r.rows[0]?.b).toEqual(Buffer.from([1, 2, 3]))
  })

  it('waits on the thread for a lock the main connection holds, without failing', async () => {
    let written: Promise<Set<string>> | undefined
    let settled = false
    await db.transaction().execute(async (tx) => {
      await tx.updateTable('verifiermain').set({ severity_level: 1 }).where('agent_id', '=', 'e').execute()
      written = repo.insertAttestations([attestation('e', 0)])
      void written.finally(() => {
        settled = true
      })
      await new Promise((resolve) => setTimeout(resolve, 200))
      expect(settled).toBe(false)
    })
    expect(await written).toEqual(new Set([PushRepository.key('e', 0)]))
  })

  it('a thread that dies fails the writes it had not answered as an outage; the next write starts a new thread', async () => {
    const before = thread.generation
    let first: Promise<unknown> | undefined
    let queued: Promise<unknown> | undefined
    let killed: Promise<void> | undefined
    // the thread waits for the main connection's write lock; it dies after that write, before the next one
    await db.transaction().execute(async (tx) => {
      await tx.updateTable('verifiermain').set({ severity_level: 2 }).where('agent_id', '=', 'e').execute()
      first = repo.insertAttestations([attestation('e', 1)])
      await new Promise((resolve) => setTimeout(resolve, 50))
      // sent after the thread's end was asked for (kysely's writes wait for the previous one to be answered, and would
      // go to the next thread)
      killed = thread.kill()
      queued = thread
        .send({ kind: 'exec', sql: "UPDATE verifiermain SET severity_level = 9 WHERE agent_id = 'e'" })
        .catch((e: unknown) => e)
    })
    expect(await first).toEqual(new Set([PushRepository.key('e', 1)]))
    await killed
    const lost = await queued
    expect((lost as { code?: string }).code).toBe(WRITER_EXITED)
    expect(databaseUnavailableReason(lost)).toBe(WRITER_EXITED)
    const e = await db
      .selectFrom('verifiermain')
      .select('severity_level')
      .where('agent_id', '=', 'e')
      .executeTakeFirst()
    expect(e?.severity_level).toBe(2)
    expect(await repo.insertAttestations([attestation('e', 2)])).toEqual(
      new Set([PushRepository.key('e', 2)]),
    )
    expect(thread.generation).toBe(before + 1)
    expect(exits.at(-1)).toMatch(/exit code 1; 1 statement\(s\) failed/)
  })

  it('a thread killed inside a transaction rolls it back and releases the write lock', async () => {
    const err = await writer
      .transaction()
      .execute(async (tx) => {
        await repo.insertAttestations([attestation('e', 3)], tx)
        await thread.kill()
        await repo.insertAttestations([attestation('e', 4)], tx)
      })
      .catch((e: unknown) => e)
    expect(databaseUnavailableReason(err)).toBe(WRITER_EXITED)
    expect(await repo.getAttestation('e', 3)).toBeUndefined()
    expect(await repo.getAttestation('e', 4)).toBeUndefined()
    // the main connection can write at once: the dead thread's connection holds no lock
    await db.updateTable('verifiermain').set({ severity_level: 3 }).where('agent_id', '=', 'e').execute()
    // a transaction begun while no thread runs goes to the new one, whole
    await thread.kill()
    expect(thread.running).toBe(false)
    await writer.transaction().execute(async (tx) => {
      await repo.insertAttestations([attestation('e', 3)], tx)
      await repo.submitEvidenceMany([evidence('e', 3)], tx)
    })
    expect((await repo.getAttestation('e', 3))?.stage).toBe('evaluating_evidence')
  })

  it('destroy() ends the thread; nothing runs after it', async () => {
    const other = openSqliteWriter<PushDatabase>(sqliteDatabaseFile(db) as string)
    const t = sqliteWriterThread(other) as SqliteWriterThread
    await other.selectFrom('verifiermain').select('agent_id').execute()
    expect(t.running).toBe(true)
    // a transaction under way when destroy() is called finishes and commits first
    let destroyed: Promise<void> | undefined
    await other.transaction().execute(async (tx) => {
      await tx
        .insertInto('verifiermain')
        .values({ agent_id: 'late', verifier_id: 'default', attestation_count: 0 })
        .execute()
      destroyed = other.destroy()
      await new Promise((resolve) => setTimeout(resolve, 50))
      await tx.updateTable('verifiermain').set({ severity_level: 7 }).where('agent_id', '=', 'late').execute()
    })
    await destroyed
    expect(t.running).toBe(false)
    expect(
      (
        await db
          .selectFrom('verifiermain')
          .select('severity_level')
          .where('agent_id', '=', 'late')
          .executeTakeFirst()
      )?.severity_level,
    ).toBe(7)
    await expect(t.send({ kind: 'exec', sql: 'select 1' })).rejects.toThrow(/closed/)
  })
})
