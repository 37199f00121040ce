/**
 * Database factory: `sqlite` (file `<dataDir>/<name>.sqlite`), `sqlite:///abs/path`, `sqlite::memory:`,
 * `postgresql://…` / `postgres://…` (pg Pool) or `mysql://…` / `mariadb://…` (mysql2 pool; MariaDB 10.6+ or
 * MySQL 8). Migrations of the chosen set run on open (upstream
 * `auto_migrate_db`). SQLite runs in WAL mode so a second process can read while one writes; a write that meets
 * another process's lock waits asynchronously (see `BusyRetryingDriver`), never blocking the event loop for long.
 */
import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import SqliteDatabase from 'better-sqlite3'
import {
  CompiledQuery,
  type DatabaseConnection,
  type Driver,
  Kysely,
  MysqlDialect,
  type PostgresPool,
  type PostgresPoolClient,
  type QueryResult,
  SqliteDialect,
  type SqliteDialectConfig,
  sql,
  type TransactionSettings,
} from 'kysely'
import mysql from 'mysql2'
import pg from 'pg'
import { DbError } from './db-error.ts'
import { migrate } from './migrate.ts'
import { MIGRATION_SETS, type MigrationSet, type ServiceName } from './migrations/index.ts'
import { CurrentSchemaPostgresDialect } from './pg-introspector.ts'
import { refuseUpstreamDatabase, type TakeoverReport, takeOverUpstreamDatabase } from './takeover/takeover.ts'

export { DbError, migrate }

export type DbDialect = 'sqlite' | 'postgres' | 'mysql'

export interface OpenDatabaseOptions {
  /** Directory for the bare `sqlite` URL (upstream: `$KEYLIME_DIR`). */
  dataDir?: string
  /** File stem for the bare `sqlite` URL: `reg_data` (registrar) or `cv_data` (verifier). */
  name?: string
  /** Migration set run at open; `false` skips migrations (upstream `auto_migrate_db = False`). */
  migrations?: ServiceName | MigrationSet | false
  /** PostgreSQL only: schema used as `search_path` (created if missing). Tests use one per run. */
  pgSchema?: string
  /** Called with what the takeover of an upstream Keylime 7.x database did (src/db/takeover), for the log. */
  onTakeover?: (report: TakeoverReport) => void
  /**
   * With `migrations: false`, the service whose database this is: an upstream Keylime database is then refused, as
   * it cannot be used before `keylime db upgrade` (or a start with `auto_migrate_db = True`) converted it.
   */
  service?: ServiceName
  /** PostgreSQL and MySQL pool size (upstream `database_pool_sz_ovfl` first number). */
  poolSize?: number
}

export interface ParsedDbUrl {
  dialect: DbDialect
  /** SQLite file path (or `:memory:`); PostgreSQL connection string; `mysql://` URL without driver suffix. */
  target: string
}

export function parseDatabaseUrl(
  url: string,
  opts: Pick<OpenDatabaseOptions, 'dataDir' | 'name'> = {},
): ParsedDbUrl {
  const u = url.trim()
  if (u === 'sqlite') {
    if (!opts.dataDir) throw new DbError('database_url "sqlite" needs a data directory (KEYLIME_DIR)')
    return { dialect: 'sqlite', target: join(opts.dataDir, `${opts.name ?? 'keylime'}.sqlite`) }
  }
  if (u === 'sqlite::memory:' || u === 'sqlite:///:memory:') return { dialect: 'sqlite', target: ':memory:' }
  if (u.startsWith('sqlite:///')) {
    const path = u.slice('sqlite:///'.length)
    if (path === '') throw new DbError(`database_url ${JSON.stringify(url)} has no path`)
    return { dialect: 'sqlite', target: `/${path.replace(/^\/+/, '')}` }
  }
  if (/^postgres(ql)?(\+\w+)?:\/\//.test(u)) {
    // SQLAlchemy spellings such as postgresql+psycopg2:// carry a driver suffix pg does not understand
    return { dialect: 'postgres', target: u.replace(/^postgres(ql)?\+\w+:/, 'postgresql:') }
  }
  if (/^(mysql|mariadb)(\+\w+)?:\/\//.test(u)) {
    // SQLAlchemy spellings: mysql+pymysql://, mysql+mysqldb://, mysql+mysqlconnector://, mariadb+mariadbconnector://
    const target = u.replace(/^(mysql|mariadb)(\+\w+)?:/, 'mysql:')
    mysqlPoolOptions(target) // refuses what the pool could not honour, before anything connects
    return { dialect: 'mysql', target }
  }
  throw new DbError(
    `unsupported database_url ${JSON.stringify(redactUrl(url))}: use sqlite, sqlite:///path, postgresql:// or mysql://`,
  )
}

