/**
 * What the loop keeps per attested agent, built once per (re)start from its stored row. Every stored value is
 * parsed here; one that does not parse is the verifier's own fault, never the agent's: it is named in `unusable`
 * and the agent's first step ends in "cannot evaluate" (FAILED, no revocation) instead of a restart from scratch
 * or an empty accept list.
 */
import type { KeyObject } from 'node:crypto'
import { AgentState } from '../api/verifier/states.ts'
import type { AttestationSuccess, VerifierAgentRow } from '../db/verifier-repository.ts'
import type { CompiledRuntimePolicy, ImaReplayState } from '../evidence/ima/index.ts'
import { ImaKeyring, parseKeyringJson } from '../evidence/ima/index.ts'
import type { MbPolicy } from '../evidence/mb/index.ts'
import { akKeyObject, parseTpmPolicy, type TpmClockInfo, type TpmPolicy } from '../evidence/quote/index.ts'
import type { RevocationSubject } from './revocation-notifier.ts'

export interface AgentRuntime {
  id: string
  /** Bumped on every remove/restart: a step that finds another generation drops its result. */
  generation: number
  /** Lease epoch of the row when this verifier took it: writes are fenced by holder and epoch. */
  leaseEpoch: number
  configVersion: number
  state: AgentState
  inFlight: boolean
  ip: string
  port: number
  apiVersion: string
  mtlsCert: string | null
  v: string | null
  tpmPolicy: TpmPolicy
  /** PCRs requested and required in every quote: derived from all enrolled policies once they are loaded. */
  requiredPcrs: readonly number[]
  pcrMask: string
  akPublic: KeyObject
  accepted: { hash: string[]; encryption: string[]; signing: string[] }
  subject: RevocationSubject
  pubkey: string | null
  encryptedV: { forPubkey: string; b64: string } | null
  clock: TpmClockInfo | null
  attestationCount: number
  numRetries: number
  severityLevel: number | null
  /** Next quote sends partial=0 (first of a (re)start, after a connection retry, or no cached pubkey). */
  sendPubkey: boolean
  provideV: boolean
  pubkeyChanged: boolean
  imaPolicyId: number | null
  mbPolicyId: number | null
  /** Loaded at the first step of a (re)start; shared compiled objects from the PolicyStore. */
  policies: { runtime: CompiledRuntimePolicy | null; mb: MbPolicy | null } | null
  /** IMA incremental replay state (persisted as `ima_state`). */
  imaState: ImaReplayState | null
  /** Deprecated per-agent `ima_sign_verification_keys` keyring; replaces the policy's keys when set. */
  verificationKeys: ImaKeyring | null
  /** A stored value that cannot be used: the agent cannot be evaluated. */
  unusable: { field: string; message: string } | null
  /** The last good attestation, handed to the write batch. */
  lastSuccess: AttestationSuccess | null
  /** Seconds since the epoch of the last quote received (written with a failure). */
  lastReceivedQuote: number | null
}

/** The enrolled `ima_sign_verification_keys` JSON keyring ('' or absent = none); validated at enrollment. */
export function agentKeyring(text: string | null): ImaKeyring | null {
  if (!text || text.trim() === '' || text.trim() === '{}') return null
  return ImaKeyring.fromJSON(parseKeyringJson(text, 'ima_sign_verification_keys'))
}

export function parseImaState(text: string | null): ImaReplayState | null {
  if (!text) return null
  const s = JSON.parse(text) as ImaReplayState
  if (
    s?.version !== 1 ||
    !Number.isSafeInteger(s.nextEntry) ||
    s.nextEntry < 0 ||
    typeof s.pcr10 !== 'object' ||
    typeof s.learnedKeyrings !== 'object'
  )
    throw new Error('not an IMA replay state (version 1)')
  return s
}

/** A stored accept list: a JSON list of strings (an upstream client may have sent one string, stored as a list). */
export function parseAcceptList(text: string | null): string[] {
  if (text === null) throw new Error('missing')
  const v = JSON.parse(text) as unknown
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string'))
    throw new Error('not a JSON list of strings')
  return v
}

