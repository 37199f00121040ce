/** A passing push verdict as the evaluation hands it to the verdict batch (`PushRepository.completeMany`). */
import type { CompletedEvaluation } from '../../src/db/push-repository.ts'

export function passingVerdict(agentId: string, index: number, holder: string): CompletedEvaluation {
  return {
    agentId,
    index,
    holder,
    attestation: {
      evaluation: 'pass',
      failure_reason: null,
      verification_completed_at: '2026-12-06T00:00:02Z',
      ima_state: null,
      ima_certified_entry_count: 0,
      event_id: null,
      event_context: null,
      evidence_collected: null,
    },
    agent: {
      push_deadline: Date.now() + 60_000,
      hash_alg: null,
      sign_alg: null,
      enc_alg: null,
      operational_state: null,
      failures: 'reset',
      last_event_id: null,
      last_event_context: null,
      severity_level: null,
    },
    state: {
      passed: true,
      last_received_quote: 1,
      last_successful_attestation: 1,
      tpm_clockinfo: null,
      next_ima_ml_entry: null,
      ima_state: null,
    },
  }
}
