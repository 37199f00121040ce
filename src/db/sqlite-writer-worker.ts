/**
 * Entry of the SQLite writer thread (started by `sqlite-writer.ts`): owns one better-sqlite3 connection to the
 * database file and runs the statements it is sent, in arrival order, answering each with its rows or with the
 * error SQLite raised (message and code). Blocking here (a commit's fsync, a checkpoint, SQLite's busy wait for
 * another connection's lock) costs this thread only, never the event loop.
 */
import { parentPort, workerData } from 'node:worker_threads'
import SqliteDatabase from 'better-sqlite3'
import type { WriterReply, WriterRequest, WriterSetup } from './sqlite-writer-protocol.ts'

const port = parentPort
if (port === null) throw new Error('sqlite-writer-worker.ts runs only as a worker thread')
const setup = workerData as WriterSetup

let handle: SqliteDatabase.Database | null = null
const statements = new Map<string, SqliteDatabase.Statement>()

/** Opened on the first request, so a file that cannot be opened fails that request with SQLite's code. */
function database(): SqliteDatabase.Database {
  if (handle === null) {
    const h = new SqliteDatabase(setup.file, { fileMustExist: true })
    try {
      h.pragma(`busy_timeout = ${setup.busyTimeoutMs}`)
      h.pragma('journal_mode = WAL')
      h.pragma('foreign_keys = ON')
      h.pragma('synchronous = NORMAL')
      h.pragma('wal_autocheckpoint = 10000')
    } catch (err) {
      h.close()
      throw err
    }
    handle = h
  }
  return handle
}

/** Statements reused by SQL text, as on the main connection (`withStatementCache` in database.ts). */
function prepare(sqlText: string): SqliteDatabase.Statement {
  let statement = statements.get(sqlText)
  if (statement === undefined || statement.busy) {
    statement = database().prepare(sqlText)
    if (statements.size >= 512) statements.clear()
    statements.set(sqlText, statement)
  }
  return statement
}

/** Structured clone turns a Buffer into a plain Uint8Array, which better-sqlite3 does not bind as a blob. */
function bindable(parameters: readonly unknown[]): unknown[] {
  return parameters.map((p) =>
    p instanceof Uint8Array && !Buffer.isBuffer(p) ? Buffer.from(p.buffer, p.byteOffset, p.byteLength) : p,
  )
}

function execute(request: Extract<WriterRequest, { kind: 'query' }>): WriterReply {
  const db = database()
  if (request.begin) db.exec('begin immediate')
  const statement = prepare(request.sql)
  const parameters = bindable(request.parameters)
  if (statement.reader) return { id: request.id, ok: true, rows: statement.all(parameters) as unknown[] }
  const { changes, lastInsertRowid } = statement.run(parameters)
  return {
    id: request.id,
    ok: true,
    rows: [],
    numAffectedRows: BigInt(changes),
    insertId: BigInt(lastInsertRowid),
  }
}

/** All or nothing: a statement that fails rolls back the ones before it. */
function transaction(request: Extract<WriterRequest, { kind: 'transaction' }>): WriterReply {
  const db = database()
  db.exec('begin immediate')
  try {
    const results = request.statements.map((s) => {
      const statement = prepare(s.sql)
      const parameters = bindable(s.parameters)
      if (statement.reader) return statement.all(parameters) as unknown[]
      statement.run(parameters)
      return []
    })
    db.exec('commit')
    return { id: request.id, ok: true, rows: [], results }
  } catch (err) {
    if (db.inTransaction) db.exec('rollback')
    throw err
  }
}

function handleRequest(request: WriterRequest): WriterReply {
  try {
    switch (request.kind) {
      case 'query':
        return execute(request)
      case 'transaction':
        return transaction(request)
      case 'exec':
        database().exec(request.sql)
        return { id: request.id, ok: true, rows: [] }
      case 'rollback':
        // nothing to undo when SQLite already rolled back on its own or the begin itself failed
        if (handle?.inTransaction) handle.exec('rollback')
        return { id: request.id, ok: true, rows: [] }
      case 'close':
        statements.clear()
        handle?.close()
        handle = null
        return { id: request.id, ok: true, rows: [] }
      case 'exit':
        // as a crash would: the connection is closed by the thread's end, whatever it held rolled back
        process.exit(1)
    }
  } catch (err) {
    const e = err as { message?: unknown; code?: unknown; name?: unknown }
    return {
      id: request.id,
      ok: false,
      error: {
        message: String(e?.message ?? err),
        code: typeof e?.code === 'string' ? e.code : undefined,
        name: typeof e?.name === 'string' ? e.name : 'Error',
      },
    }
  }
}

port.on('message', (request: WriterRequest) => port.postMessage(handleRequest(request)))
