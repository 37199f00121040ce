/**
 * The tenant's operations (keylime-protocols.md §C, keylime-config-and-cli.md §4), over narrow ports so that the
 * same logic drives our servers and upstream's. Progress goes to `progress`, results are returned as data: the CLI
 * decides how to print them.
 */
import { randomInt } from 'node:crypto'
import { OPERATIONAL_STATE_NAMES } from '../api/verifier/states.ts'
import { negotiateVersion } from '../api/versions.ts'
import { EXIT_FAILED, EXIT_PEER, EXIT_UNTRUSTED, EXIT_USAGE, TenantError } from './errors.ts'
import type {
  AgentPortFactory,
  RegistrarAgentRecord,
  RegistrarPort,
  VerifierAgentStatus,
  VerifierEnrollBody,
  VerifierPort,
} from './ports.ts'

export const TENANT_API_VERSIONS = ['2.0', '2.1', '2.2', '2.3', '2.4', '2.5', '2.6'] as const

export interface RetryPolicy {
  maxRetries: number
  retryInterval: number
  exponentialBackoff: boolean
}

/** Upstream's delay formula: `retry_interval ** n` when exponential and base > 1, else constant (seconds). */
export function retryDelaySeconds(policy: RetryPolicy, attempt: number): number {
  return policy.exponentialBackoff && policy.retryInterval > 1
    ? policy.retryInterval ** attempt
    : policy.retryInterval
}

/** Verifier states after which no V is delivered: Failed, Invalid Quote, Tenant Quote Failed. */
const FAILED_STATES: ReadonlySet<number> = new Set([7, 9, 10])

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'
export function randomAlnum(length: number): string {
  let s = ''
  for (let i = 0; i < length; i++) s += ALNUM[randomInt(ALNUM.length)]
  return s
}

/** Verifier-side spelling of encryption algorithms: `rsa` means RSA-2048 and `ecc` P-256 (keylime-api.md §1). */
export function normalizeEncAlg(alg: string): string {
  if (alg === 'rsa') return 'rsa2048'
  if (alg === 'ecc') return 'ecc256'
  return alg
}

function encAlgAccepted(alg: string, accepted: readonly string[]): boolean {
  const normalized = normalizeEncAlg(alg)
  return accepted.some(
    (a) => normalizeEncAlg(a) === normalized || (a === normalized.slice(0, 3) && a.length === 3),
  )
}

export interface TenantSettings {
  verifierIp: string
  verifierPort: number
  verifierId?: string
  enableAgentMtls: boolean
  acceptTpmHashAlgs: string[]
  acceptTpmEncryptionAlgs: string[]
  acceptTpmSigningAlgs: string[]
  retry: RetryPolicy
  maxPayloadSize: number
}

/** Checks the identity quote and the EK certificate; injected so the trust rules stay in `identity.ts`. */
export interface IdentityChecker {
  /** Returns failure reasons; empty when the quote verifies with the AK, the nonce and PCR 16 bound to `pubkey`. */
  checkIdentityQuote(args: {
    akTpm: string
    quote: string
    nonce: string
    hashAlg: string
    pubkey: string
  }): string[]
  /** Returns null when the EK is trusted, else why not. */
  checkEk(args: { uuid: string; record: RegistrarAgentRecord }): Promise<string | null>
}

/** What the tenant sends to the agent and the verifier for a payload (keylime-protocols.md §E). */
export interface PreparedPayload {
  /** `encrypted_key` is computed per agent from `u`; `payload` is the b64 AES-GCM blob (absent for key-only). */
  u: Buffer
  v: Buffer
  k: Buffer
  payload?: string
  revocationKey?: string
  metadata?: Record<string, unknown>
}

export interface PayloadCrypto {
  authTag(k: Buffer, uuid: string): string
  encryptToAgent(agentPubkeyPem: string, data: Buffer): string
  hmacChallenge(k: Buffer, challenge: string): string
}

export interface AddRequest {
  uuid: string
  targetHost?: string
  targetPort?: number
  cvTargetHost?: string
  agentApiVersion?: string
  /** tpm_policy as the verifier stores it: JSON text with `mask`. */
  tpmPolicy: string
  runtimePolicy?: string
  runtimePolicyName?: string
  runtimePolicyKey?: string
  mbPolicy?: string
  mbPolicyName?: string
  /** Deprecated per-agent IMA keyring JSON (`ima_sign_verification_keys`). */
  imaSignVerificationKeys?: string
  payload?: PreparedPayload
  verify: boolean
  pushModel: boolean
}

