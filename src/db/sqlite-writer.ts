/**
 * A second SQLite connection, owned by a dedicated thread, for the write transactions of push mode. better-sqlite3 is
 * synchronous: on the main connection every statement, COMMIT (its fsync) and WAL checkpoint runs on the event loop.
 * Here kysely compiles as usual and each compiled statement (SQL text and parameters) is run by the thread, which
 * answers with the rows or with SQLite's error (its `code` kept, so busy and outage errors are classified as on the
 * main connection). The database is in WAL mode: reads on the main connection see each transaction once its COMMIT
 * has answered. A thread that dies fails what it was running with `ERR_SQLITE_WRITER_EXITED` (a database outage:
 * 503 on the API, batches kept for later) and the next statement starts a new thread.
 */
import { createRequire } from 'node:module'
import { pathToFileURL } from 'node:url'
import { Worker } from 'node:worker_threads'
import {
  type CompiledQuery,
  type DatabaseConnection,
  type DatabaseIntrospector,
  type Dialect,
  type DialectAdapter,
  type Driver,
  Kysely,
  type QueryCompiler,
  type QueryResult,
  SqliteAdapter,
  SqliteIntrospector,
  SqliteQueryCompiler,
} from 'kysely'
import { DbError } from './db-error.ts'
import type { WriterReply, WriterRequest, WriterSetup } from './sqlite-writer-protocol.ts'

/** The error code of statements lost with their thread; `databaseUnavailableReason` counts it as an outage. */
export const WRITER_EXITED = 'ERR_SQLITE_WRITER_EXITED'

/** How long the thread waits for another connection's write lock before the statement fails with SQLITE_BUSY. */
const WRITER_BUSY_TIMEOUT_MS = 30_000

const WORKER_ENTRY = import.meta.url.endsWith('.ts')
  ? new URL('./sqlite-writer-worker.ts', import.meta.url)
  : // the bundle (scripts/build.mjs) puts its chunks and the worker entry two folders below the package root
    new URL('../db/sqlite-writer-worker.js', import.meta.url)

function startWorker(setup: WriterSetup): Worker {
  if (!WORKER_ENTRY.pathname.endsWith('.ts')) return new Worker(WORKER_ENTRY, { workerData: setup })
  // from source (tsx, vitest): the thread registers tsx's loader before it imports the TypeScript entry
  const tsxApi = createRequire(import.meta.url)
    .resolve('tsx/esm/api')
    .replace(/\.cjs$/, '.mjs')
  const boot = `import(${JSON.stringify(pathToFileURL(tsxApi).href)}).then((m) => { m.register(); return import(${JSON.stringify(WORKER_ENTRY.href)}) })`
  return new Worker(boot, { eval: true, workerData: setup })
}

/** An error SQLite raised on the writer thread, with its code (or the thread's loss, `WRITER_EXITED`). */
export class SqliteWriterError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
    override readonly name = 'SqliteError',
  ) {
    super(message)
  }
}

type Request = WriterRequest extends infer R ? (R extends { id: number } ? Omit<R, 'id'> : never) : never
type Ok = Extract<WriterReply, { ok: true }>

interface Pending {
  resolve: (reply: Ok) => void
  reject: (err: unknown) => void
}

/** The thread and the requests it has not answered yet (it answers in order). */
export class SqliteWriterThread {
  private worker: Worker | null = null
  private readonly pending = new Map<number, Pending>()
  private nextId = 1
  private closed = false
  /** Threads started so far: a transaction belongs to the thread it began on. */
  generation = 0
  /** One user of the connection at a time: a kysely connection (held through a transaction) or `transaction`. */
  private lockTail: Promise<void> = Promise.resolve()

  constructor(
    private readonly setup: WriterSetup,
    /** Told when a thread ends other than by `close()` (for the log). */
    private readonly onExit?: (reason: string) => void,
  ) {}

  /** Starts the thread ahead of the first statement (it loads its modules meanwhile). */
  warm(): void {
    if (!this.closed) this.thread()
  }

  private thread(): Worker {
    if (this.worker !== null) return this.worker
    const worker = startWorker(this.setup)
    this.generation++
    // the process may end while the thread idles; a request in flight keeps it alive (see send)
    worker.unref()
    let failure: Error | undefined
    worker.on('error', (err) => {
      failure = err
    })
    worker.on('message', (reply: WriterReply) => this.answer(reply))
    worker.on('exit', (code) => {
      if (this.worker === worker) this.worker = null
      const reason = failure?.message ?? `exit code ${code}`
      const lost = [...this.pending.values()]
      this.pending.clear()
      if (!this.closed) this.onExit?.(`${reason}; ${lost.length} statement(s) failed`)
      for (const p of lost)
        p.reject(new SqliteWriterError(`SQLite writer thread ended (${reason})`, WRITER_EXITED, 'DbError'))
    })
    this.worker = worker
    return worker
  }

