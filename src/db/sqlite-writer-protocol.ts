/** Messages between `sqlite-writer.ts` and its thread (`sqlite-writer-worker.ts`). */

export interface WriterSetup {
  file: string
  /** SQLite's own busy wait on the thread: it blocks only the thread, so it may be long. */
  busyTimeoutMs: number
}

export type WriterRequest =
  /** One statement; `begin` opens a transaction (BEGIN IMMEDIATE) first, saving a round trip. */
  | { kind: 'query'; id: number; sql: string; parameters: readonly unknown[]; begin: boolean }
  /** A statement without parameters or rows (COMMIT, savepoints). */
  | { kind: 'exec'; id: number; sql: string }
  | { kind: 'rollback'; id: number }
  /** Independent statements in one transaction, committed before the answer: one round trip for all. */
  | { kind: 'transaction'; id: number; statements: { sql: string; parameters: readonly unknown[] }[] }
  | { kind: 'close'; id: number }
  /** Ends the thread once the requests before it are answered, as a crash would (tests). */
  | { kind: 'exit'; id: number }

export type WriterReply =
  | {
      id: number
      ok: true
      rows: unknown[]
      numAffectedRows?: bigint
      insertId?: bigint
      /** `transaction`: the rows of each statement. */
      results?: unknown[][]
    }
  | { id: number; ok: false; error: { message: string; code: string | undefined; name: string } }
