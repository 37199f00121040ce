/**
 * `POST /v2.x/verify/evidence` (keylime-api.md §3, public): the caller's quote, keys, logs and policies turned into
 * the same `EvidenceInput` the pull loop builds, so both go through one pipeline. No clock check (no history), no
 * key binding (no agent pubkey), IMA from entry 0.
 */
import type { EvidenceInput, EvidenceResult } from '../evidence/pipeline.ts'
import { akKeyObject, isQuoteHashAlg, parseTpmPolicy, requiredPcrs } from '../evidence/quote/index.ts'
import { failure } from '../evidence/verdict.ts'
import type { VerifierOptions } from './options.ts'
import { b64decode, VerifierRequestError } from './policy-input.ts'
import type { PolicyStore } from './policy-store.ts'

/** Missing parameters: upstream answers 400 with `{valid: false, claims: {}, failures}`. */
export class EvidenceParamsError extends VerifierRequestError {
  constructor(readonly failures: { type: string; context: unknown }[]) {
    super(400, 'Bad Request')
  }
}

export function evidenceInputFromRequest(
  body: unknown,
  o: VerifierOptions,
  policies: PolicyStore,
): EvidenceInput {
  if (typeof body !== 'object' || body === null) throw new VerifierRequestError(400, 'Bad Request')
  const b = body as Record<string, unknown>
  if (b.type !== 'tpm') throw new VerifierRequestError(400, 'invalid evidence type')
  const data = (typeof b.data === 'object' && b.data !== null ? b.data : {}) as Record<string, unknown>
  const failures: { type: string; context: unknown }[] = []
  for (const k of ['quote', 'nonce', 'hash_alg', 'tpm_ek', 'tpm_ak'])
    if (typeof data[k] !== 'string' || data[k] === '')
      failures.push({ type: 'qoute_validation.missing_param', context: { message: `missing ${k}` } })
  if (
    typeof data.tpm_policy !== 'string' &&
    data.runtime_policy === undefined &&
    data.mb_policy === undefined
  )
    failures.push({
      type: 'default.missing_policy',
      context: { message: 'one of tpm_policy, runtime_policy, mb_policy' },
    })
  if (failures.length > 0) throw new EvidenceParamsError(failures)
  const runtime =
    data.runtime_policy === undefined ? null : policies.compileRuntimeTextChecked(String(data.runtime_policy))
  const mbPolicy =
    data.mb_policy === undefined || data.mb_policy === null
      ? null
      : policies.parseMbTextChecked(String(data.mb_policy))
  const hashAlg = String(data.hash_alg)
  if (!isQuoteHashAlg(hashAlg)) throw new VerifierRequestError(400, `unsupported hash_alg ${hashAlg}`)
  let akPublic: ReturnType<typeof akKeyObject>
  try {
    akPublic = akKeyObject(new Uint8Array(b64decode('tpm_ak', String(data.tpm_ak))))
  } catch (err) {
    throw new VerifierRequestError(400, `tpm_ak: ${(err as Error).message}`)
  }
  const mbLog = typeof data.mb_log === 'string' ? b64decode('mb_log', data.mb_log) : undefined
  const imaList = typeof data.ima_measurement_list === 'string' ? data.ima_measurement_list : undefined
  const tpmPolicy = typeof data.tpm_policy === 'string' ? parseTpmPolicy(data.tpm_policy) : null
  return {
    akPublic,
    quote: String(data.quote),
    nonce: String(data.nonce),
    hashAlg,
    encAlg: 'any',
    signAlg: 'any',
    accepted: { hash: [hashAlg], encryption: ['any'], signing: ['any'] },
    tpmPolicy,
    requiredPcrs: requiredPcrs(tpmPolicy ?? { pcrs: new Map(), mask: '0x0' }, {
      runtimePolicy: runtime !== null,
      measuredBootPolicy: mbPolicy !== null && mbPolicy.refstate !== null,
      bindsPubkey: false,
    }),
    previousClock: null,
    checkClock: false,
    measuredBoot:
      mbPolicy !== null || mbLog !== undefined
        ? {
            eventLog: mbLog,
            policy: mbPolicy,
            evaluatePolicy: true,
            missingLogEvent: failure('measured_boot.missing_param', 'mb_log is required', true),
          }
        : null,
    ima:
      runtime !== null || imaList !== undefined
        ? {
            listText: imaList,
            firstEntry: 0,
            state: null,
            policy: runtime,
            ignoreTomtouErrors: o.ignoreTomtouErrors,
            missingListEvent: failure('ima.missing_param', 'ima_measurement_list is required', true),
          }
        : null,
  }
}

/** The `results` of the evidence API: validity, the quoted PCRs as claims, and the failures. */
export function evidenceResults(out: EvidenceResult) {
  const claims =
    out.pcrs.size === 0
      ? {}
      : {
          pcrs: Object.fromEntries(
            [...out.pcrs].map(([k, v]) => [String(k), Buffer.from(v).toString('hex')]),
          ),
        }
  return {
    valid: out.verdict.ok,
    claims,
    failures: out.verdict.ok ? [] : out.verdict.events.map((e) => ({ type: e.eventId, context: e.context })),
  }
}