  /** The generation of the running thread, started if none runs. */
  current(): number {
    if (!this.closed) this.thread()
    return this.generation
  }

  /** Whether a thread runs now. */
  get running(): boolean {
    return this.worker !== null
  }

  /** True while the thread of `generation` runs (a transaction it holds is still open). */
  alive(generation: number): boolean {
    return this.worker !== null && this.generation === generation
  }

  /** Waits for the connection; returns its release. */
  async lock(): Promise<() => void> {
    const previous = this.lockTail
    let release!: () => void
    this.lockTail = new Promise((resolve) => {
      release = resolve
    })
    await previous
    return release
  }

  /**
   * Independent statements in one transaction, sent as one message (one round trip, where kysely's transaction
   * takes one per statement); returns the rows of each. Rolled back whole when one fails.
   */
  async transaction(statements: { sql: string; parameters: readonly unknown[] }[]): Promise<unknown[][]> {
    const release = await this.lock()
    try {
      const reply = await this.send({ kind: 'transaction', statements })
      return (reply.results ?? []).map(asBuffers)
    } finally {
      release()
    }
  }

  send(request: Request): Promise<Ok> {
    if (this.closed) return Promise.reject(new DbError('the SQLite writer is closed'))
    return this.post(this.thread(), request)
  }

  private post(worker: Worker, request: Request): Promise<Ok> {
    const id = this.nextId++
    return new Promise<Ok>((resolve, reject) => {
      if (this.pending.size === 0) worker.ref()
      this.pending.set(id, { resolve, reject })
      worker.postMessage({ ...request, id })
    })
  }

  private answer(reply: WriterReply): void {
    const p = this.pending.get(reply.id)
    if (p === undefined) return
    this.pending.delete(reply.id)
    if (this.pending.size === 0) this.worker?.unref()
    if (reply.ok) p.resolve(reply)
    else p.reject(new SqliteWriterError(reply.error.message, reply.error.code, reply.error.name))
  }

  /**
   * Ends the thread after the requests sent before, as a crash would (tests): what is sent after fails with
   * `WRITER_EXITED`. Never `Worker.terminate()` a thread that may be inside SQLite: better-sqlite3 then aborts the
   * process when the statement returns.
   */
  async kill(): Promise<void> {
    const worker = this.worker
    if (worker === null) return
    const exited = new Promise((resolve) => worker.once('exit', resolve))
    worker.ref()
    worker.postMessage({ kind: 'exit', id: 0 })
    await exited
  }

  /**
   * Closes the connection once the transaction using it (if any) is done and the requests sent before are answered,
   * and ends the thread. Nothing is sent after.
   */
  async close(): Promise<void> {
    if (this.closed) return
    const release = await this.lock()
    this.closed = true
    const worker = this.worker
    try {
      if (worker !== null) await this.post(worker, { kind: 'close' }).catch(() => {})
      // the thread is idle once it answered: safe to terminate (see kill)
      await worker?.terminate()
    } finally {
      release()
    }
  }
}

/** Parameters and rows cross the thread as structured clones: Buffers arrive as plain Uint8Arrays. */
function asBuffers(rows: unknown[]): unknown[] {
  for (const row of rows) {
    if (row === null || typeof row !== 'object') continue
    const r = row as Record<string, unknown>
    for (const k in r) {
      const v = r[k]
      if (v instanceof Uint8Array && !Buffer.isBuffer(v))
        r[k] = Buffer.from(v.buffer, v.byteOffset, v.byteLength)
    }
  }
  return rows
}

class WriterConnection implements DatabaseConnection {
  /** BEGIN not yet sent: it travels with the transaction's first statement. */
  beginPending = false
  /** The thread the open transaction began on, or null outside a transaction. */
  txGeneration: number | null = null

  constructor(readonly thread: SqliteWriterThread) {}

