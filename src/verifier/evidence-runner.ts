/**
 * The verifier's single entry point into the evidence pipeline, shared by the pull loop and `POST /verify/evidence`
 * (and push mode): runs `EvidenceEvaluation` with `sliceLines` IMA lines per event-loop turn, so a long list (a
 * first attestation after a reboot can carry hundreds of thousands of entries) never stalls other agents.
 */
import { EvidenceEvaluation, type EvidenceInput, type EvidenceResult } from '../evidence/pipeline.ts'

/** IMA lines verified between two turns of the event loop (~20-30 ms of work). */
export const IMA_SLICE_LINES = 10_000

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve))

export class EvidenceRunner {
  constructor(private readonly sliceLines = IMA_SLICE_LINES) {}

  run(input: EvidenceInput): Promise<EvidenceResult> {
    const evaluation = new EvidenceEvaluation(input)
    // most attestations fit in one slice: no extra turn for them
    if (evaluation.step(this.sliceLines)) return Promise.resolve(evaluation.result())
    return this.finish(evaluation)
  }

  private async finish(evaluation: EvidenceEvaluation): Promise<EvidenceResult> {
    do await nextTurn()
    while (!evaluation.step(this.sliceLines))
    return evaluation.result()
  }
}