function parseClock(text: string | null): TpmClockInfo | null {
  if (!text) return null
  const c = JSON.parse(text) as TpmClockInfo
  for (const k of ['clock', 'resetCount', 'restartCount', 'safe'] as const)
    if (typeof c?.[k] !== 'number') throw new Error(`clock info without numeric ${k}`)
  return c
}

/** Parsed tpm_policy by text, shared by agents enrolled with the same one; bounded (oldest evicted). */
const policyCache = new Map<string, TpmPolicy>()
const MAX_SHARED_POLICIES = 4096

function sharedTpmPolicy(text: string): TpmPolicy {
  let p = policyCache.get(text)
  if (!p) {
    p = parseTpmPolicy(text)
    if (policyCache.size >= MAX_SHARED_POLICIES) policyCache.delete(policyCache.keys().next().value as string)
    policyCache.set(text, p)
  }
  return p
}

const NO_POLICY: TpmPolicy = { pcrs: new Map(), mask: '0x0' }

/**
 * Builds the runtime record of an agent row that has an address (the caller checks ip and port). `akPublic`: the
 * row's AK already imported from this very `ak_tpm` (enrolment checked it), so it is not imported again.
 */
export function agentRuntimeFromRow(
  row: VerifierAgentRow & { ip: string; port: number },
  akPublic?: KeyObject,
): AgentRuntime {
  let unusable: AgentRuntime['unusable'] = null
  const parse = <T>(field: string, fallback: T, f: () => T): T => {
    if (unusable !== null) return fallback
    try {
      return f()
    } catch (err) {
      unusable = { field, message: (err as Error).message }
      return fallback
    }
  }
  const tpmPolicy = parse('tpm_policy', NO_POLICY, () => sharedTpmPolicy(row.tpm_policy ?? ''))
  // without a usable AK nothing can be verified; a placeholder keeps the record's type, `unusable` stops the agent
  const ak =
    akPublic ??
    parse('ak_tpm', null as KeyObject | null, () =>
      akKeyObject(new Uint8Array(Buffer.from(row.ak_tpm ?? '', 'base64'))),
    )
  const accepted = {
    hash: parse('accept_tpm_hash_algs', [] as string[], () => parseAcceptList(row.accept_tpm_hash_algs)),
    encryption: parse('accept_tpm_encryption_algs', [] as string[], () =>
      parseAcceptList(row.accept_tpm_encryption_algs),
    ),
    signing: parse('accept_tpm_signing_algs', [] as string[], () =>
      parseAcceptList(row.accept_tpm_signing_algs),
    ),
  }
  const imaState = parse('ima_state', null, () => parseImaState(row.ima_state))
  const clock = parse('tpm_clockinfo', null, () => parseClock(row.tpm_clockinfo))
  const verificationKeys = parse('ima_sign_verification_keys', null, () =>
    agentKeyring(row.ima_sign_verification_keys),
  )
  return {
    id: row.agent_id,
    generation: 0,
    leaseEpoch: row.lease_epoch,
    configVersion: row.config_version,
    state: AgentState.START,
    inFlight: false,
    ip: row.ip,
    port: row.port,
    apiVersion: row.supported_version ?? '2.6',
    mtlsCert: row.mtls_cert,
    v: row.v,
    tpmPolicy,
    requiredPcrs: [],
    pcrMask: tpmPolicy.mask,
    akPublic: ak as KeyObject,
    accepted,
    subject: {
      agentId: row.agent_id,
      ip: row.ip,
      port: row.port,
      tpmPolicy: row.tpm_policy ?? '',
      metaData: row.meta_data,
      revocationKey: row.revocation_key,
    },
    pubkey: row.public_key,
    encryptedV: null,
    clock,
    attestationCount: row.attestation_count,
    numRetries: 0,
    severityLevel: row.severity_level,
    sendPubkey: true,
    provideV: true,
    pubkeyChanged: false,
    imaPolicyId: row.ima_policy_id,
    mbPolicyId: row.mb_policy_id,
    policies: null,
    imaState,
    verificationKeys,
    unusable,
    lastSuccess: null,
    lastReceivedQuote: row.last_received_quote === null ? null : Number(row.last_received_quote),
  }
}
