/**
 * Registrar logic (keylime-protocols.md §B registrar side, keylime-api.md §2): validates a registration completely
 * before anything is written, binds the AK to the EK with MakeCredential, checks the activation auth_tag, and
 * serialises work per agent so two requests for one agent never interleave.
 *
 * Unlike upstream (docs/registrar.md), a registration only waits for its activation: an agent's activated record
 * changes when, and only when, the TPM holding its EK answers the new challenge; a wrong auth_tag changes nothing;
 * registrations never activated expire; public write requests are rate-limited per source; and an option refuses
 * EK certificates that do not chain to `tpm_cert_store`.
 */
import type { KeyObject } from 'node:crypto'
import { type Admission, type RateLimitOptions, SourceRateLimiter } from '../api/rate-limit.ts'
import type { AgentResults, RegisterResults } from '../api/registrar/schemas.ts'
import type { Logger } from '../common/log.ts'
import { type CertStore, verifyEkCertificateWithStore } from '../crypto/ek-trust.ts'
import { encodeKeylimeCredentialBlob, makeCredential } from '../crypto/make-credential.ts'
import {
  assertRestrictedSigningKey,
  objectName,
  publicAreaToKeyObject,
  readTpm2bPublic,
} from '../crypto/tpm-public.ts'
import type { LenientCertificate } from '../crypto/x509-lenient.ts'
import type { RegistrarRecord, RegistrarRepository, RegistrationWrite } from '../db/registrar-repository.ts'
import { ekCaChainOf } from './ek-chain.ts'
import { hasIakIdevid, verifyIakIdevid } from './iak.ts'
import {
  authTagMatches,
  checkAgentId,
  decodeB64Field,
  IDENTITY_CHANGE_FORBIDDEN,
  identityChange,
  invalid,
  type MalformedCertAction,
  optionalString,
  parseCertBundleField,
  parseIp,
  parseMtlsCert,
  parsePort,
  RegistrarError,
  randomChallenge,
} from './registrar-fns.ts'

export type TpmIdentityMode = 'default' | 'ek_cert_or_iak_idevid' | 'ek_cert' | 'iak_idevid'

/** Default `registration_challenge_lifetime`: long enough for a slow TPM, short enough that junk does not pile up. */
export const DEFAULT_CHALLENGE_LIFETIME_MS = 300_000
/** Challenges one agent may have outstanding; a replayed registration adds one instead of replacing the agent's. */
export const MAX_PENDING_PER_AGENT = 8

export interface RegistrarServiceOptions {
  repo: Pick<
    RegistrarRepository,
    'find' | 'findPending' | 'listIds' | 'delete' | 'deleteExpired' | 'register' | 'activate'
  >
  /** `[registrar] tpm_identity` */
  tpmIdentity?: TpmIdentityMode
  /** `[tenant] tpm_cert_store`, for IAK/IDevID certificates (null: IAK/IDevID registrations are refused). */
  certStore?: CertStore | null
  malformedCertAction?: MalformedCertAction
  /** `[registrar] require_trusted_ek_cert`: refuse registrations without an EK certificate chained to `certStore`. */
  requireTrustedEkCert?: boolean
  /** `[registrar] registration_challenge_lifetime` (ms): how long a registration may wait for its activation. */
  challengeLifetimeMs?: number
  /** `[registrar] registration_rate_limit_*`: null or absent admits every request. */
  rateLimit?: RateLimitOptions | null
  log?: Logger
  /** Randomness for challenges (tests). */
  random?: (n: number) => Uint8Array
  /** Clock in ms since epoch (tests). */
  now?: () => number
}

function spkiDer(key: KeyObject): Buffer {
  return key.export({ type: 'spki', format: 'der' })
}

export class RegistrarService {
  private readonly locks = new Map<string, Promise<unknown>>()
  private readonly tpmIdentity: TpmIdentityMode
  private readonly malformedCertAction: MalformedCertAction
  private readonly lifetimeMs: number
  private readonly limiter: SourceRateLimiter | null
  private readonly now: () => number

