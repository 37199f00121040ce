/**
 * The pull-mode attestation loop (keylime-protocols.md §D) for every agent this verifier holds, in one scheduler:
 * a min-heap of due steps, one timer for the earliest, at most `maxConcurrency` steps in flight, per-request
 * deadlines from `request_timeout`. Per agent it keeps only what the next step needs (cached AK KeyObject, parsed
 * tpm_policy shared by text, clock info, pubkey, encrypted V); successful attestations are written in batches.
 */
import { constants, createHash, type KeyObject, publicEncrypt, randomBytes } from 'node:crypto'
import { AgentClientError } from '../api/agent/client.ts'
import type { IntegrityQuoteResults } from '../api/agent/schemas.ts'
import { AGENT_API_VERSIONS, compareVersions, negotiateVersion } from '../api/versions.ts'
import type { Logger } from '../common/log.ts'
import {
  AgentState,
  type AttestationSuccess,
  type VerifierAgentRow,
  type VerifierRepository,
} from '../db/verifier-repository.ts'
import {
  type AttestationExtensions,
  evaluateAttestation,
  type TpmClockInfo,
  type TpmPolicy,
} from '../evidence/attestation.ts'
import {
  type CompiledRuntimePolicy,
  ImaIncrementVerification,
  ImaKeyring,
  type ImaReplayState,
  type PcrBank,
  parseKeyringJson,
} from '../evidence/ima/index.ts'
import { checkMeasuredBoot, type MbPolicy } from '../evidence/mb/index.ts'
import { akKeyObject, maskOfPcrs, parseTpmPolicy, requiredPcrs } from '../evidence/quote/index.ts'
import { type FailureEvent, failure, severityOf, type Verdict } from '../evidence/verdict.ts'
import type { AgentConnections } from './agent-connections.ts'
import { DueQueue } from './due-queue.ts'
import type { VerifierOptions } from './options.ts'
import type { PolicyStore } from './policy-store.ts'
import type { RevocationNotifier, RevocationSubject } from './revocation-notifier.ts'

/** In-memory state of one agent being attested. */
interface AgentRuntime {
  id: string
  generation: number
  state: number
  inFlight: boolean
  ip: string
  port: number
  apiVersion: string
  mtlsCert: string | null
  v: string | null
  tpmPolicyText: string
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
}

export interface LoopStats {
  agents: number
  inFlight: number
  attestations: number
  failures: number
  /** Lag of steps behind their due time, ms (sampled ring of the last 65,536). */
  lagP50: number
  lagP99: number
}

const LAG_RING = 65_536
const MAX_SHARED_POLICIES = 4096
const FLUSH_MS = 200
/** IMA lines verified between two turns of the event loop (~20-30 ms of work). */
const IMA_SLICE_LINES = 10_000
const NONCE_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'

/** 20 random alphanumeric characters (the pull nonce). */
/** The enrolled `ima_sign_verification_keys` JSON keyring ('' or absent = none); validated at enrollment. */
export function agentKeyring(text: string | null): ImaKeyring | null {
  if (!text || text.trim() === '' || text.trim() === '{}') return null
  return ImaKeyring.fromJSON(parseKeyringJson(text, 'ima_sign_verification_keys'))
}

function parseImaState(text: string | null): ImaReplayState | null {
  if (!text) return null
  try {
    const s = JSON.parse(text) as ImaReplayState
    return s && s.version === 1 && Number.isInteger(s.nextEntry) ? s : null
  } catch {
    return null
  }
}

// Nonces are drawn from a pool refilled 4 KiB at a time: one randomBytes() call per quote cost more than the rest
// of the nonce. Nonces are public, so holding future ones in memory reveals nothing.
let randomPool = Buffer.alloc(0)
let randomPoolAt = 0

export function randomNonce(length = 20): string {
  let s = ''
  while (s.length < length) {
    if (randomPoolAt >= randomPool.length) {
      randomPool = randomBytes(4096)
      randomPoolAt = 0
    }
    const byte = randomPool[randomPoolAt++] as number
    // 248 = 4 * 62: bytes above it are dropped so every character is equally likely.
    if (byte < 248) s += NONCE_CHARS[byte % 62]
  }
  return s
}

