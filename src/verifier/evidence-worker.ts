/**
 * Entry of one evidence worker thread (started by `evidence-pool.ts`): runs the pure evidence pipeline on each job
 * in arrival order and answers with its result, or with the error it threw. Compiled policies are kept by key until
 * the pool says to forget them, so a policy's text crosses the thread boundary once per worker.
 */
import { parentPort } from 'node:worker_threads'
import { type CompiledRuntimePolicy, helpWithImaChunks } from '../evidence/ima/index.ts'
import type { MbPolicy } from '../evidence/mb/index.ts'
import { evaluateEvidence } from '../evidence/pipeline.ts'
import {
  buildPolicy,
  type EvidenceJob,
  type EvidenceJobReply,
  type ImaHelpJob,
  inputFromWire,
  type PolicyRef,
} from './evidence-job.ts'

const port = parentPort
if (port === null) throw new Error('evidence-worker.ts runs only as a worker thread')

const policies = new Map<string, CompiledRuntimePolicy | MbPolicy>()

function policyFor(ref: PolicyRef): CompiledRuntimePolicy | MbPolicy {
  let p = policies.get(ref.key)
  if (p === undefined) {
    if (ref.source === undefined) throw new Error(`policy ${ref.key} was never sent to this worker`)
    p = buildPolicy(ref.source)
    policies.set(ref.key, p)
  }
  return p
}

port.on('message', (job: EvidenceJob | ImaHelpJob) => {
  for (const key of job.forget) policies.delete(key)
  let reply: EvidenceJobReply
  try {
    if ('help' in job) {
      const { plan, policy } = job.help
      const compiled = policy === null ? null : (policyFor(policy) as CompiledRuntimePolicy)
      reply = { id: job.id, helped: helpWithImaChunks(plan, compiled) }
    } else reply = { id: job.id, result: evaluateEvidence(inputFromWire(job.input, policyFor)) }
  } catch (err) {
    reply = { id: job.id, error: err instanceof Error ? err.message : String(err) }
  }
  try {
    port.postMessage(reply)
  } catch (err) {
    // a result that cannot be cloned is a bug here, never a pass
    port.postMessage({ id: job.id, error: `result not transferable: ${(err as Error).message}` })
  }
})

port.postMessage({ ready: true } satisfies EvidenceJobReply)
