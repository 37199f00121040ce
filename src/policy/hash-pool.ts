/**
 * File hashing on worker threads: a policy over a whole root filesystem is 100,000+ files, and one thread hashing them
 * one by one leaves the other cores idle. The worker is a few lines of plain JavaScript evaluated from a string, so it
 * runs the same from the TypeScript sources and from the compiled bundle (no separate entry file to ship).
 */
import { availableParallelism } from 'node:os'
import { Worker } from 'node:worker_threads'

export const FILE_HASHES = {
  sha1: 'sha1',
  sha256: 'sha256',
  sha384: 'sha384',
  sha512: 'sha512',
  sm3_256: 'sm3',
} as const
export type FileHashAlg = keyof typeof FILE_HASHES

/** Hashes each path of a batch; an unreadable file yields null (skipped, as upstream does). */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads')
const { createHash } = require('node:crypto')
const { openSync, readSync, closeSync } = require('node:fs')
const chunk = Buffer.allocUnsafe(1 << 20)
function hash(path, alg) {
  let fd
  try {
    fd = openSync(path, 'r')
    const h = createHash(alg)
    for (;;) {
      const n = readSync(fd, chunk, 0, chunk.length, null)
      if (n === 0) break
      h.update(chunk.subarray(0, n))
    }
    return h.digest('hex')
  } catch {
    return null
  } finally {
    if (fd !== undefined) closeSync(fd)
  }
}
parentPort.on('message', ({ id, alg, paths }) => {
  parentPort.postMessage({ id, digests: paths.map((p) => hash(p, alg)) })
})
`

const BATCH = 64

export interface HashPoolOptions {
  /** Worker threads (default: the machine's parallelism). */
  workers?: number
}

/** A pool hashing batches of files; `close()` ends the threads. */
export class FileHashPool {
  readonly #workers: Worker[] = []
  readonly #idle: Worker[] = []
  readonly #waiting: (() => void)[] = []
  readonly #pending = new Map<
    number,
    { resolve: (d: (string | null)[]) => void; reject: (e: Error) => void }
  >()
  #nextId = 0

  constructor(options: HashPoolOptions = {}) {
    const n = Math.max(1, options.workers ?? availableParallelism())
    for (let i = 0; i < n; i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true })
      w.on('message', (m: { id: number; digests: (string | null)[] }) => {
        const p = this.#pending.get(m.id)
        this.#pending.delete(m.id)
        this.#release(w)
        p?.resolve(m.digests)
      })
      w.on('error', (e) => {
        for (const p of this.#pending.values()) p.reject(e)
        this.#pending.clear()
      })
      this.#workers.push(w)
      this.#idle.push(w)
    }
  }

  #release(w: Worker): void {
    const next = this.#waiting.shift()
    this.#idle.push(w)
    next?.()
  }

  async #acquire(): Promise<Worker> {
    while (this.#idle.length === 0) await new Promise<void>((r) => this.#waiting.push(r))
    return this.#idle.pop() as Worker
  }

  /** Digests of `paths` in order; null for a file that could not be read. */
  async hash(paths: readonly string[], alg: FileHashAlg): Promise<(string | null)[]> {
    const w = await this.#acquire()
    const id = this.#nextId++
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject })
      w.postMessage({ id, alg: FILE_HASHES[alg], paths })
    })
  }

  /**
   * Hashes every path, `BATCH` at a time on all workers, calling `onDigest` in completion order (callers that need a
   * stable order sort afterwards). Resolves when all are done.
   */
  async hashAll(
    paths: Iterable<string>,
    alg: FileHashAlg,
    onDigest: (path: string, digest: string | null) => void,
  ): Promise<void> {
    const running = new Set<Promise<void>>()
    let batch: string[] = []
    const flush = async () => {
      // Back-pressure on the directory walk: at most two batches queued per worker.
      while (running.size >= this.#workers.length * 2) await Promise.race(running)
      const mine = batch
      batch = []
      const job = this.hash(mine, alg).then((digests) => {
        for (let i = 0; i < mine.length; i++) onDigest(mine[i] as string, digests[i] ?? null)
      })
      const tracked: Promise<void> = job.finally(() => running.delete(tracked))
      running.add(tracked)
    }
    for (const p of paths) {
      batch.push(p)
      if (batch.length === BATCH) await flush()
    }
    if (batch.length > 0) await flush()
    await Promise.all(running)
  }

  async close(): Promise<void> {
    await Promise.all(this.#workers.map((w) => w.terminate()))
  }
}