  async executeQuery<R>(query: CompiledQuery): Promise<QueryResult<R>> {
    const begin = this.beginPending
    if (this.txGeneration !== null && !begin && !this.thread.alive(this.txGeneration))
      // the transaction died with its thread: a statement sent now would run outside of it
      throw new SqliteWriterError(
        'SQLite writer thread ended during the transaction',
        WRITER_EXITED,
        'DbError',
      )
    this.beginPending = false
    // the transaction belongs to the thread its BEGIN goes to (one started now if the last one died)
    if (begin) this.txGeneration = this.thread.current()
    const reply = await this.thread.send({
      kind: 'query',
      sql: query.sql,
      parameters: query.parameters,
      begin,
    })
    return {
      rows: asBuffers(reply.rows) as R[],
      ...(reply.numAffectedRows !== undefined ? { numAffectedRows: reply.numAffectedRows } : {}),
      ...(reply.insertId !== undefined ? { insertId: reply.insertId } : {}),
    }
  }

  // biome-ignore lint/correctness/useYield: streaming is not offered on the writer
  async *streamQuery<R>(): AsyncIterableIterator<QueryResult<R>> {
    throw new DbError('the SQLite writer does not stream query results')
  }

  async exec(sqlText: string): Promise<void> {
    if (this.txGeneration !== null && !this.thread.alive(this.txGeneration))
      throw new SqliteWriterError(
        'SQLite writer thread ended during the transaction',
        WRITER_EXITED,
        'DbError',
      )
    await this.thread.send({ kind: 'exec', sql: sqlText })
  }
}

/** One connection, used by one caller at a time (a transaction holds it throughout), as kysely's SqliteDriver. */
class WriterDriver implements Driver {
  private readonly connection: WriterConnection

  constructor(readonly thread: SqliteWriterThread) {
    this.connection = new WriterConnection(thread)
  }

  async init(): Promise<void> {}

  async acquireConnection(): Promise<DatabaseConnection> {
    this.releaseLock = await this.thread.lock()
    return this.connection
  }

  private releaseLock: () => void = () => {}

  async beginTransaction(): Promise<void> {
    // BEGIN IMMEDIATE (the write lock up front) runs with the first statement
    this.connection.beginPending = true
  }

  async commitTransaction(): Promise<void> {
    const c = this.connection
    try {
      if (!c.beginPending) await c.exec('commit')
    } finally {
      c.beginPending = false
      c.txGeneration = null
    }
  }

  async rollbackTransaction(): Promise<void> {
    const c = this.connection
    const generation = c.txGeneration
    c.txGeneration = null
    const begun = !c.beginPending
    c.beginPending = false
    // nothing to undo when no statement ran, or when the transaction ended with its thread
    if (begun && generation !== null && this.thread.alive(generation))
      await this.thread.send({ kind: 'rollback' })
  }

  async savepoint(): Promise<void> {
    throw new DbError('savepoints are not offered on the SQLite writer')
  }

  async rollbackToSavepoint(): Promise<void> {
    throw new DbError('savepoints are not offered on the SQLite writer')
  }

  async releaseSavepoint(): Promise<void> {
    throw new DbError('savepoints are not offered on the SQLite writer')
  }

  async releaseConnection(): Promise<void> {
    this.releaseLock()
  }

  destroy(): Promise<void> {
    return this.thread.close()
  }
}

class WriterDialect implements Dialect {
  constructor(private readonly thread: SqliteWriterThread) {}
  createDriver(): Driver {
    return new WriterDriver(this.thread)
  }
  createQueryCompiler(): QueryCompiler {
    return new SqliteQueryCompiler()
  }
  createAdapter(): DialectAdapter {
    return new SqliteAdapter()
  }
  // biome-ignore lint/suspicious/noExplicitAny: any database shape
  createIntrospector(db: Kysely<any>): DatabaseIntrospector {
    return new SqliteIntrospector(db)
  }
}

const threadOf = new WeakMap<object, SqliteWriterThread>()

/**
 * A Kysely whose statements run on a writer thread with its own connection to the SQLite database `file` (an
 * existing file, in WAL mode: `openDatabase` made it so). `destroy()` closes the connection and ends the thread.
 */
export function openSqliteWriter<DB>(
  file: string,
  opts: { onExit?: (reason: string) => void } = {},
): Kysely<DB> {
  const thread = new SqliteWriterThread({ file, busyTimeoutMs: WRITER_BUSY_TIMEOUT_MS }, opts.onExit)
  thread.warm()
  const db = new Kysely<DB>({ dialect: new WriterDialect(thread) })
  threadOf.set(db, thread)
  return db
}

/** The thread behind a Kysely of `openSqliteWriter`. */
// biome-ignore lint/suspicious/noExplicitAny: any database shape
export function sqliteWriterThread(db: Kysely<any>): SqliteWriterThread | undefined {
  return threadOf.get(db)
}
