/**
 * The messages between the evidence pool (`evidence-pool.ts`, event loop) and its workers (`evidence-worker.ts`):
 * an `EvidenceInput` with each policy replaced by its digest (its text rides along only the first time a worker
 * meets it; the worker keeps the compiled policy), the agent's keyring as JSON (its keys live in private fields that
 * a structured clone would lose) and the boot log's bytes transferred, not copied.
 */
import {
  type CompiledRuntimePolicy,
  compileRuntimePolicy,
  type ImaChunkPlan,
  ImaKeyring,
  type KeyringJson,
  parseRuntimePolicy,
} from '../evidence/ima/index.ts'
import { type MbPolicy, type MbPolicyEngine, parseMbPolicy } from '../evidence/mb/index.ts'
import type {
  EvidenceInput,
  EvidenceResult,
  ImaEvidence,
  MeasuredBootEvidence,
} from '../evidence/pipeline.ts'

/** Where a compiled policy came from: enough for a worker to build the same one. */
export type PolicySource =
  | { kind: 'runtime'; key: string; text: string }
  | { kind: 'mb'; key: string; text: string; engine: MbPolicyEngine }

/** A policy in a job: its key, plus its source when the receiving worker does not hold it yet. */
export interface PolicyRef {
  key: string
  source?: PolicySource
}

export interface WireEvidenceInput extends Omit<EvidenceInput, 'measuredBoot' | 'ima'> {
  measuredBoot: (Omit<MeasuredBootEvidence, 'policy'> & { policy: PolicyRef | null }) | null
  ima:
    | (Omit<ImaEvidence, 'policy' | 'verificationKeys'> & {
        policy: PolicyRef | null
        verificationKeys: KeyringJson | null
      })
    | null
}

export interface EvidenceJob {
  id: number
  input: WireEvidenceInput
  /** Policy keys the worker may forget (the pool bounds what each worker holds). */
  forget: string[]
}

/**
 * Help with another worker's long IMA list: check the chunks of it nobody has taken yet (`helpWithImaChunks`)
 * until none is left. The plan carries the list's bytes (shared, not copied); `policy` is its runtime policy.
 */
export interface ImaHelpJob {
  id: number
  help: { plan: ImaChunkPlan; policy: PolicyRef | null }
  forget: string[]
}

/** A job's answer (a helper's: how many chunks it checked), or the worker's word that its entry module has loaded. */
export type EvidenceJobReply =
  | { id: number; result: EvidenceResult }
  | { id: number; helped: number }
  | { id: number; error: string }
  | { ready: true }

/** Builds the policy a source describes, exactly as the event loop's policy store does. */
export function buildPolicy(source: PolicySource): CompiledRuntimePolicy | MbPolicy {
  return source.kind === 'runtime'
    ? compileRuntimePolicy(parseRuntimePolicy(source.text, { strict: false }))
    : parseMbPolicy(source.text, { engine: source.engine })
}

/** The worker side: the job's input with its policies resolved from the worker's cache. */
export function inputFromWire(
  wire: WireEvidenceInput,
  policy: (ref: PolicyRef) => CompiledRuntimePolicy | MbPolicy,
): EvidenceInput {
  const { measuredBoot: mb, ima, ...quote } = wire
  return {
    ...quote,
    measuredBoot: mb === null ? null : { ...mb, policy: mb.policy ? (policy(mb.policy) as MbPolicy) : null },
    ima:
      ima === null
        ? null
        : {
            ...ima,
            policy: ima.policy ? (policy(ima.policy) as CompiledRuntimePolicy) : null,
            verificationKeys: ima.verificationKeys ? ImaKeyring.fromJSON(ima.verificationKeys) : undefined,
          },
  }
}
