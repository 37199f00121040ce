/** Measured boot: UEFI/TCG event logs, PCR replay, boot aggregates, reference-state policies. */

export {
  checkMeasuredBoot,
  MEASUREDBOOT_PCRS,
  type MeasuredBootInput,
  type MeasuredBootResult,
} from './check.ts'
export { type BankName, EventType, eventTypeName, Guid } from './constants.ts'
export { devicePathToText } from './device-path.ts'
export { eventLogToJson } from './document.ts'
export { EventLogFormatError, MbPolicyError, ReferenceStateError } from './errors.ts'
export { createReferenceState, type ReferenceStateOptions } from './generate.ts'
export { type EventDigest, type EventLog, parseEventLog, type SpecIdEvent, type TcgEvent } from './parse.ts'
export { bigintReplacer, decodeEventPayload, eventDetail } from './payload.ts'
export { evaluateMbPolicy, explainMbPolicy, type MbPolicyFailure } from './policy.ts'
export {
  MB_POLICY_ENGINES,
  type MbPolicy,
  type MbPolicyEngine,
  type MbRefState,
  parseMbPolicy,
  relevantPcrs,
} from './refstate.ts'
export {
  bootAggregates,
  type ExtendPlan,
  type ExtendStep,
  extendPlan,
  type PcrValues,
  pcrValuesToJson,
  replayEventLog,
  startupLocalityOf,
} from './replay.ts'