  constructor(private readonly opts: RegistrarServiceOptions) {
    this.tpmIdentity = opts.tpmIdentity ?? 'default'
    this.malformedCertAction = opts.malformedCertAction ?? 'warn'
    this.lifetimeMs = opts.challengeLifetimeMs ?? DEFAULT_CHALLENGE_LIFETIME_MS
    if (!(this.lifetimeMs > 0)) throw new RangeError('the registration challenge lifetime must be positive')
    if (opts.requireTrustedEkCert && !opts.certStore) {
      throw new TypeError('require_trusted_ek_cert needs a tpm_cert_store to check EK certificates against')
    }
    this.limiter = opts.rateLimit ? new SourceRateLimiter(opts.rateLimit) : null
    this.now = opts.now ?? Date.now
  }

  /**
   * Admission of one public write request (registration or activation) from `address`, decided before its body is
   * read. The first refusal of a source is logged, not every one (a flood must not flood the log).
   */
  admit(address: string): Admission {
    if (this.limiter === null) return { admitted: true }
    const admission = this.limiter.admit(address, this.now())
    if (!admission.admitted && admission.firstRefusal) {
      this.opts.log?.warn(
        { source: address },
        'registration rate limit reached; refusing this source for now',
      )
    }
    return admission
  }

  /** Deletes registrations whose challenge lifetime has passed (reads already ignore them). */
  async sweepExpired(): Promise<number> {
    const n = await this.opts.repo.deleteExpired({ now: this.now(), lifetimeMs: this.lifetimeMs })
    if (n > 0) this.opts.log?.info({ expired: n }, 'deleted registrations never activated')
    return n
  }

  /** Runs `fn` after every earlier call for the same agent has settled. */
  private async serialised<T>(agentId: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(agentId) ?? Promise.resolve()
    const run = previous.then(fn, fn)
    const tail = run.catch(() => {})
    this.locks.set(agentId, tail)
    try {
      return await run
    } finally {
      if (this.locks.get(agentId) === tail) this.locks.delete(agentId)
    }
  }

  /** Validates everything, derives the challenge, then writes in one transaction. */
  async register(agentIdInput: unknown, bodyInput: unknown): Promise<RegisterResults> {
    const agentId = checkAgentId(agentIdInput)
    if (typeof bodyInput !== 'object' || bodyInput === null || Array.isArray(bodyInput)) {
      throw invalid('body must be a JSON object')
    }
    const body = bodyInput as Record<string, unknown>
    const { write, blob } = this.prepare(agentId, body)
    return this.serialised(agentId, async () => {
      let reRegistration = false
      await this.opts.repo.register(
        agentId,
        write,
        (active) => {
          if (!active) return
          reRegistration = true
          this.refuseIdentityChange(agentId, active, write)
        },
        { now: this.now(), lifetimeMs: this.lifetimeMs, maxPendingPerAgent: MAX_PENDING_PER_AGENT },
      )
      this.opts.log?.info(
        { agentId },
        reRegistration
          ? 'agent re-registered; its activated record stays as it is until the new challenge is answered'
          : 'agent registered; awaiting activation',
      )
      return { blob }
    })
  }

  private refuseIdentityChange(
    agentId: string,
    active: RegistrarRecord,
    next: Pick<RegistrarRecord, 'ek_tpm' | 'ekcert'>,
  ): void {
    const changed = identityChange(active, next)
    if (changed) {
      this.opts.log?.warn(
        { agentId, field: changed },
        'refused re-registration with a different TPM identity',
      )
      throw new RegistrarError(403, IDENTITY_CHANGE_FORBIDDEN)
    }
  }