export interface TenantDeps {
  registrar: RegistrarPort
  verifier: VerifierPort
  agent: AgentPortFactory
  identity: IdentityChecker
  payloadCrypto: PayloadCrypto
  settings: TenantSettings
  progress: (line: string) => void
  sleep?: (ms: number) => Promise<void>
  /** A client of another verifier of the deployment (same TLS), where an agent's record says it is attested. */
  verifierAt?: (ip: string, port: number) => VerifierPort & { close(): Promise<void> }
}

/** A verifier the tenant talks to for one agent, and the address an enrolment there names it by. */
interface LocatedVerifier {
  verifier: VerifierPort
  close: () => Promise<void>
  /** Its name in progress messages. */
  where: string
  ip: string
  port: number
}

/** What `delete` did: deleted now, deleted after the verifier finished it, or nothing to delete. */
export type DeleteResult = 'deleted' | 'terminating' | 'absent'

const defaultSleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

export class TenantService {
  private readonly sleep: (ms: number) => Promise<void>

  constructor(private readonly deps: TenantDeps) {
    this.sleep = deps.sleep ?? defaultSleep
  }

  private async registrarRecord(uuid: string): Promise<RegistrarAgentRecord> {
    const record = await this.deps.registrar.getAgent(uuid)
    if (!record)
      throw new TenantError(
        `agent ${uuid} is not registered (or not activated) at the registrar`,
        EXIT_FAILED,
      )
    return record
  }

  /** `add` in pull or push mode, in upstream's order (keylime-protocols.md §C). */
  async add(req: AddRequest): Promise<{ agentVersion: string | null; verified: boolean }> {
    return this.addAt(req, this.configured())
  }

  /** `add` at the given verifier: enrolled there, and its `verifier_ip`/`verifier_port` name it. */
  private async addAt(
    req: AddRequest,
    at: LocatedVerifier,
  ): Promise<{ agentVersion: string | null; verified: boolean }> {
    const { settings, progress } = this.deps
    if (req.verify && (!req.payload || req.pushModel))
      throw new TenantError('--verify needs a payload (-f, -k/-p or --cert)', EXIT_USAGE)
    const record = await this.registrarRecord(req.uuid)
    progress(`registrar: agent ${req.uuid} registered (regcount ${record.regcount})`)

    const ip = req.targetHost ?? (record.ip === null ? undefined : String(record.ip))
    const portRaw = req.targetPort ?? (record.port === null ? undefined : Number(record.port))
    if (!req.pushModel && (ip === undefined || portRaw === undefined || Number.isNaN(portRaw))) {
      throw new TenantError(
        `no contact address for agent ${req.uuid}: pass --targethost/--targetport`,
        EXIT_USAGE,
      )
    }

    let agentVersion: string | null = null
    if (req.pushModel) {
      // Upstream enrolls a push agent without looking at its EK; the registrar only proved the AK lives in the TPM
      // holding that EK, so the EK is still checked against tpm_cert_store here.
      const ekProblem = await this.deps.identity.checkEk({ uuid: req.uuid, record })
      if (ekProblem)
        throw new TenantError(`EK of agent ${req.uuid} is not trusted: ${ekProblem}`, EXIT_UNTRUSTED)
      progress('registrar: EK certificate trusted (push model: the agent is not contacted)')
    } else {
      const contact = {
        ip: ip as string,
        port: portRaw as number,
        mtlsCert: record.mtls_cert,
        apiVersion: req.agentApiVersion ?? '2.6',
      }
      if (settings.enableAgentMtls && record.mtls_cert === null && !req.agentApiVersion) {
        throw new TenantError(
          `agent ${req.uuid} registered without an mTLS certificate (API 1.0 agent): not supported`,
          EXIT_FAILED,
        )
      }
      const agent = this.deps.agent(contact)
      try {
        if (!req.agentApiVersion) {
          const versions = await this.withRetries('agent /version', () => agent.supportedVersions())
          agentVersion = negotiateVersion(versions, TENANT_API_VERSIONS)
          if (!agentVersion)
            throw new TenantError(`agent supports none of our API versions (${versions})`, EXIT_PEER)
        } else {
          agentVersion = req.agentApiVersion
        }
        const versioned = this.deps.agent({ ...contact, apiVersion: agentVersion })
        try {
          const pubkey = await this.checkAgentIdentity(req, record, versioned)
          if (req.payload) {
            await versioned.postUkey({
              encrypted_key: this.deps.payloadCrypto.encryptToAgent(pubkey, req.payload.u),
              auth_tag: this.deps.payloadCrypto.authTag(req.payload.k, req.uuid),
              ...(req.payload.payload === undefined ? {} : { payload: req.payload.payload }),
            })
            progress('agent: U key share delivered')
          }
        } finally {
          await versioned.close()
        }
      } finally {
        await agent.close()
      }
    }

    const body: VerifierEnrollBody = {
      v: req.payload && !req.pushModel ? req.payload.v.toString('base64') : null,
      cloudagent_ip: req.cvTargetHost ?? ip ?? '',
      cloudagent_port: portRaw ?? 0,
      verifier_ip: at.ip,
      verifier_port: at.port,
      tpm_policy: req.tpmPolicy,
      runtime_policy: req.runtimePolicy ?? '',
      runtime_policy_name: req.runtimePolicyName ?? null,
      runtime_policy_key: req.runtimePolicyKey ?? '',
      mb_policy: req.mbPolicy ?? null,
      mb_policy_name: req.mbPolicyName ?? null,
      ima_sign_verification_keys: req.imaSignVerificationKeys ?? '',
      metadata: JSON.stringify(req.payload?.metadata ?? {}),
      revocation_key: req.payload?.revocationKey ?? '',
      accept_tpm_hash_algs: settings.acceptTpmHashAlgs,
      accept_tpm_encryption_algs: settings.acceptTpmEncryptionAlgs,
      accept_tpm_signing_algs: settings.acceptTpmSigningAlgs,
      ak_tpm: record.aik_tpm,
      mtls_cert: record.mtls_cert,
      supported_version: agentVersion ?? '2.6',
    }
    await at.verifier.addAgent(req.uuid, body)
    progress(`verifier: agent ${req.uuid} enrolled`)
    await this.waitFor('verifier status', async () => (await at.verifier.getAgent(req.uuid)) !== null)

    let verified = false
    if (req.payload && !req.pushModel) {
      // Upstream waits only with --verify; without it an operator would be told "added" for a payload the agent
      // later refuses, so we always wait for the agent's answer (and stop attestation on failure only with --verify).
      verified = await this.confirmPayload(req, at.verifier, {
        ip: ip as string,
        port: portRaw as number,
        record,
        agentVersion,
      })
    }
    return { agentVersion, verified }
  }