function parseJsonList(text: string | null): string[] {
  if (!text) return []
  try {
    const v = JSON.parse(text)
    return Array.isArray(v) ? v.map(String) : []
  } catch {
    return []
  }
}

export interface AttestationLoopDeps {
  repo: VerifierRepository
  options: VerifierOptions
  connections: AgentConnections
  notifier: RevocationNotifier
  log: Logger
  /** This process's lease holder id. */
  leaseHolder: string
  now?: () => number
  policies: PolicyStore
}

export class AttestationLoop {
  private readonly agents = new Map<string, AgentRuntime>()
  private readonly heap = new DueQueue<{ a: AgentRuntime; gen: number }>()
  /** Parsed tpm_policy by text, shared by agents enrolled with the same one; bounded (oldest evicted). */
  private readonly policyCache = new Map<string, TpmPolicy>()
  private timer: NodeJS.Timeout | null = null
  private timerDue = Number.POSITIVE_INFINITY
  private inFlight = 0
  private running = false
  private pending = new Map<string, AttestationSuccess>()
  private flushTimer: NodeJS.Timeout | null = null
  private flushing: Promise<void> = Promise.resolve()
  private readonly lags = new Float64Array(LAG_RING)
  private lagCount = 0
  private idleWaiters: (() => void)[] = []
  attestations = 0
  failures = 0
  private readonly now: () => number

  constructor(private readonly deps: AttestationLoopDeps) {
    this.now = deps.now ?? Date.now
  }

  start(): void {
    this.running = true
    this.flushTimer = setInterval(() => void this.flush(), FLUSH_MS)
    this.arm()
  }

  has(agentId: string): boolean {
    return this.agents.has(agentId)
  }

  isInFlight(agentId: string): boolean {
    return this.agents.get(agentId)?.inFlight ?? false
  }

  get size(): number {
    return this.agents.size
  }

  /** Starts (or restarts) attesting an agent from START; the AK and policy are parsed here, once. */
  add(row: VerifierAgentRow): void {
    this.remove(row.agent_id)
    if (!row.ip || row.port === null || !row.ak_tpm || !row.tpm_policy) {
      this.deps.log.warn({ agentId: row.agent_id }, 'agent row lacks ip/port/ak_tpm/tpm_policy: not attested')
      return
    }
    // the AK is parsed once per (re)start and kept on the agent's runtime record for every quote
    const akPublic = akKeyObject(new Uint8Array(Buffer.from(row.ak_tpm, 'base64')))
    let tpmPolicy = this.policyCache.get(row.tpm_policy)
    if (!tpmPolicy) {
      tpmPolicy = parseTpmPolicy(row.tpm_policy)
      if (this.policyCache.size >= MAX_SHARED_POLICIES)
        this.policyCache.delete(this.policyCache.keys().next().value as string)
      this.policyCache.set(row.tpm_policy, tpmPolicy)
    }
    const a: AgentRuntime = {
      id: row.agent_id,
      generation: 0,
      state: AgentState.START,
      inFlight: false,
      ip: row.ip,
      port: row.port,
      apiVersion: row.supported_version ?? '2.6',
      mtlsCert: row.mtls_cert,
      v: row.v,
      tpmPolicyText: row.tpm_policy,
      tpmPolicy,
      requiredPcrs: [],
      pcrMask: tpmPolicy.mask,
      akPublic,
      accepted: {
        hash: parseJsonList(row.accept_tpm_hash_algs),
        encryption: parseJsonList(row.accept_tpm_encryption_algs),
        signing: parseJsonList(row.accept_tpm_signing_algs),
      },
      subject: {
        agentId: row.agent_id,
        ip: row.ip,
        port: row.port,
        tpmPolicy: row.tpm_policy,
        metaData: row.meta_data,
        revocationKey: row.revocation_key,
      },
      pubkey: row.public_key,
      encryptedV: null,
      clock: row.tpm_clockinfo ? (JSON.parse(row.tpm_clockinfo) as TpmClockInfo) : null,
      attestationCount: row.attestation_count,
      numRetries: 0,
      severityLevel: row.severity_level,
      sendPubkey: true,
      provideV: true,
      pubkeyChanged: false,
      imaPolicyId: row.ima_policy_id,
      mbPolicyId: row.mb_policy_id,
      policies: null,
      imaState: parseImaState(row.ima_state),
      verificationKeys: agentKeyring(row.ima_sign_verification_keys),
    }
    this.agents.set(a.id, a)
    this.schedule(a, this.now())
  }