  private prepare(
    agentId: string,
    body: Record<string, unknown>,
  ): { write: RegistrationWrite; blob: string } {
    if (body.aik_tpm === undefined || body.aik_tpm === null) throw invalid('aik_tpm is required')
    const aik = decodeB64Field(body.aik_tpm, 'aik_tpm')
    try {
      assertRestrictedSigningKey(aik)
      publicAreaToKeyObject(aik)
    } catch (err) {
      throw invalid(`aik_tpm: ${(err as Error).message}`, err)
    }
    const ekB64 = optionalString(body, 'ek_tpm')
    if (ekB64 === null) throw invalid('ek_tpm is required to build the activation challenge')
    const ek = decodeB64Field(ekB64, 'ek_tpm')
    let ekKey: ReturnType<typeof publicAreaToKeyObject>
    try {
      readTpm2bPublic(ek)
      ekKey = publicAreaToKeyObject(ek)
    } catch (err) {
      throw invalid(`ek_tpm: ${(err as Error).message}`, err)
    }

    const ekcertInput = optionalString(body, 'ekcert')
    let ekcertB64: string | null = null
    let trustedEkCert = false
    let candidates: LenientCertificate[] = []
    let ekCert: LenientCertificate | null = null
    if (ekcertInput !== null && ekcertInput.trim() !== '') {
      candidates = parseCertBundleField(ekcertInput, 'ekcert', this.malformedCertAction)
      const ekSpki = spkiDer(ekKey)
      const cert = candidates.find((c) => c.publicKey !== null && spkiDer(c.publicKey).equals(ekSpki))
      if (!cert) {
        throw invalid(
          candidates.some((c) => c.publicKey !== null)
            ? 'ekcert public key does not match ek_tpm'
            : 'ekcert public key cannot be read',
        )
      }
      if (cert.irregularities.length > 0 && this.malformedCertAction === 'warn') {
        this.opts.log?.warn(
          { agentId, irregularities: cert.irregularities },
          'EK certificate is not strict DER',
        )
      }
      ekcertB64 = Buffer.from(cert.der).toString('base64')
      ekCert = cert
    }
    const chain = ekCaChainOf(body, candidates, ekCert, this.malformedCertAction)
    if (this.opts.requireTrustedEkCert && ekCert !== null && this.opts.certStore) {
      // the agent's chain (ek_ca_chain, or the rest of an ekcert bundle) may supply intermediates, never anchors
      const trust = verifyEkCertificateWithStore(ekCert, this.opts.certStore, {
        extraCertificates: chain.certificates,
      })
      if (!trust.trusted) throw invalid(`ekcert is not trusted (require_trusted_ek_cert): ${trust.reason}`)
      for (const warning of trust.warnings)
        this.opts.log?.warn({ agentId, warning }, 'EK certificate accepted')
      trustedEkCert = true
    }
    if (this.opts.requireTrustedEkCert && !trustedEkCert) {
      throw invalid('an ekcert chained to tpm_cert_store is required (require_trusted_ek_cert)')
    }
    const iakIdevid = hasIakIdevid(body)
      ? verifyIakIdevid(agentId, body, aik, {
          store: this.opts.certStore ?? null,
          action: this.malformedCertAction,
        })
      : null
    if (this.tpmIdentity === 'ek_cert' && ekcertB64 === null)
      throw invalid('ekcert is required (tpm_identity)')
    if (this.tpmIdentity === 'iak_idevid' && iakIdevid === null) {
      throw invalid('IAK/IDevID identity is required (tpm_identity)')
    }
    if (this.tpmIdentity === 'ek_cert_or_iak_idevid' && ekcertB64 === null && iakIdevid === null) {
      throw invalid('ekcert or IAK/IDevID identity is required (tpm_identity)')
    }
    const mtlsCert = parseMtlsCert(optionalString(body, 'mtls_cert'))
    const ip = parseIp(body.ip)
    const port = parsePort(body.port)

    const challenge = randomChallenge(32, this.opts.random)
    let blob: string
    try {
      const cred = makeCredential({
        ekPublic: ek,
        akName: objectName(aik),
        secret: Buffer.from(challenge, 'ascii'),
      })
      blob = encodeKeylimeCredentialBlob(cred)
    } catch (err) {
      throw invalid(`cannot build the credential challenge for this EK: ${(err as Error).message}`, err)
    }
    return {
      blob,
      write: {
        key: Buffer.from(challenge, 'ascii').toString('base64'),
        aik_tpm: Buffer.from(aik).toString('base64'),
        ek_tpm: Buffer.from(ek).toString('base64'),
        ekcert: ekcertB64,
        ek_ca_chain: chain.pem,
        iak_tpm: iakIdevid?.iak_tpm ?? null,
        idevid_tpm: iakIdevid?.idevid_tpm ?? null,
        iak_cert: iakIdevid?.iak_cert ?? null,
        idevid_cert: iakIdevid?.idevid_cert ?? null,
        mtls_cert: mtlsCert,
        ip,
        port,
      },
    }
  }