  private async checkAgentIdentity(
    req: AddRequest,
    record: RegistrarAgentRecord,
    agent: ReturnType<AgentPortFactory>,
  ): Promise<string> {
    const { settings, identity, progress } = this.deps
    const nonce = randomAlnum(20)
    const reply = await this.withRetries('agent identity quote', () => agent.identityQuote(nonce))
    if (!settings.acceptTpmHashAlgs.includes(reply.hash_alg)) {
      throw new TenantError(`agent hash algorithm ${reply.hash_alg} is not accepted`, EXIT_UNTRUSTED)
    }
    if (!encAlgAccepted(reply.enc_alg, settings.acceptTpmEncryptionAlgs)) {
      throw new TenantError(`agent encryption algorithm ${reply.enc_alg} is not accepted`, EXIT_UNTRUSTED)
    }
    if (!settings.acceptTpmSigningAlgs.includes(reply.sign_alg)) {
      throw new TenantError(`agent signing algorithm ${reply.sign_alg} is not accepted`, EXIT_UNTRUSTED)
    }
    const reasons = identity.checkIdentityQuote({
      akTpm: record.aik_tpm,
      quote: reply.quote,
      nonce,
      hashAlg: reply.hash_alg,
      pubkey: reply.pubkey,
    })
    if (reasons.length > 0) {
      const warning =
        record.regcount > 1 ? ' (the agent registered more than once: its TPM may have changed)' : ''
      throw new TenantError(
        `identity quote of agent ${req.uuid} failed: ${reasons.join('; ')}${warning}`,
        EXIT_UNTRUSTED,
      )
    }
    progress('agent: identity quote verified (AK signature, nonce, PCR 16 bound to the payload key)')
    const ekProblem = await identity.checkEk({ uuid: req.uuid, record })
    if (ekProblem)
      throw new TenantError(`EK of agent ${req.uuid} is not trusted: ${ekProblem}`, EXIT_UNTRUSTED)
    progress('registrar: EK certificate trusted')
    return reply.pubkey
  }

