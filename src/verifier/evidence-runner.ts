/**
 * The verifier's single entry point into the evidence pipeline, shared by the pull loop and `POST /verify/evidence`
 * (and push mode). With a pool (`evidence_workers` > 0, the default: one per core) each evaluation runs on a worker
 * thread; without one it runs on the event loop, `sliceLines` IMA lines per turn, so a long list (a first
 * attestation after a reboot can carry hundreds of thousands of entries) never stalls other agents.
 */
import { EvidenceEvaluation, type EvidenceInput, type EvidenceResult } from '../evidence/pipeline.ts'
import type { EvidencePool } from './evidence-pool.ts'

/** IMA lines verified between two turns of the event loop (~20-30 ms of work). */
export const IMA_SLICE_LINES = 10_000

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve))

export class EvidenceRunner {
  constructor(
    readonly pool: EvidencePool | null = null,
    private readonly sliceLines = IMA_SLICE_LINES,
  ) {}

  /** Rejects when the evidence could not be evaluated (the caller fails closed: "cannot evaluate"). */
  run(input: EvidenceInput): Promise<EvidenceResult> {
    if (this.pool !== null) return this.pool.run(input)
    const evaluation = new EvidenceEvaluation(input)
    // most attestations fit in one slice: no extra turn for them
    if (evaluation.step(this.sliceLines)) return Promise.resolve(evaluation.result())
    return this.finish(evaluation)
  }

  close(): Promise<void> {
    return this.pool?.close() ?? Promise.resolve()
  }

  private async finish(evaluation: EvidenceEvaluation): Promise<EvidenceResult> {
    do await nextTurn()
    while (!evaluation.step(this.sliceLines))
    return evaluation.result()
  }
}