function redactUrl(url: string): string {
  return url.replace(/:[^:@/]*@/, ':***@')
}

/** Query parameters of SQLAlchemy MySQL URLs that the mysql2 pool honours; any other is refused by name. */
const MYSQL_URL_PARAMS = new Set(['charset', 'unix_socket', 'ssl_ca', 'ssl_cert', 'ssl_key'])

/**
 * mysql2 pool options from a `mysql://user:password@host:port/database?…` URL. Parsed here rather than by mysql2,
 * which ignores unknown parameters with a console warning: an `ssl_ca` it did not understand would silently mean
 * an unencrypted connection.
 */
export function mysqlPoolOptions(target: string): mysql.PoolOptions {
  let u: URL
  try {
    u = new URL(target)
  } catch {
    throw new DbError(`database_url ${JSON.stringify(redactUrl(target))} is not a valid URL`)
  }
  const database = decodeURIComponent(u.pathname.replace(/^\//, ''))
  if (database === '' || database.includes('/'))
    throw new DbError(
      `database_url ${JSON.stringify(redactUrl(target))} names no database (mysql://host/database)`,
    )
  const options: mysql.PoolOptions = {
    host: u.hostname === '' ? 'localhost' : u.hostname,
    port: u.port === '' ? 3306 : Number(u.port),
    user: decodeURIComponent(u.username),
    password: decodeURIComponent(u.password),
    database,
    charset: 'utf8mb4',
  }
  const ssl: Record<string, string> = {}
  for (const [key, value] of u.searchParams) {
    if (!MYSQL_URL_PARAMS.has(key))
      throw new DbError(
        `database_url parameter ${JSON.stringify(key)} is not supported for MySQL (supported: ${[...MYSQL_URL_PARAMS].join(', ')})`,
      )
    if (key === 'charset') options.charset = value
    else if (key === 'unix_socket') options.socketPath = value
    else ssl[key.slice('ssl_'.length)] = value
  }
  if (Object.keys(ssl).length > 0) {
    const read = (path: string | undefined) => (path === undefined ? undefined : readFileSync(path, 'utf8'))
    try {
      options.ssl = { ca: read(ssl.ca), cert: read(ssl.cert), key: read(ssl.key) }
    } catch (err) {
      throw new DbError(`cannot read the MySQL TLS files of database_url: ${(err as Error).message}`, {
        cause: err,
      })
    }
  }
  return options
}

/** Which dialect a Kysely instance talks to (some SQL differs: upsert conflict syntax is shared, types are not). */
const dialectOf = new WeakMap<object, DbDialect>()
// biome-ignore lint/suspicious/noExplicitAny: any database shape
export function databaseDialect(db: Kysely<any>): DbDialect {
  return dialectOf.get(db) ?? 'sqlite'
}

function quoteIdent(name: string): string {
  if (!/^[A-Za-z_][A-Za-z0-9_]{0,62}$/.test(name))
    throw new DbError(`invalid schema name ${JSON.stringify(name)}`)
  return `"${name}"`
}

/**
 * kysely prepares every query anew and better-sqlite3 compiles the SQL on each prepare(); the services run the same
 * few statements thousands of times a second, so statements are reused by SQL text. A statement still busy (an open
 * iterator) is never handed out twice; the cache is cleared if queries with ever-new SQL text fill it.
 */
function withStatementCache(handle: SqliteDatabase.Database): SqliteDialectConfig['database'] {
  const statements = new Map<string, SqliteDatabase.Statement>()
  return {
    close: () => handle.close(),
    prepare(sqlText: string) {
      let statement = statements.get(sqlText)
      if (statement === undefined || statement.busy) {
        statement = handle.prepare(sqlText)
        if (statements.size >= 512) statements.clear()
        statements.set(sqlText, statement)
      }
      return statement
    },
  }
}

/**
 * Statement texts of hot paths, run as named prepared statements on PostgreSQL: parsed and planned once per
 * connection instead of on every call. Only registered texts are named (each name stays prepared on every pooled
 * connection), so queries built with ever-new text never accumulate on the server.
 */
const preparedNames = new Map<string, string>()

export function registerPreparedStatement(text: string): void {
  if (!preparedNames.has(text))
    preparedNames.set(text, `keylime_${createHash('sha256').update(text).digest('hex').slice(0, 24)}`)
}

/**
 * kysely's view of a pg pool, naming registered statements. A client checked out of the pool has no `error`
 * listener of the pool's: one whose connection the server ends meanwhile (PostgreSQL stopped) would raise an
 * unhandled `error` event and end the process. The query running on it fails instead, and the pool drops it on
 * release.
 */
function preparingPool(pool: pg.Pool): PostgresPool {
  const guarded = new WeakSet<pg.PoolClient>()
  return {
    end: () => pool.end(),
    async connect(): Promise<PostgresPoolClient> {
      const client = await pool.connect()
      if (!guarded.has(client)) {
        guarded.add(client)
        client.on('error', () => {})
      }
      const query = (q: unknown, parameters?: ReadonlyArray<unknown>) => {
        const name = typeof q === 'string' ? preparedNames.get(q) : undefined
        if (name !== undefined)
          return client.query({ name, text: q as string, values: parameters as unknown[] })
        // biome-ignore lint/suspicious/noExplicitAny: plain text queries and cursors pass through unchanged
        return (client.query as any)(q, parameters)
      }
      return { query, release: (destroy?: boolean) => client.release(destroy) } as PostgresPoolClient
    },
  }
}

/**
 * The MySQL/MariaDB pool. Every connection reads and locks at READ COMMITTED, as PostgreSQL does: InnoDB's default
 * REPEATABLE READ takes gap locks on the range a locking read scans, so two verifiers claiming agents would block
 * (and deadlock) on rows neither of them touches. A pooled connection the server drops (restart, idle timeout,
 * KILL) emits `error`: mysql2's pool drops it, and the listener here makes sure that event is never unhandled (it
 * would end the process); the query running on it fails with PROTOCOL_CONNECTION_LOST, which the API and the
 * loop treat as the database being unavailable (src/api/server.ts `databaseUnavailableReason`).
 */
function mysqlDialect(target: string, poolSize: number): MysqlDialect {
  const pool = mysql.createPool({
    ...mysqlPoolOptions(target),
    connectionLimit: poolSize,
    // BIGINT millisecond timestamps as numbers (all below 2^53)
    supportBigNumbers: true,
    bigNumberStrings: false,
    // no client-side datetime conversion: no column is a DATETIME
    dateStrings: true,
  })
  pool.on('connection', (connection) => {
    connection.on('error', () => {})
  })
  return new MysqlDialect({
    pool,
    onCreateConnection: async (connection) => {
      await connection.executeQuery(
        CompiledQuery.raw('SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED'),
      )
    },
  })
}

/** SQLite's own busy wait, which blocks the event loop: kept short, the rest of the wait is asynchronous. */
const SQLITE_SYNC_BUSY_MS = 10
/** How long a write waits in all for another process's lock before it fails with a DbError. */
const SQLITE_BUSY_GIVE_UP_MS = 30_000

function isBusy(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && code.startsWith('SQLITE_BUSY')
}

/** Runs `op` again after growing pauses while SQLite answers SQLITE_BUSY; other errors pass through. */
async function retryWhileBusy<T>(op: () => Promise<T>): Promise<T> {
  const giveUpAt = Date.now() + SQLITE_BUSY_GIVE_UP_MS
  for (let pause = 5; ; pause = Math.min(pause * 2, 100)) {
    try {
      return await op()
    } catch (err) {
      if (!isBusy(err) || Date.now() + pause > giveUpAt) throw err
      await new Promise((resolve) => setTimeout(resolve, pause))
    }
  }
}

class BusyRetryingConnection implements DatabaseConnection {
  inTransaction = false
  constructor(readonly inner: DatabaseConnection) {}

  executeQuery<R>(query: CompiledQuery): Promise<QueryResult<R>> {
    // inside a transaction the write lock is already held (BEGIN IMMEDIATE), so SQLITE_BUSY cannot occur there
    const run = async () => this.inner.executeQuery<R>(query)
    return this.inTransaction ? run() : retryWhileBusy(run)
  }

  streamQuery<R>(query: CompiledQuery, chunkSize?: number): AsyncIterableIterator<QueryResult<R>> {
    return this.inner.streamQuery<R>(query, chunkSize)
  }
}

/**
 * better-sqlite3 is synchronous: with SQLite's busy timeout alone, a write meeting another process's lock blocks the
 * whole event loop until the timeout (5 s froze every API call and attestation). This driver keeps SQLite's own wait
 * at a few milliseconds and retries busy statements after asynchronous pauses. Transactions start with BEGIN
 * IMMEDIATE, taking the write lock up front, so no statement inside one can meet SQLITE_BUSY halfway (a deferred
 * transaction could, and could not simply be retried).
 */
class BusyRetryingDriver implements Driver {
  private readonly wrapped = new WeakMap<DatabaseConnection, BusyRetryingConnection>()
  constructor(private readonly inner: Driver) {}

  init(): Promise<void> {
    return this.inner.init()
  }

  async acquireConnection(): Promise<DatabaseConnection> {
    const connection = await this.inner.acquireConnection()
    let w = this.wrapped.get(connection)
    if (!w) {
      w = new BusyRetryingConnection(connection)
      this.wrapped.set(connection, w)
    }
    return w
  }

  async beginTransaction(connection: DatabaseConnection, _settings: TransactionSettings): Promise<void> {
    const c = connection as BusyRetryingConnection
    await retryWhileBusy(async () => c.inner.executeQuery(CompiledQuery.raw('begin immediate')))
    c.inTransaction = true
  }

  async commitTransaction(connection: DatabaseConnection): Promise<void> {
    const c = connection as BusyRetryingConnection
    // a COMMIT answered SQLITE_BUSY leaves the transaction open and may be retried
    await retryWhileBusy(async () => c.inner.executeQuery(CompiledQuery.raw('commit')))
    c.inTransaction = false
  }

  async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    const c = connection as BusyRetryingConnection
    try {
      await c.inner.executeQuery(CompiledQuery.raw('rollback'))
    } catch (err) {
      // SQLite already rolled back on its own (e.g. a COMMIT that hit a disk I/O error): nothing is left to undo, and
      // throwing here would replace the real cause with "cannot rollback - no transaction is active"
      if (!/no transaction is active/.test((err as Error).message)) throw err
    } finally {
      c.inTransaction = false
    }
  }

  releaseConnection(connection: DatabaseConnection): Promise<void> {
    return this.inner.releaseConnection((connection as BusyRetryingConnection).inner)
  }

  destroy(): Promise<void> {
    return this.inner.destroy()
  }
}

class BusyRetryingSqliteDialect extends SqliteDialect {
  override createDriver(): Driver {
    return new BusyRetryingDriver(super.createDriver())
  }
}

export async function openDatabase<DB>(url: string, opts: OpenDatabaseOptions = {}): Promise<Kysely<DB>> {
  const parsed = parseDatabaseUrl(url, opts)
  let db: Kysely<DB>
  if (parsed.dialect === 'sqlite') {
    if (parsed.target !== ':memory:') mkdirSync(dirname(parsed.target), { recursive: true })
    let handle: SqliteDatabase.Database
    try {
      handle = new SqliteDatabase(parsed.target)
      handle.pragma('journal_mode = WAL')
      handle.pragma(`busy_timeout = ${SQLITE_SYNC_BUSY_MS}`)
      handle.pragma('foreign_keys = ON')
      handle.pragma('synchronous = NORMAL')
      // checkpoints every ~40 MB of log instead of 4 MB: a page written again meanwhile (the newest attestations,
      // hot index pages) is copied to the database once, and there are a tenth as many checkpoint pauses
      handle.pragma('wal_autocheckpoint = 10000')
    } catch (err) {
      throw new DbError(`cannot open SQLite database ${parsed.target}: ${(err as Error).message}`, {
        cause: err,
      })
    }
    db = new Kysely<DB>({ dialect: new BusyRetryingSqliteDialect({ database: withStatementCache(handle) }) })
  } else if (parsed.dialect === 'mysql') {
    db = new Kysely<DB>({ dialect: mysqlDialect(parsed.target, opts.poolSize ?? 10) })
  } else {
    const schema = opts.pgSchema
    if (schema !== undefined) {
      // create the schema with a throw-away client, then pin every pooled connection's search_path to it
      const c = new pg.Client({ connectionString: parsed.target })
      try {
        await c.connect()
        await c.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(schema)}`)
      } catch (err) {
        throw new DbError(`cannot prepare PostgreSQL schema: ${(err as Error).message}`, { cause: err })
      } finally {
        await c.end().catch(() => {})
      }
    }
    const pool = new pg.Pool({
      connectionString: parsed.target,
      max: opts.poolSize ?? 10,
      ...(schema !== undefined ? { options: `-c search_path=${quoteIdent(schema)}` } : {}),
    })
    // idle-client errors (server restart) must not crash the process; the next query reports them
    pool.on('error', () => {})
    db = new Kysely<DB>({ dialect: new CurrentSchemaPostgresDialect({ pool: preparingPool(pool) }) })
  }
  dialectOf.set(db, parsed.dialect)
  const set = opts.migrations === undefined ? undefined : opts.migrations
  const schema = { schema: parsed.dialect === 'postgres' ? opts.pgSchema : undefined }
  if (set === false && opts.service !== undefined) {
    try {
      await refuseUpstreamDatabase(db, opts.service)
    } catch (err) {
      await db.destroy().catch(() => {})
      throw err
    }
  }
  if (set !== undefined && set !== false) {
    try {
      if (typeof set === 'string') {
        const report = await takeOverUpstreamDatabase(db, set, schema)
        if (report !== null) opts.onTakeover?.(report)
      }
      await migrate(
        db,
        typeof set === 'string' ? MIGRATION_SETS[set] : set,
        typeof set === 'string' ? set : 'custom',
        // pins kysely's bookkeeping tables to our schema
        schema,
      )
    } catch (err) {
      await db.destroy().catch(() => {})
      throw err
    }
  }
  return db
}

/** Drops a PostgreSQL schema (test cleanup). */
export async function dropPgSchema(url: string, schema: string): Promise<void> {
  const c = new pg.Client({ connectionString: parseDatabaseUrl(url).target })
  await c.connect()
  try {
    await c.query(`DROP SCHEMA IF EXISTS ${quoteIdent(schema)} CASCADE`)
  } finally {
    await c.end()
  }
}

export { sql }
