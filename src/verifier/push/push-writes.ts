/**
 * Group commit of push mode's request writes. A new attestation (answered 201) and accepted evidence (answered 202)
 * are answered only once their row is committed: a PATCH may reach another verifier of the group at once, and an
 * agent told 202 must never find its evidence gone. So instead of answering earlier, the writes of all requests
 * that arrive while one batch is being written are written together by the next: one multi-row statement per kind,
 * whatever the number of requests (docs/push.md, "Writes and durability"). The outcome of each row (inserted, or
 * moved to `evaluating_evidence`) is reported to its request, so conflicts answer 409/403 as one at a time would.
 */
import { databaseUnavailableReason } from '../../api/server.ts'
import type { NewAttestationRow, PushRepository, SubmittedEvidence } from '../../db/push-repository.ts'

interface Waiting<T> {
  row: T
  resolve: (done: boolean) => void
  reject: (err: unknown) => void
}

const key = (agentId: string, index: number) => `${agentId}\u0000${index}`

export class PushWriteQueue {
  private inserts: Waiting<NewAttestationRow>[] = []
  private submits: Waiting<SubmittedEvidence>[] = []
  private scheduled = false
  private writing = false

  constructor(
    private readonly deps: {
      repo: PushRepository
      /** One batch written: rows and seconds (metrics). */
      onWritten?: (rows: number, seconds: number) => void
    },
  ) {}

  /** Inserts the attestation; false when one of the same agent and index exists (another create won). */
  insert(row: NewAttestationRow): Promise<boolean> {
    return new Promise((resolve, reject) => {
      this.inserts.push({ row, resolve, reject })
      this.schedule()
    })
  }

  /** Stores the evidence; false when the attestation no longer awaits evidence (a replayed or racing PATCH). */
  submit(row: SubmittedEvidence): Promise<boolean> {
    return new Promise((resolve, reject) => {
      this.submits.push({ row, resolve, reject })
      this.schedule()
    })
  }

  private schedule(): void {
    if (this.scheduled || this.writing) return
    this.scheduled = true
    // the requests of this turn of the event loop join the batch
    setImmediate(() => {
      this.scheduled = false
      void this.write()
    })
  }

  private async write(): Promise<void> {
    this.writing = true
    try {
      while (this.inserts.length > 0 || this.submits.length > 0) {
        const inserts = unique(this.inserts, (r) => key(r.agent_id, r.index))
        const submits = unique(this.submits, (r) => key(r.agentId, r.index))
        this.inserts = []
        this.submits = []
        const started = performance.now()
        // SQLite has one writer: both kinds in one transaction. Elsewhere they run side by side on two connections.
        if (this.deps.repo.dialect !== 'sqlite' || !(await this.together(inserts, submits)))
          await Promise.all([
            this.apply(
              inserts,
              (rows) => this.deps.repo.insertAttestations(rows),
              (r) => key(r.agent_id, r.index),
            ),
            this.apply(
              submits,
              (rows) => this.deps.repo.submitEvidenceMany(rows),
              (r) => key(r.agentId, r.index),
            ),
          ])
        this.deps.onWritten?.(inserts.length + submits.length, (performance.now() - started) / 1000)
      }
    } finally {
      this.writing = false
    }
  }

  /**
   * Both kinds in one transaction; false (nothing answered) when it failed for another reason than an outage, so
   * the statements are run apart and a bad row refused alone.
   */
  private async together(
    inserts: Waiting<NewAttestationRow>[],
    submits: Waiting<SubmittedEvidence>[],
  ): Promise<boolean> {
    if (inserts.length === 0 || submits.length === 0) return false
    try {
      const done = await this.deps.repo.writeRequests(
        inserts.map((w) => w.row),
        submits.map((w) => w.row),
      )
      for (const w of inserts) w.resolve(done.inserted.has(key(w.row.agent_id, w.row.index)))
      for (const w of submits) w.resolve(done.submitted.has(key(w.row.agentId, w.row.index)))
      return true
    } catch (err) {
      if (databaseUnavailableReason(err) === null) return false
      for (const w of [...inserts, ...submits]) w.reject(err)
      return true
    }
  }

  /** One statement for the batch (of distinct attestations); a batch that fails for another reason than an outage is retried row by row. */
  private async apply<T>(
    batch: Waiting<T>[],
    statement: (rows: T[]) => Promise<Set<string>>,
    keyOf: (row: T) => string,
  ): Promise<void> {
    if (batch.length === 0) return
    try {
      const done = await statement(batch.map((w) => w.row))
      for (const w of batch) w.resolve(done.has(keyOf(w.row)))
    } catch (err) {
      if (batch.length === 1 || databaseUnavailableReason(err) !== null) {
        for (const w of batch) w.reject(err)
        return
      }
      // one bad row (e.g. its agent deleted meanwhile) must not fail the others
      for (const w of batch)
        await statement([w.row]).then(
          (done) => w.resolve(done.has(keyOf(w.row))),
          (e: unknown) => w.reject(e),
        )
    }
  }
}

/** Two rows of one attestation in a batch: the first is written, the second lost the race (answered false here). */
function unique<T>(batch: Waiting<T>[], keyOf: (row: T) => string): Waiting<T>[] {
  const seen = new Set<string>()
  const out: Waiting<T>[] = []
  for (const w of batch) {
    const k = keyOf(w.row)
    if (seen.has(k)) w.resolve(false)
    else {
      seen.add(k)
      out.push(w)
    }
  }
  return out
}
