/**
 * Push verdicts are written in batches (one transaction of five statements every `flushMs`), as the pull loop's
 * results are. Nothing is lost by writing them late: until its verdict is committed an attestation stays
 * `evaluating_evidence`, held by this verifier, with its evidence stored; if this process dies first the hold expires
 * and a verifier of the group evaluates it again from the stored evidence (the monitor's `resumeAbandoned`). Every
 * write is conditional on the holder, so a verdict is counted once whoever finishes it.
 */
import { databaseUnavailableReason } from '../../api/server.ts'
import type { Logger } from '../../common/log.ts'
import type { CompletedBatch, CompletedEvaluation, PushRepository } from '../../db/push-repository.ts'
import type { DbOutage } from '../db-outage.ts'

/** How soon verdicts the database refused (outage) are written again. */
const OUTAGE_RETRY_MS = 1000

export interface VerdictOutcome {
  /** The verdict was written (the evaluation was still ours). */
  written: boolean
  /** The agent is still enrolled (its state was written). */
  enrolled: boolean
}

interface Pending {
  item: CompletedEvaluation
  after: (outcome: VerdictOutcome) => void
}

export class PushResultBatcher {
  /** At most one verdict per agent per batch; a second waits for the next. */
  private pending = new Map<string, Pending>()
  private deferred: Pending[] = []
  private timer: NodeJS.Timeout | null = null
  private flushing: Promise<void> = Promise.resolve()

  constructor(
    private readonly deps: {
      repo: PushRepository
      flushMs: number
      /** The expiry a passing attestation extends its token to, null when tokens are not extended. */
      extendUntil: () => string | null
      /** Tokens extended by a batch (the session cache learns their new expiry). */
      onExtended: (sessions: CompletedBatch['extended']) => void
      outage: DbOutage
      log: Logger
      onWritten?: (rows: number, seconds: number) => void
    },
  ) {}

  /** Writes what is pending. */
  async stop(): Promise<void> {
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
    await this.flush()
  }

  get size(): number {
    return this.pending.size + this.deferred.length
  }

  put(item: CompletedEvaluation, after: (outcome: VerdictOutcome) => void): void {
    const p = { item, after }
    if (this.pending.has(item.agentId)) this.deferred.push(p)
    else this.pending.set(item.agentId, p)
    this.schedule()
  }

  /**
   * A batch is written flushMs after its first verdict, and verdicts that arrive while one is written wait for the
   * next timer instead of following at once: on SQLite a batch holds the one write lock for its whole transaction
   * (several statements), and batches back to back kept the request writes (answered 201/202) waiting behind them.
   */
  private schedule(): void {
    this.timer ??= setTimeout(() => {
      this.timer = null
      void this.flush(false)
    }, this.deps.flushMs)
  }

  /**
   * Writes what is pending (`all`: until nothing is, else one batch and the rest at the next timer); never rejects (a
   * batch the database refused stays pending).
   */
  flush(all = true): Promise<void> {
    const run = async () => {
      let batches = 0
      while (this.pending.size > 0) {
        if (!all && batches > 0) {
          this.schedule()
          return
        }
        batches++
        const batch = [...this.pending.values()]
        this.pending = new Map()
        const deferred = this.deferred
        this.deferred = []
        for (const p of deferred) this.put(p.item, p.after)
        // an outage: what is pending is written by a later batch
        if (!(await this.write(batch))) {
          this.timer ??= setTimeout(() => {
            this.timer = null
            void this.flush()
          }, OUTAGE_RETRY_MS)
          return
        }
      }
    }
    this.flushing = this.flushing.then(run, run)
    return this.flushing
  }

  /** False when the database is unreachable (the batch is pending again). */
  private async write(batch: Pending[]): Promise<boolean> {
    const started = performance.now()
    let result: CompletedBatch
    try {
      result = await this.deps.repo.completeMany(
        batch.map((p) => p.item),
        this.deps.extendUntil(),
      )
    } catch (err) {
      if (databaseUnavailableReason(err) !== null) {
        this.deps.outage.failed(err, 'batched push verdicts')
        for (const p of batch) if (!this.pending.has(p.item.agentId)) this.pending.set(p.item.agentId, p)
        return false
      }
      // a verdict the database refuses alone must not hold back the others; a refused one is evaluated again once
      // its hold expires
      for (const p of batch) await this.writeOne(p)
      return true
    }
    this.deps.outage.succeeded()
    this.deps.onWritten?.(batch.length, (performance.now() - started) / 1000)
    this.report(batch, result)
    return true
  }

  private async writeOne(p: Pending): Promise<void> {
    try {
      this.report([p], await this.deps.repo.completeMany([p.item], this.deps.extendUntil()))
    } catch (err) {
      this.deps.log.error(
        { agentId: p.item.agentId, index: p.item.index, err: (err as Error).message },
        'push verdict not written; the evaluation is retried once its hold expires',
      )
    }
  }

  private report(batch: Pending[], result: CompletedBatch): void {
    if (result.extended.length > 0) this.deps.onExtended(result.extended)
    for (const p of batch)
      p.after({ written: result.written.has(p.item.agentId), enrolled: result.enrolled.has(p.item.agentId) })
  }
}