  /** Stops attesting an agent (its pending success write is dropped); true if it was mid-step. */
  remove(agentId: string): boolean {
    const a = this.agents.get(agentId)
    if (!a) return false
    a.generation++
    this.agents.delete(agentId)
    this.pending.delete(agentId)
    this.deps.connections.release(agentId)
    return a.inFlight
  }

  /** A stored policy changed (PUT): agents using it reload their policies at their next step. */
  invalidatePolicy(kind: 'ima' | 'mb', policyId: number): void {
    for (const a of this.agents.values())
      if ((kind === 'ima' ? a.imaPolicyId : a.mbPolicyId) === policyId) a.policies = null
  }

  /** Agent ids being attested (for the `agent` revocation channel). */
  agentIds(): IterableIterator<string> {
    return this.agents.keys()
  }

  endpointOf(
    agentId: string,
  ): { ip: string; port: number; apiVersion: string; mtlsCert: string | null } | undefined {
    const a = this.agents.get(agentId)
    return a ? { ip: a.ip, port: a.port, apiVersion: a.apiVersion, mtlsCert: a.mtlsCert } : undefined
  }

  stats(): LoopStats {
    const n = Math.min(this.lagCount, LAG_RING)
    const sorted = Float64Array.from(this.lags.subarray(0, n)).sort()
    const pct = (p: number) => (n === 0 ? 0 : (sorted[Math.min(n - 1, Math.floor(p * n))] as number))
    return {
      agents: this.agents.size,
      inFlight: this.inFlight,
      attestations: this.attestations,
      failures: this.failures,
      lagP50: pct(0.5),
      lagP99: pct(0.99),
    }
  }

  resetLagStats(): void {
    this.lagCount = 0
  }

  /** Stops scheduling, waits for in-flight steps (bounded) and writes pending successes. */
  async stop(drainMs: number, opts: { flush?: boolean } = {}): Promise<void> {
    this.running = false
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
    if (this.flushTimer) clearInterval(this.flushTimer)
    this.flushTimer = null
    if (this.inFlight > 0)
      await Promise.race([
        new Promise<void>((r) => this.idleWaiters.push(r)),
        new Promise<void>((r) => setTimeout(r, drainMs).unref()),
      ])
    if (opts.flush !== false) await this.flush()
    else this.pending.clear()
    for (const id of [...this.agents.keys()]) this.remove(id)
    this.heap.clear()
  }

  // ------------------------------------------------------------------------------------- scheduling

  private schedule(a: AgentRuntime, dueAt: number): void {
    this.heap.push(dueAt, { a, gen: a.generation })
    if (dueAt < this.timerDue) this.arm()
  }

  private arm(): void {
    if (!this.running) return
    const next = this.heap.peekDue()
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
    this.timerDue = Number.POSITIVE_INFINITY
    if (next === undefined || this.inFlight >= this.deps.options.maxConcurrency) return
    this.timerDue = next
    this.timer = setTimeout(() => this.tick(), Math.max(0, next - this.now()))
  }

  private tick(): void {
    this.timer = null
    this.timerDue = Number.POSITIVE_INFINITY
    const max = this.deps.options.maxConcurrency
    const now = this.now()
    while (this.inFlight < max) {
      const due = this.heap.peekDue()
      if (due === undefined || due > now) break
      const { dueAt, item } = this.heap.pop() as { dueAt: number; item: { a: AgentRuntime; gen: number } }
      if (item.gen !== item.a.generation || !this.agents.has(item.a.id)) continue
      this.lags[this.lagCount++ % LAG_RING] = now - dueAt
      this.run(item.a, item.gen)
    }
    this.arm()
  }

