/**
 * The pull-mode state machine (keylime-protocols.md §D) as one pure function: the agent's state and the outcome of
 * its last step in, the new state and the effects the loop must carry out out (persist, send V, notify, reschedule,
 * stop), in the order given. No I/O and no clock: the loop owns both.
 */
import { AgentState } from '../api/verifier/states.ts'
import { type FailureEvent, type SeverityRule, severityOf } from '../evidence/verdict.ts'

/** The event id of a step the verifier could not evaluate with its own (stored) data: never the agent's fault. */
export const CANNOT_EVALUATE_EVENT = 'internal.verifier.cannot_evaluate'

export type StepOutcome =
  /** The quote (and every policy) passed; `deliverV`: V is set and this agent has not received it yet. */
  | { kind: 'quote_passed'; deliverV: boolean }
  /** The evidence failed a check (§D.6). */
  | { kind: 'quote_failed'; events: readonly FailureEvent[] }
  | { kind: 'v_delivered' }
  /** Nothing to deliver (no V or no public key yet). */
  | { kind: 'v_not_needed' }
  /** Timeout, connection/TLS error or 408/500/599 (§D.2). */
  | { kind: 'unreachable' }
  /** Any other HTTP answer (§D.2), including a version the agent and the verifier cannot agree on. */
  | { kind: 'refused'; httpStatus: number | undefined }
  /** The agent API version was renegotiated: quote again at once. */
  | { kind: 'renegotiated' }
  /** The verifier's own data (stored row, policy) is unusable or the step crashed: not the agent's fault. */
  | { kind: 'cannot_evaluate'; context: Record<string, unknown> }

export type Effect =
  /** Write the new state; `batched` for the success hot path, `now` (retried until written) otherwise. */
  | { kind: 'persist'; mode: 'batched' | 'now' }
  /** Record the event shown by GET /agents/:id (`last_event_id`, `last_event_context`, `severity_level`). */
  | { kind: 'record_event'; eventId: string; context: Record<string, unknown>; severityLevel: number | null }
  | { kind: 'revoke'; eventId: string; severityLabel: string; context: Record<string, unknown> }
  | { kind: 'notify_comm_error' }
  /** Deliver V (encrypted to the agent's key) as the next step, at once. */
  | { kind: 'send_v' }
  /** Run the next step after `delayMs`; `sendPubkey`: ask for the public key again (partial=0). */
  | { kind: 'reschedule'; delayMs: number; sendPubkey: boolean }
  /** Leave the loop; the agent stays in its (persisted) state until reactivated. */
  | { kind: 'stop' }

/** What the machine needs to know about the agent (the loop passes its runtime record as is). */
export interface AgentCounters {
  numRetries: number
  /** Good attestations so far. */
  attestationCount: number
  /** Highest severity recorded so far; null = none. */
  severityLevel: number | null
}

/** The verifier's settings the machine applies. */
export interface MachineOptions {
  maxRetries: number
  retryInterval: number
  exponentialBackoff: boolean
  quoteIntervalMs: number
  severityLabels: readonly string[]
  severityRules: readonly SeverityRule[]
}

export interface Transition {
  state: AgentState
  numRetries: number
  effects: readonly Effect[]
}

export class NoTransitionError extends Error {
  constructor(state: AgentState, outcome: StepOutcome['kind']) {
    super(`no transition from state ${state} on ${outcome}`)
  }
}

/** States in which the loop runs a quote step; PROVIDE_V(_RETRY) run the V step; all others are not attested. */
const QUOTING: readonly AgentState[] = [
  AgentState.START,
  AgentState.GET_QUOTE,
  AgentState.GET_QUOTE_RETRY,
  AgentState.INVALID_QUOTE,
]
const PROVIDING_V: readonly AgentState[] = [AgentState.PROVIDE_V, AgentState.PROVIDE_V_RETRY]

export function isAttestedState(state: AgentState): boolean {
  return QUOTING.includes(state) || PROVIDING_V.includes(state)
}

/** Delay before retry `n` (1-based): `retry_interval ** n` with exponential backoff and an interval above 1. */
export function retryDelayMs(n: number, retryInterval: number, exponentialBackoff: boolean): number {
  return (exponentialBackoff && retryInterval > 1 ? retryInterval ** n : retryInterval) * 1000
}

