/**
 * The pull-mode state machine (keylime-protocols.md §D) as a table: every state against every outcome, each row
 * the expected new state and effects. A pair missing from the table fails the completeness test.
 */
import { describe, expect, it } from 'vitest'
import { AgentState, ALL_AGENT_STATES } from '../../../src/api/verifier/states.ts'
import { DEFAULT_SEVERITY_LABELS, failure } from '../../../src/evidence/verdict.ts'
import {
  type AgentCounters,
  CANNOT_EVALUATE_EVENT,
  type Effect,
  type MachineOptions,
  NoTransitionError,
  type StepOutcome,
  transition,
} from '../../../src/verifier/state-machine.ts'

const S = AgentState
const ctx: AgentCounters & MachineOptions = {
  numRetries: 0,
  attestationCount: 3,
  severityLevel: null,
  maxRetries: 5,
  retryInterval: 2,
  exponentialBackoff: true,
  quoteIntervalMs: 2000,
  severityLabels: DEFAULT_SEVERITY_LABELS,
  // PCR failures are "warning" (recoverable, below the top), everything else the default "emergency"
  severityRules: [
    { eventId: /pcr_validation\..*/, label: 'warning' },
    { eventId: /.*/, label: 'emergency' },
  ],
}

const pcrFailure = failure('pcr_validation.invalid_pcr_15', { got: 'aa', expected: ['bb'] })
const quoteForgery = failure(
  'qoute_validation.quote_validation',
  { reason: 'nonce', message: 'nonce' },
  false,
)

const OUTCOMES: Record<string, StepOutcome> = {
  passed: { kind: 'quote_passed', deliverV: false },
  passedDeliverV: { kind: 'quote_passed', deliverV: true },
  failedRecoverable: { kind: 'quote_failed', events: [pcrFailure] },
  failedForged: { kind: 'quote_failed', events: [quoteForgery] },
  vDelivered: { kind: 'v_delivered' },
  vNotNeeded: { kind: 'v_not_needed' },
  unreachable: { kind: 'unreachable' },
  refused: { kind: 'refused', httpStatus: 404 },
  renegotiated: { kind: 'renegotiated' },
  cannotEvaluate: { kind: 'cannot_evaluate', context: { field: 'ima_state', message: 'bad JSON' } },
}

const persistBatched: Effect = { kind: 'persist', mode: 'batched' }
const persistNow: Effect = { kind: 'persist', mode: 'now' }
const stop: Effect = { kind: 'stop' }
const after = (delayMs: number, sendPubkey = false): Effect => ({ kind: 'reschedule', delayMs, sendPubkey })
const recordPcr: Effect = {
  kind: 'record_event',
  eventId: pcrFailure.eventId,
  context: pcrFailure.context,
  severityLevel: 2,
}
const revokePcr: Effect = {
  kind: 'revoke',
  eventId: pcrFailure.eventId,
  severityLabel: 'warning',
  context: pcrFailure.context,
}
const recordForgery: Effect = {
  kind: 'record_event',
  eventId: quoteForgery.eventId,
  context: quoteForgery.context,
  severityLevel: 6,
}
const revokeForgery: Effect = {
  kind: 'revoke',
  eventId: quoteForgery.eventId,
  severityLabel: 'emergency',
  context: quoteForgery.context,
}
const cannotEvaluate: Effect = {
  kind: 'record_event',
  eventId: CANNOT_EVALUATE_EVENT,
  context: { field: 'ima_state', message: 'bad JSON' },
  severityLevel: null,
}

type Row = { state: AgentState; effects: Effect[] } | 'none'

/** What every quoting state (START, GET_QUOTE, GET_QUOTE_RETRY, INVALID_QUOTE re-quote) does. */
const quoting = (retryState: AgentState, from: AgentState): Record<keyof typeof OUTCOMES, Row> => ({
  passed: { state: S.GET_QUOTE, effects: [persistBatched, after(2000)] },
  passedDeliverV: { state: S.PROVIDE_V, effects: [persistBatched, { kind: 'send_v' }] },
  failedRecoverable: { state: S.INVALID_QUOTE, effects: [recordPcr, persistNow, revokePcr, after(0)] },
  failedForged: { state: S.INVALID_QUOTE, effects: [recordForgery, persistNow, revokeForgery, stop] },
  vDelivered: 'none',
  vNotNeeded: 'none',
  unreachable: {
    state: retryState,
    effects: from === retryState ? [after(2000, true)] : [persistNow, after(2000, true)],
  },
  refused: { state: S.FAILED, effects: [persistNow, stop] },
  renegotiated: { state: from, effects: [persistNow, after(0)] },
  cannotEvaluate: { state: S.FAILED, effects: [cannotEvaluate, persistNow, stop] },
})

const providingV = (from: AgentState): Record<keyof typeof OUTCOMES, Row> => ({
  passed: 'none',
  passedDeliverV: 'none',
  failedRecoverable: 'none',
  failedForged: 'none',
  vDelivered: { state: S.GET_QUOTE, effects: [persistNow, after(2000)] },
  vNotNeeded: { state: S.GET_QUOTE, effects: [after(2000)] },
  unreachable: {
    state: S.PROVIDE_V_RETRY,
    effects: from === S.PROVIDE_V_RETRY ? [after(2000, true)] : [persistNow, after(2000, true)],
  },
  refused: { state: S.FAILED, effects: [persistNow, stop] },
  renegotiated: { state: from, effects: [persistNow, after(0)] },
  cannotEvaluate: { state: S.FAILED, effects: [cannotEvaluate, persistNow, stop] },
})