  /**
   * Checks the auth_tag against every live challenge of the agent. A match makes that registration the agent's
   * record; a mismatch changes nothing (upstream deletes the record, which let anyone delete any agent).
   */
  async activate(agentIdInput: unknown, bodyInput: unknown): Promise<void> {
    const agentId = checkAgentId(agentIdInput)
    const authTag = (bodyInput as Record<string, unknown> | null | undefined)?.auth_tag
    if (typeof authTag !== 'string' || authTag === '') {
      throw new RegistrarError(400, "Missing or invalid parameter 'auth_tag'")
    }
    let replaced: RegistrarRecord | undefined
    const outcome = await this.serialised(agentId, () =>
      this.opts.repo.activate(agentId, {
        now: this.now(),
        lifetimeMs: this.lifetimeMs,
        matches: (key) => authTagMatches(key, agentId, authTag),
        check: (active, pending) => {
          replaced = active
          if (active) this.refuseIdentityChange(agentId, active, pending)
        },
      }),
    )
    if (outcome === 'not_found') throw new RegistrarError(404, `Agent with ID '${agentId}' not found`)
    if (outcome === 'mismatch') {
      this.opts.log?.warn({ agentId }, 'auth_tag mismatch; nothing changed')
      const shown = authTag.length > 100 ? `${authTag.slice(0, 100)}…` : authTag
      throw new RegistrarError(
        400,
        `Auth tag '${shown}' for agent '${agentId}' does not match expected value. Nothing was changed: register again and answer the new challenge`,
      )
    }
    if (outcome === 'activated') {
      this.opts.log?.info({ agentId, replacedActiveRecord: replaced !== undefined }, 'agent activated')
    }
  }

  async list(): Promise<string[]> {
    return this.opts.repo.listIds()
  }

  async show(agentIdInput: unknown): Promise<AgentResults> {
    const agentId = checkAgentId(agentIdInput)
    const rec = await this.opts.repo.find(agentId)
    if (rec) return toResults(rec)
    const pending = await this.opts.repo.findPending(agentId, {
      now: this.now(),
      lifetimeMs: this.lifetimeMs,
    })
    throw new RegistrarError(
      404,
      pending.length > 0
        ? `Agent with ID '${agentId}' has not been activated`
        : `Agent with ID '${agentId}' not found`,
    )
  }

  async delete(agentIdInput: unknown): Promise<void> {
    const agentId = checkAgentId(agentIdInput)
    const gone = await this.serialised(agentId, () => this.opts.repo.delete(agentId))
    if (!gone) throw new RegistrarError(404, `Agent with ID '${agentId}' not found`)
    this.opts.log?.info({ agentId }, 'agent deleted')
  }
}

function toResults(rec: RegistrarRecord): AgentResults {
  return {
    agent_id: rec.agent_id,
    aik_tpm: rec.aik_tpm ?? '',
    ek_tpm: rec.ek_tpm,
    ekcert: rec.ekcert,
    mtls_cert: rec.mtls_cert,
    ip: rec.ip,
    port: rec.port,
    regcount: rec.regcount,
    ...(rec.ek_ca_chain ? { ek_ca_chain: rec.ek_ca_chain } : {}),
    ...(rec.iak_tpm && rec.idevid_tpm && rec.iak_cert && rec.idevid_cert
      ? {
          iak_tpm: rec.iak_tpm,
          idevid_tpm: rec.idevid_tpm,
          iak_cert: rec.iak_cert,
          idevid_cert: rec.idevid_cert,
        }
      : {}),
  }
}
