/**
 * Successful attestations are written in batches (one transaction every `flushMs`), the hot path of a large fleet.
 * An immediate state change of an agent takes its pending success along (`take`), so a later batch can never
 * overwrite it. A batch that fails (database down) is kept and written by a later flush; agents the lease guard
 * refused are handed to `onRefused`.
 */
import type { Logger } from '../common/log.ts'
import type { AttestationSuccess, VerifierRepository } from '../db/verifier-repository.ts'
import type { DbOutage } from './db-outage.ts'

export interface WriteBatcherDeps {
  repo: VerifierRepository
  leaseHolder: string
  outage: DbOutage
  log: Logger
  flushMs: number
  /** Whether the agent is still attested here (a removed agent's retried success is dropped). */
  isHeld: (agentId: string) => boolean
  /** A success the fence refused (the caller checks it is not from an earlier claim of the agent). */
  onRefused: (success: AttestationSuccess) => Promise<void>
  /** One batch written: rows and seconds (metrics). */
  onWritten?: (rows: number, seconds: number) => void
}

export class WriteBatcher {
  private pending = new Map<string, AttestationSuccess>()
  private timer: NodeJS.Timeout | null = null
  private flushing: Promise<void> = Promise.resolve()

  constructor(private readonly deps: WriteBatcherDeps) {}

  start(): void {
    this.timer = setInterval(() => void this.flush(), this.deps.flushMs)
  }

  /** Stops the timer; writes what is pending unless `flush` is false (what a crash leaves behind). */
  async stop(flush: boolean): Promise<void> {
    if (this.timer) clearInterval(this.timer)
    this.timer = null
    if (flush) await this.flush()
    else this.pending.clear()
  }

  put(success: AttestationSuccess): void {
    this.pending.set(success.agentId, success)
  }

  /** Removes and returns the agent's pending success (to be merged into an immediate write). */
  take(agentId: string): AttestationSuccess | undefined {
    const p = this.pending.get(agentId)
    if (p) this.pending.delete(agentId)
    return p
  }

  get size(): number {
    return this.pending.size
  }

  /** Writes the pending successes; never rejects (a failed batch stays pending). */
  flush(): Promise<void> {
    const run = async () => {
      if (this.pending.size === 0) return
      const batch = [...this.pending.values()]
      this.pending = new Map()
      let refused: string[]
      const started = performance.now()
      try {
        refused = await this.deps.repo.recordSuccesses(this.deps.leaseHolder, batch)
        this.deps.onWritten?.(batch.length, (performance.now() - started) / 1000)
      } catch (err) {
        this.deps.outage.failed(err, 'batched attestation results')
        for (const s of batch)
          if (!this.pending.has(s.agentId) && this.deps.isHeld(s.agentId)) this.pending.set(s.agentId, s)
        return
      }
      this.deps.outage.succeeded()
      if (refused.length > 0)
        this.deps.log.info(
          { released: refused.length },
          'lease: agents released (write fence refused: lease lost, stopped or deleted)',
        )
      const byId = new Map(batch.map((b) => [b.agentId, b]))
      for (const id of refused) await this.deps.onRefused(byId.get(id) as AttestationSuccess)
    }
    this.flushing = this.flushing.then(run, run)
    return this.flushing
  }
}