/** States the loop never runs a step in: a late outcome only takes the agent out of the loop. */
const notAttested = (from: AgentState): Record<keyof typeof OUTCOMES, Row> =>
  Object.fromEntries(Object.keys(OUTCOMES).map((k) => [k, { state: from, effects: [stop] }])) as Record<
    keyof typeof OUTCOMES,
    Row
  >

const TABLE: Record<AgentState, Record<keyof typeof OUTCOMES, Row>> = {
  [S.REGISTERED]: notAttested(S.REGISTERED),
  [S.START]: quoting(S.GET_QUOTE_RETRY, S.START),
  [S.SAVED]: notAttested(S.SAVED),
  [S.GET_QUOTE]: quoting(S.GET_QUOTE_RETRY, S.GET_QUOTE),
  [S.GET_QUOTE_RETRY]: quoting(S.GET_QUOTE_RETRY, S.GET_QUOTE_RETRY),
  [S.PROVIDE_V]: providingV(S.PROVIDE_V),
  [S.PROVIDE_V_RETRY]: providingV(S.PROVIDE_V_RETRY),
  [S.FAILED]: notAttested(S.FAILED),
  [S.TERMINATED]: notAttested(S.TERMINATED),
  [S.INVALID_QUOTE]: quoting(S.GET_QUOTE_RETRY, S.INVALID_QUOTE),
  [S.TENANT_FAILED]: notAttested(S.TENANT_FAILED),
}

describe('pull-mode state machine (§D)', () => {
  it('the table covers every state and every outcome', () => {
    expect(Object.keys(TABLE).map(Number).sort()).toEqual([...ALL_AGENT_STATES].sort())
    for (const row of Object.values(TABLE))
      expect(Object.keys(row).sort()).toEqual(Object.keys(OUTCOMES).sort())
  })

  const cases = ALL_AGENT_STATES.flatMap((state) =>
    Object.keys(OUTCOMES).map((name) => [state, name] as const),
  )
  it.each(cases)('state %i on %s', (state, name) => {
    const expected = TABLE[state][name]
    const outcome = OUTCOMES[name] as StepOutcome
    if (expected === 'none') {
      expect(() => transition(state, outcome, ctx, ctx)).toThrow(NoTransitionError)
      return
    }
    const t = transition(state, outcome, ctx, ctx)
    expect({ state: t.state, effects: t.effects }).toEqual(expected)
  })
})

describe('retries and severity (§D.5, §D.6)', () => {
  it('backs off 2, 4, 8, 16, 32 s, then FAILED with a comm_error notification after a good attestation', () => {
    const delays: number[] = []
    let state: AgentState = S.GET_QUOTE
    let numRetries = 0
    for (;;) {
      const t = transition(state, { kind: 'unreachable' }, { ...ctx, numRetries }, ctx)
      state = t.state
      numRetries = t.numRetries
      const r = t.effects.find((e) => e.kind === 'reschedule')
      if (!r) {
        expect(t.state).toBe(S.FAILED)
        expect(t.effects).toEqual([persistNow, { kind: 'notify_comm_error' }, stop])
        break
      }
      delays.push(r.delayMs)
    }
    expect(delays).toEqual([2000, 4000, 8000, 16000, 32000])
  })

  it('gives up without a notification when the agent never passed once; a linear interval without backoff', () => {
    const t = transition(
      S.GET_QUOTE_RETRY,
      { kind: 'unreachable' },
      { ...ctx, numRetries: 5, attestationCount: 0 },
      ctx,
    )
    expect(t.effects).toEqual([persistNow, stop])
    const linear = transition(
      S.GET_QUOTE,
      { kind: 'unreachable' },
      { ...ctx, numRetries: 3 },
      { ...ctx, exponentialBackoff: false },
    )
    expect(linear.effects).toContainEqual(after(2000, true))
    // V delivery failing for good always notifies (the agent was attested)
    const v = transition(
      S.PROVIDE_V_RETRY,
      { kind: 'unreachable' },
      { ...ctx, numRetries: 5, attestationCount: 0 },
      ctx,
    )
    expect(v.effects).toContainEqual({ kind: 'notify_comm_error' })
  })

  it('records the event only when the severity rises, and resets retries after a pass', () => {
    const same = transition(
      S.INVALID_QUOTE,
      OUTCOMES.failedRecoverable as StepOutcome,
      { ...ctx, severityLevel: 2 },
      ctx,
    )
    expect(same.effects.some((e) => e.kind === 'record_event')).toBe(false)
    expect(same.effects).toContainEqual(revokePcr)
    const passed = transition(
      S.GET_QUOTE_RETRY,
      OUTCOMES.passed as StepOutcome,
      { ...ctx, numRetries: 3 },
      ctx,
    )
    expect(passed.numRetries).toBe(0)
  })

  it('the worst of several events decides; any irrecoverable one stops polling', () => {
    const t = transition(S.GET_QUOTE, { kind: 'quote_failed', events: [pcrFailure, quoteForgery] }, ctx, ctx)
    expect(t.effects).toEqual([recordForgery, persistNow, revokeForgery, stop])
  })
})