  /**
   * Polls `/keys/verify` until the agent proves it derived K and installed the payload. Fails at once when the agent
   * refused the payload or the verifier failed the agent (V is then never delivered), else after the retries.
   */
  private async confirmPayload(
    req: AddRequest,
    verifier: VerifierPort,
    where: { ip: string; port: number; record: RegistrarAgentRecord; agentVersion: string | null },
  ): Promise<boolean> {
    const payload = req.payload as PreparedPayload
    const agent = this.deps.agent({
      ip: where.ip,
      port: where.port,
      mtlsCert: where.record.mtls_cert,
      apiVersion: where.agentVersion ?? '2.6',
    })
    const fail = async (problem: string): Promise<never> => {
      if (req.verify) await verifier.stopAgent(req.uuid)
      throw new TenantError(
        `agent ${req.uuid} ${problem}${req.verify ? '; attestation stopped' : ' (it stays enrolled)'}`,
        EXIT_FAILED,
      )
    }
    try {
      const challenge = randomAlnum(20)
      const expected = this.deps.payloadCrypto.hmacChallenge(payload.k, challenge)
      let last = ''
      for (let attempt = 0; attempt <= this.deps.settings.retry.maxRetries; attempt++) {
        const answer = await agent.verify(challenge)
        if (answer.state === 'derived' && answer.hmac === expected) {
          this.deps.progress('agent: derived the bootstrap key K and installed the payload')
          return true
        }
        if (answer.state === 'refused') return await fail(`refused the payload: ${answer.reason}`)
        // A wrong HMAC: the agent still holds an earlier K (its V for this enrolment has not arrived yet).
        last = answer.state === 'pending' ? answer.detail : 'an HMAC from another bootstrap key'
        const status = await verifier.getAgent(req.uuid)
        const code = status?.operational_state ?? null
        if (code !== null && FAILED_STATES.has(code)) {
          const state = OPERATIONAL_STATE_NAMES[code] ?? String(code)
          return await fail(
            `failed attestation (${state}${status?.last_event_id ? `, ${status.last_event_id}` : ''}) before it received V: the payload was not delivered`,
          )
        }
        await this.sleep(retryDelaySeconds(this.deps.settings.retry, attempt + 1) * 1000)
      }
      return await fail(`did not confirm the payload (last answer: ${last})`)
    } finally {
      await agent.close()
    }
  }

  /** The configured verifier, as `locate` returns a verifier. */
  private configured(): LocatedVerifier {
    const { verifierIp: ip, verifierPort: port } = this.deps.settings
    return { verifier: this.deps.verifier, close: async () => {}, where: 'the verifier', ip, port }
  }

  /**
   * The verifier that attests the agent, as upstream's tenant finds it: the configured verifier's record of the
   * agent names the verifier (`verifier_ip`, `verifier_port`) it is enrolled at; another verifier of the group is
   * then called directly. null when the configured verifier does not know the agent.
   */
  private async locate(uuid: string): Promise<LocatedVerifier | null> {
    const { settings, verifierAt } = this.deps
    const status = await this.deps.verifier.getAgent(uuid)
    if (!status) return null
    const here = this.configured()
    const ip = typeof status.verifier_ip === 'string' ? status.verifier_ip : null
    const port =
      status.verifier_port === undefined || status.verifier_port === null
        ? null
        : Number(status.verifier_port)
    if (ip === null || port === null || !verifierAt) return here
    if (ip === settings.verifierIp && port === settings.verifierPort) return here
    const other = verifierAt(ip, port)
    const where = `verifier ${status.verifier_id ? `${status.verifier_id} ` : ''}(${ip}:${port})`
    this.deps.progress(`verifier: agent ${uuid} is enrolled at ${where}`)
    return { verifier: other, close: () => other.close(), where, ip, port }
  }

  /**
   * `delete` (keylime-config-and-cli.md §4): unless `verifierCheck` is off, the agent is looked up first and deleted
   * at the verifier its record names; a 202 is followed until the record is gone. An agent already absent is not an
   * error (upstream's tenant reports it and succeeds); one enrolled at another verifier than the one asked is.
   */
  async delete(uuid: string, verifierCheck = true): Promise<DeleteResult> {
    const located = verifierCheck ? await this.locate(uuid) : this.configured()
    try {
      return await this.deleteAt(uuid, located)
    } finally {
      await located?.close()
    }
  }

