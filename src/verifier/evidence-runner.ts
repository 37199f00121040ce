/**
 * The verifier's single entry point into the evidence pipeline, shared by the pull loop and `POST /verify/evidence`
 * (and push mode). With a pool (`evidence_workers` > 0, the default: one per core) each evaluation runs on a worker
 * thread; without one it runs on the event loop, `sliceLines` IMA lines per turn, so a long list (a first
 * attestation after a reboot can carry hundreds of thousands of entries) never stalls other agents, and the quote's
 * signature, most of a PCR-only attestation's CPU, is verified first on libuv's thread pool (on two cores the event
 * loop is what limits a saturated verifier; the hand-over costs a few microseconds, a worker job far more).
 */
import { KeyObject } from 'node:crypto'
import { EvidenceEvaluation, type EvidenceInput, type EvidenceResult } from '../evidence/pipeline.ts'
import { parseQuoteString, type QuoteParts, verifyQuoteSignatureAsync } from '../evidence/quote/index.ts'
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
    const parts = quotePartsOf(input.quote)
    if (parts === null || !(input.akPublic instanceof KeyObject)) return this.evaluate(input)
    // the signature (most of a PCR-only quote's CPU) on libuv's threads, the rest here; the pipeline still checks
    // everything, the signature computation only for exactly the parts verified here
    return verifyQuoteSignatureAsync(input.akPublic, parts, input.hashAlg).then(() =>
      this.evaluate(parts === input.quote ? input : { ...input, quote: parts }),
    )
  }

  close(): Promise<void> {
    return this.pool?.close() ?? Promise.resolve()
  }

  private evaluate(input: EvidenceInput): Promise<EvidenceResult> {
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

/** The quote's decoded parts, or null when it does not parse (the pipeline then reports why). */
function quotePartsOf(quote: string | QuoteParts): QuoteParts | null {
  if (typeof quote !== 'string') return quote
  try {
    return parseQuoteString(quote)
  } catch {
    return null
  }
}
