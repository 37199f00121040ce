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
  | { kind: 'close'; id: number }
  /** Ends the thread once the requests before it are answered, as a crash would (tests). */
  | { kind: 'exit'; id: number }

export type WriterReply =
  | { id: number; ok: true; rows: unknown[]; numAffectedRows?: bigint; insertId?: bigint }
  | { id: number; ok: false; error: { message: string; code: string | undefined; name: string } }