  /** `delete` at the verifier found (null: the agent is not enrolled); the caller closes it. */
  private async deleteAt(uuid: string, located: LocatedVerifier | null): Promise<DeleteResult> {
    if (!located) {
      this.deps.progress(`verifier: agent ${uuid} is already absent`)
      return 'absent'
    }
    const { verifier, where } = located
    const outcome = await verifier.deleteAgent(uuid)
    if (outcome === 'not-found') {
      const still = await verifier.getAgent(uuid)
      if (still)
        throw new TenantError(
          `agent ${uuid} is enrolled at verifier ${String(still.verifier_id)} (${String(still.verifier_ip)}:${String(still.verifier_port)}), which alone may delete it: ask it, or leave out --no-verifier-check`,
          EXIT_FAILED,
        )
      this.deps.progress(`verifier: agent ${uuid} is already absent`)
      return 'absent'
    }
    if (outcome === 'terminating')
      await this.waitFor('deletion', async () => (await verifier.getAgent(uuid)) === null)
    this.deps.progress(`verifier: agent ${uuid} deleted from ${where}`)
    return outcome
  }

  /**
   * `update`: `delete`, then `add` at the verifier the agent was found at (as upstream's tenant, whose delete points
   * it at the verifier the record names); an agent not enrolled anywhere is added at the configured verifier.
   */
  async update(
    req: AddRequest,
    verifierCheck = true,
  ): Promise<{ agentVersion: string | null; verified: boolean }> {
    const located = verifierCheck ? await this.locate(req.uuid) : this.configured()
    try {
      await this.deleteAt(req.uuid, located)
      return await this.addAt(req, located ?? this.configured())
    } finally {
      await located?.close()
    }
  }

  async cvstatus(uuid: string): Promise<VerifierAgentStatus & { operational_state_name: string | null }> {
    const status = await this.deps.verifier.getAgent(uuid)
    if (!status) throw new TenantError(`agent ${uuid} is not enrolled at the verifier`, EXIT_FAILED)
    const state = status.operational_state
    return {
      ...status,
      operational_state_name: state === null ? null : (OPERATIONAL_STATE_NAMES[state] ?? null),
    }
  }

  async regstatus(uuid: string): Promise<RegistrarAgentRecord> {
    return this.registrarRecord(uuid)
  }

  async status(
    uuid: string,
  ): Promise<{ registrar: RegistrarAgentRecord | null; verifier: VerifierAgentStatus | null }> {
    const [registrar, verifier] = await Promise.all([
      this.deps.registrar.getAgent(uuid),
      this.deps.verifier.getAgent(uuid),
    ])
    if (!registrar && !verifier)
      throw new TenantError(`agent ${uuid} is known to neither registrar nor verifier`)
    return { registrar, verifier }
  }

  /** `reactivate`, at the verifier the agent's record names unless `checkVerifier` is off (as `delete`). */
  async reactivate(uuid: string, checkVerifier: boolean): Promise<void> {
    const located = checkVerifier ? await this.locate(uuid) : this.configured()
    if (!located) throw new TenantError(`agent ${uuid} is not enrolled at the verifier`, EXIT_FAILED)
    try {
      await located.verifier.reactivateAgent(uuid)
    } finally {
      await located.close()
    }
    this.deps.progress(`verifier: agent ${uuid} reactivated`)
  }

  async regdelete(uuid: string): Promise<void> {
    if (!(await this.deps.registrar.deleteAgent(uuid))) {
      throw new TenantError(`agent ${uuid} is not registered`, EXIT_FAILED)
    }
  }

  /** Retries a peer call on connection errors and 503/504 with the configured backoff. */
  private async withRetries<T>(what: string, call: () => Promise<T>): Promise<T> {
    const { retry } = this.deps.settings
    for (let attempt = 0; ; attempt++) {
      try {
        return await call()
      } catch (err) {
        const status = (err as { httpStatus?: number }).httpStatus
        const transient = status === undefined || status === 503 || status === 504
        if (!transient || attempt >= retry.maxRetries) {
          throw new TenantError(`${what} failed: ${(err as Error).message}`, EXIT_PEER, { cause: err })
        }
        this.deps.progress(`${what} failed (${(err as Error).message}); retrying`)
        await this.sleep(retryDelaySeconds(retry, attempt + 1) * 1000)
      }
    }
  }

  private async waitFor(what: string, done: () => Promise<boolean>): Promise<void> {
    const { retry } = this.deps.settings
    for (let attempt = 0; attempt <= retry.maxRetries + 5; attempt++) {
      if (await done()) return
      await this.sleep(Math.min(retryDelaySeconds(retry, 1), 2) * 250)
    }
    throw new TenantError(`timed out waiting for ${what}`, EXIT_PEER)
  }
}