export function transition(
  state: AgentState,
  outcome: StepOutcome,
  agent: AgentCounters,
  o: MachineOptions,
): Transition {
  if (!isAttestedState(state)) return { state, numRetries: agent.numRetries, effects: [{ kind: 'stop' }] }
  const quoting = QUOTING.includes(state)
  switch (outcome.kind) {
    case 'quote_passed':
      if (!quoting) break
      return outcome.deliverV
        ? {
            state: AgentState.PROVIDE_V,
            numRetries: 0,
            effects: [{ kind: 'persist', mode: 'batched' }, { kind: 'send_v' }],
          }
        : nextQuote(o, 0, { kind: 'persist', mode: 'batched' })
    case 'quote_failed':
      if (!quoting) break
      return quoteFailed(outcome.events, agent, o)
    case 'v_delivered':
      if (quoting) break
      return nextQuote(o, 0, persistNow)
    case 'v_not_needed':
      if (quoting) break
      return nextQuote(o, agent.numRetries, null)
    case 'unreachable':
      return unreachable(state, quoting, agent, o)
    case 'refused':
      return { state: AgentState.FAILED, numRetries: agent.numRetries, effects: [persistNow, stop] }
    case 'renegotiated':
      return {
        state,
        numRetries: agent.numRetries,
        effects: [persistNow, { kind: 'reschedule', delayMs: 0, sendPubkey: false }],
      }
    case 'cannot_evaluate':
      // fail closed (never a pass), but no revocation: the machine did nothing wrong
      return {
        state: AgentState.FAILED,
        numRetries: agent.numRetries,
        effects: [
          {
            kind: 'record_event',
            eventId: CANNOT_EVALUATE_EVENT,
            context: outcome.context,
            severityLevel: agent.severityLevel,
          },
          persistNow,
          stop,
        ],
      }
  }
  throw new NoTransitionError(state, outcome.kind)
}

const persistNow: Effect = { kind: 'persist', mode: 'now' }
const stop: Effect = { kind: 'stop' }

/** §D.6: INVALID_QUOTE, record the worst event when severity rises, revoke, stop or re-quote at once. */
function quoteFailed(events: readonly FailureEvent[], agent: AgentCounters, o: MachineOptions): Transition {
  if (events.length === 0) throw new Error('a failed quote needs at least one event')
  let worst = events[0] as FailureEvent
  let worstLevel = -1
  for (const ev of events) {
    const level = severityOf(ev, o.severityRules, o.severityLabels)
    if (level > worstLevel) {
      worstLevel = level
      worst = ev
    }
  }
  const effects: Effect[] = []
  if (agent.severityLevel === null || worstLevel > agent.severityLevel)
    effects.push({
      kind: 'record_event',
      eventId: worst.eventId,
      context: worst.context,
      severityLevel: worstLevel,
    })
  effects.push(persistNow, {
    kind: 'revoke',
    eventId: worst.eventId,
    severityLabel: o.severityLabels[worstLevel] ?? 'emergency',
    context: worst.context,
  })
  const halt = events.some((e) => !e.recoverable) || worstLevel >= o.severityLabels.length - 1
  effects.push(halt ? stop : { kind: 'reschedule', delayMs: 0, sendPubkey: false })
  return { state: AgentState.INVALID_QUOTE, numRetries: agent.numRetries, effects }
}

/** §D.5: retry with the public key requested again, FAILED after `max_retries`. */
function unreachable(
  state: AgentState,
  quoting: boolean,
  agent: AgentCounters,
  o: MachineOptions,
): Transition {
  if (agent.numRetries >= o.maxRetries) {
    // a quote that never succeeded once is not worth a notification (upstream)
    const notify = !quoting || agent.attestationCount > 0
    return {
      state: AgentState.FAILED,
      numRetries: agent.numRetries,
      effects: notify ? [persistNow, { kind: 'notify_comm_error' }, stop] : [persistNow, stop],
    }
  }
  const numRetries = agent.numRetries + 1
  const retryState = quoting ? AgentState.GET_QUOTE_RETRY : AgentState.PROVIDE_V_RETRY
  const reschedule: Effect = {
    kind: 'reschedule',
    delayMs: retryDelayMs(numRetries, o.retryInterval, o.exponentialBackoff),
    sendPubkey: true,
  }
  return {
    state: retryState,
    numRetries,
    effects: state === retryState ? [reschedule] : [persistNow, reschedule],
  }
}

/** GET_QUOTE with the next quote one interval away, after an optional write. */
function nextQuote(o: MachineOptions, numRetries: number, persist: Effect | null): Transition {
  const reschedule: Effect = { kind: 'reschedule', delayMs: o.quoteIntervalMs, sendPubkey: false }
  return { state: AgentState.GET_QUOTE, numRetries, effects: persist ? [persist, reschedule] : [reschedule] }
}