  private run(a: AgentRuntime, gen: number): void {
    this.inFlight++
    a.inFlight = true
    const step =
      a.state === AgentState.PROVIDE_V || a.state === AgentState.PROVIDE_V_RETRY
        ? this.provideV(a, gen)
        : this.quote(a, gen)
    step
      .catch((err) => {
        this.deps.log.error(
          { agentId: a.id, err: (err as Error).message },
          'attestation step failed unexpectedly',
        )
        if (gen === a.generation) void this.toFailed(a, gen, 'internal')
      })
      .finally(() => {
        a.inFlight = false
        this.inFlight--
        if (this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w()
        if (this.timer === null || this.inFlight === this.deps.options.maxConcurrency - 1) this.arm()
      })
  }

  // ------------------------------------------------------------------------------------- steps

  private async quote(a: AgentRuntime, gen: number): Promise<void> {
    if (a.policies === null) {
      try {
        a.policies = {
          runtime: await this.deps.policies.runtimeFor(a.imaPolicyId),
          mb: await this.deps.policies.mbFor(a.mbPolicyId),
        }
      } catch (err) {
        this.deps.log.error({ agentId: a.id, err: (err as Error).message }, 'stored policy is unusable')
        if (gen === a.generation) await this.toFailed(a, gen, 'internal')
        return
      }
      if (gen !== a.generation) return
      a.requiredPcrs = requiredPcrs(a.tpmPolicy, {
        runtimePolicy: a.policies.runtime !== null,
        measuredBootPolicy: a.policies.mb !== null,
        bindsPubkey: true,
      })
      a.pcrMask = maskOfPcrs(a.requiredPcrs)
    }
    const nonce = randomNonce()
    const partial = !(a.sendPubkey || a.pubkey === null)
    const client = this.deps.connections.client({
      agentId: a.id,
      ip: a.ip,
      port: a.port,
      apiVersion: a.apiVersion,
      mtlsCert: a.mtlsCert,
    })
    let res: IntegrityQuoteResults
    try {
      res = await client.integrityQuote({
        nonce,
        mask: a.pcrMask,
        partial,
        imaMlEntry: a.imaState?.nextEntry ?? 0,
      })
    } catch (err) {
      if (gen !== a.generation) return
      await this.onRequestError(a, gen, err, AgentState.GET_QUOTE_RETRY)
      return
    }
    if (gen !== a.generation) return
    const now = this.now()
    const receivedPubkey = res.pubkey
    const pubkey = receivedPubkey ?? a.pubkey
    let events: FailureEvent[] | null = null
    let clock: TpmClockInfo | null = null
    let imaState: ImaReplayState | null = a.imaState
    if (pubkey === null) {
      events = [
        failure('qoute_validation.no_pubkey', 'agent did not send its public key and none is cached', false),
      ]
    } else {
      const bootAggregates: { value?: Record<string, string[]> } = {}
      const out = evaluateAttestation({
        akPublic: a.akPublic,
        quote: res.quote,
        nonce,
        hashAlg: res.hash_alg,
        encAlg: res.enc_alg,
        signAlg: res.sign_alg,
        accepted: a.accepted,
        tpmPolicy: a.tpmPolicy,
        boundPubkeyPem: pubkey,
        previousClock: a.clock,
        requiredPcrs: a.requiredPcrs,
        extensions: this.measuredBootExtension(a, res, bootAggregates),
      })
      let verdict = out.verdict
      // IMA runs after the pure pipeline, in slices, so that a long list (a first attestation after a reboot can
      // carry hundreds of thousands of entries) does not stall every other agent. It needs PCR 10 from a quote whose
      // signature, nonce and clock passed: the pipeline returns a clock only then.
      if (out.clock !== null && out.pcrs.has(10)) {
        const ima = await this.verifyIma(a, res, out.pcrs, res.hash_alg as PcrBank, bootAggregates.value)
        if (gen !== a.generation) return
        imaState = ima.state
        if (!ima.verdict.ok)
          verdict = { ok: false, events: [...(verdict.ok ? [] : verdict.events), ...ima.verdict.events] }
      }
      if (verdict.ok) clock = out.clock
      else events = verdict.events
    }
    if (events) {
      // an IMA failure resets its state (next round replays from entry 0); keep that across restarts
      a.imaState = imaState
      await this.onInvalidQuote(a, gen, events, now)
      return
    }
    a.imaState = imaState
    // success
    a.sendPubkey = false
    a.numRetries = 0
    a.attestationCount++
    a.clock = clock
    this.attestations++
    if (receivedPubkey !== undefined && receivedPubkey !== a.pubkey) {
      a.pubkey = receivedPubkey
      a.encryptedV = null
      a.provideV = true
      a.pubkeyChanged = true
    }
    const goProvideV = a.provideV && a.v !== null && a.v !== ''
    a.state = goProvideV ? AgentState.PROVIDE_V : AgentState.GET_QUOTE
    this.pending.set(a.id, {
      agentId: a.id,
      attestationCount: a.attestationCount,
      lastReceivedQuote: Math.floor(now / 1000),
      lastSuccessfulAttestation: Math.floor(now / 1000),
      tpmClockinfo: clock ? JSON.stringify(clock) : null,
      operationalState: a.state,
      publicKey: a.pubkeyChanged ? a.pubkey : null,
      imaState: imaState ? JSON.stringify(imaState) : null,
      nextImaEntry: imaState?.nextEntry ?? 0,
      hashAlg: res.hash_alg,
      encAlg: res.enc_alg,
      signAlg: res.sign_alg,
    })
    a.pubkeyChanged = false
    if (goProvideV) this.schedule(a, now)
    else {
      a.provideV = false
      this.schedule(a, now + this.deps.options.quoteIntervalMs)
    }
  }

  /** The measured-boot check of this response's boot log; its boot aggregates are kept for the IMA check. */
  private measuredBootExtension(
    a: AgentRuntime,
    res: IntegrityQuoteResults,
    aggregates: { value?: Record<string, string[]> },
  ): AttestationExtensions {
    const o = this.deps.options
    const policies = a.policies ?? { runtime: null, mb: null }
    const ext: AttestationExtensions = {}
    if (policies.mb !== null || res.mb_measurement_list !== undefined) {
      const mbPolicy = policies.mb
      ext.measuredBoot = (pcrs, hashAlg) => {
        if (res.mb_measurement_list === undefined) {
          return mbPolicy
            ? {
                ok: false,
                events: [failure('measured_boot.missing_event_log', 'agent sent no boot event log', true)],
              }
            : { ok: true }
        }
        const r = checkMeasuredBoot({
          eventLog: Buffer.from(res.mb_measurement_list, 'base64'),
          quotedPcrs: pcrs,
          hashAlg,
          policy: mbPolicy,
          evaluatePolicy: o.measuredBootEvaluate === 'always' || a.attestationCount === 0,
        })
        if (r.bootAggregates) aggregates.value = r.bootAggregates
        return r.verdict
      }
    }
    return ext
  }

  /**
   * The IMA increment against the quoted PCR 10, `IMA_SLICE_LINES` lines at a time with the event loop free in
   * between. Returns the state to keep (unchanged when the agent sent no list).
   */
  private async verifyIma(
    a: AgentRuntime,
    res: IntegrityQuoteResults,
    pcrs: ReadonlyMap<number, Uint8Array>,
    hashAlg: PcrBank,
    bootAggregates: Record<string, string[]> | undefined,
  ): Promise<{ verdict: Verdict; state: ImaReplayState | null }> {
    if (res.ima_measurement_list === undefined) {
      const event = failure('pcr_validation.unused_pcr_10', 'PCR 10 quoted but no IMA list sent', true)
      return { verdict: { ok: false, events: [event] }, state: a.imaState }
    }
    const verification = new ImaIncrementVerification({
      listText: res.ima_measurement_list,
      firstEntry: res.ima_measurement_list_entry ?? 0,
      state: a.imaState,
      quotedPcr10: { hashAlg, value: pcrs.get(10) ?? null },
      policy: a.policies?.runtime ?? null,
      ignoreTomtouErrors: this.deps.options.ignoreTomtouErrors,
      ...(bootAggregates ? { bootAggregates } : {}),
      ...(a.verificationKeys ? { verificationKeys: a.verificationKeys } : {}),
    })
    while (!verification.step(IMA_SLICE_LINES)) await new Promise<void>((resolve) => setImmediate(resolve))
    const r = verification.finish()
    return { verdict: r.verdict, state: r.state }
  }

  private async provideV(a: AgentRuntime, gen: number): Promise<void> {
    if (a.v === null || a.pubkey === null) {
      a.provideV = false
      a.state = AgentState.GET_QUOTE
      this.schedule(a, this.now() + this.deps.options.quoteIntervalMs)
      return
    }
    if (!a.encryptedV || a.encryptedV.forPubkey !== a.pubkey) {
      const encrypted = publicEncrypt(
        { key: a.pubkey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' },
        Buffer.from(a.v, 'base64'),
      )
      a.encryptedV = { forPubkey: a.pubkey, b64: encrypted.toString('base64') }
    }
    const client = this.deps.connections.client({
      agentId: a.id,
      ip: a.ip,
      port: a.port,
      apiVersion: a.apiVersion,
      mtlsCert: a.mtlsCert,
    })
    try {
      await client.postVkey(a.encryptedV.b64)
    } catch (err) {
      if (gen !== a.generation) return
      await this.onRequestError(a, gen, err, AgentState.PROVIDE_V_RETRY)
      return
    }
    if (gen !== a.generation) return
    a.provideV = false
    a.numRetries = 0
    a.state = AgentState.GET_QUOTE
    if (!(await this.write(a, gen, { operational_state: AgentState.GET_QUOTE }))) return
    this.schedule(a, this.now() + this.deps.options.quoteIntervalMs)
  }

  // ------------------------------------------------------------------------------------- outcomes

  private async onRequestError(
    a: AgentRuntime,
    gen: number,
    err: unknown,
    retryState: number,
  ): Promise<void> {
    const e = err instanceof AgentClientError ? err : null
    if (e?.isTooLarge) {
      // an agent that floods the verifier is failed like any other bad evidence, never retried into memory trouble
      const event = failure('qoute_validation.response_too_large', e.message, true)
      await this.onInvalidQuote(a, gen, [event], this.now())
      return
    }
    if (e?.isVersionNotSupported) {
      if (await this.renegotiate(a, gen)) return
    }
    const status = e?.httpStatus
    const transient = status === undefined || status === 408 || status === 500 || status === 599
    if (!transient) {
      this.deps.log.warn({ agentId: a.id, status }, 'agent answered an unexpected status')
      await this.toFailed(a, gen, 'http')
      return
    }
    if (a.numRetries >= this.deps.options.maxRetries) {
      this.deps.log.warn({ agentId: a.id }, `agent unreachable after ${a.numRetries} retries: FAILED`)
      const notify = retryState !== AgentState.GET_QUOTE_RETRY || a.attestationCount > 0
      await this.toFailed(a, gen, notify ? 'comm_error' : 'silent')
      return
    }
    a.numRetries++
    a.sendPubkey = true
    const { retryInterval, exponentialBackoff } = this.deps.options
    const delayS = exponentialBackoff && retryInterval > 1 ? retryInterval ** a.numRetries : retryInterval
    const fromState = a.state
    a.state = retryState
    if (fromState !== retryState && !(await this.write(a, gen, { operational_state: retryState }))) return
    this.schedule(a, this.now() + delayS * 1000)
  }

  private async renegotiate(a: AgentRuntime, gen: number): Promise<boolean> {
    try {
      const client = this.deps.connections.client({
        agentId: a.id,
        ip: a.ip,
        port: a.port,
        apiVersion: a.apiVersion,
        mtlsCert: a.mtlsCert,
      })
      const v = await client.getVersion()
      const remote =
        v.supported_versions && v.supported_versions.length > 0 ? v.supported_versions : [v.supported_version]
      const chosen = negotiateVersion(remote, AGENT_API_VERSIONS)
      if (gen !== a.generation || chosen === null) return false
      if (a.attestationCount > 0 && compareVersions(chosen, a.apiVersion) < 0) return false
      a.apiVersion = chosen
      if (!(await this.write(a, gen, { supported_version: chosen }))) return true
      this.schedule(a, this.now())
      return true
    } catch {
      return false
    }
  }

  private async onInvalidQuote(
    a: AgentRuntime,
    gen: number,
    events: FailureEvent[],
    now: number,
  ): Promise<void> {
    this.failures++
    const { severityLabels, severityRules } = this.deps.options
    let worst = events[0] as FailureEvent
    let worstLevel = -1
    for (const ev of events) {
      const level = severityOf(ev, severityRules, severityLabels)
      if (level > worstLevel) {
        worstLevel = level
        worst = ev
      }
    }
    const patch: Parameters<VerifierRepository['updateGuarded']>[2] = {
      operational_state: AgentState.INVALID_QUOTE,
      last_received_quote: Math.floor(now / 1000),
      ima_state: a.imaState ? JSON.stringify(a.imaState) : null,
    }
    if (a.severityLevel === null || worstLevel > a.severityLevel) {
      a.severityLevel = worstLevel
      patch.severity_level = worstLevel
      patch.last_event_id = worst.eventId
    }
    a.state = AgentState.INVALID_QUOTE
    this.deps.log.warn(
      { agentId: a.id, events: events.map((e) => e.eventId) },
      'attestation failed: INVALID_QUOTE',
    )
    if (!(await this.write(a, gen, patch))) return
    this.deps.notifier.notify(a.subject, 'revocation', new Date(now), {
      eventId: worst.eventId,
      severityLabel: severityLabels[worstLevel] ?? 'emergency',
      context: worst.context,
    })
    const stop = events.some((e) => !e.recoverable) || worstLevel >= severityLabels.length - 1
    if (stop) {
      this.remove(a.id)
      return
    }
    this.schedule(a, now)
  }

  private async toFailed(
    a: AgentRuntime,
    gen: number,
    why: 'comm_error' | 'silent' | 'http' | 'internal',
  ): Promise<void> {
    a.state = AgentState.FAILED
    if (!(await this.write(a, gen, { operational_state: AgentState.FAILED }))) return
    if (why === 'comm_error') this.deps.notifier.notify(a.subject, 'comm_error', new Date(this.now()))
    this.remove(a.id)
  }

  /**
   * Guarded immediate write; merges a pending batched success first so the batch cannot overwrite it later.
   * On refusal (deleted, stopped, TERMINATED or lease lost) the agent leaves the loop, finishing a pending delete.
   */
  private async write(
    a: AgentRuntime,
    gen: number,
    patch: Parameters<VerifierRepository['updateGuarded']>[2],
  ): Promise<boolean> {
    const p = this.pending.get(a.id)
    const merged = { ...patch }
    if (p) {
      this.pending.delete(a.id)
      Object.assign(merged, {
        attestation_count: p.attestationCount,
        last_successful_attestation: p.lastSuccessfulAttestation,
        tpm_clockinfo: p.tpmClockinfo,
        ...(p.publicKey !== null ? { public_key: p.publicKey } : {}),
        ...patch,
      })
    }
    const ok = await this.deps.repo.updateGuarded(a.id, this.deps.leaseHolder, merged)
    if (!ok) {
      if (gen === a.generation) this.remove(a.id)
      await this.finishRefused(a.id)
      return false
    }
    return gen === a.generation
  }

  private async finishRefused(agentId: string): Promise<void> {
    const row = await this.deps.repo.getAgent(agentId)
    if (row?.operational_state === AgentState.TERMINATED) {
      await this.deps.repo.deleteAgent(agentId)
      this.deps.log.info({ agentId }, 'agent deleted (TERMINATED observed by the loop)')
    }
  }

  /** Writes the batched successful attestations; agents the guard refused leave the loop. */
  async flush(): Promise<void> {
    const run = async () => {
      if (this.pending.size === 0) return
      const batch = [...this.pending.values()]
      this.pending = new Map()
      let refused: string[]
      try {
        refused = await this.deps.repo.recordSuccesses(this.deps.leaseHolder, batch)
      } catch (err) {
        this.deps.log.error({ err: (err as Error).message }, 'writing attestation results failed; will retry')
        for (const s of batch)
          if (!this.pending.has(s.agentId) && this.agents.has(s.agentId)) this.pending.set(s.agentId, s)
        return
      }
      for (const id of refused) {
        this.remove(id)
        await this.finishRefused(id)
      }
    }
    this.flushing = this.flushing.then(run, run)
    return this.flushing
  }
}

/** Stable identity of this verifier process for leases: a restart on the same host and port reclaims at once. */
export function defaultLeaseHolder(verifierId: string, host: string, port: number): string {
  return `${verifierId}@${host}:${port}#${createHash('sha256').update(`${verifierId}|${host}|${port}`).digest('hex').slice(0, 8)}`
}
