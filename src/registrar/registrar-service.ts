/**
 * Registrar logic (keylime-protocols.md §B registrar side, keylime-api.md §2): validates a registration completely
 * before anything is written, binds the AK to the EK with MakeCredential, checks the activation auth_tag, and
 * serialises work per agent so two requests for one agent never interleave.
 */
import type { KeyObject } from 'node:crypto'
import type { AgentResults, RegisterResults } from '../api/registrar/schemas.ts'
import type { Logger } from '../common/log.ts'
import type { CertStore } from '../crypto/ek-trust.ts'
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

export interface RegistrarServiceOptions {
  repo: Pick<RegistrarRepository, 'find' | 'listIds' | 'delete' | 'register' | 'activate'>
  /** `[registrar] tpm_identity` */
  tpmIdentity?: TpmIdentityMode
  /** `[tenant] tpm_cert_store`, for IAK/IDevID certificates (null: IAK/IDevID registrations are refused). */
  certStore?: CertStore | null
  malformedCertAction?: MalformedCertAction
  log?: Logger
  /** Randomness for challenges (tests). */
  random?: (n: number) => Uint8Array
}

function spkiDer(key: KeyObject): Buffer {
  return key.export({ type: 'spki', format: 'der' })
}

export class RegistrarService {
  private readonly locks = new Map<string, Promise<unknown>>()
  private readonly tpmIdentity: TpmIdentityMode
  private readonly malformedCertAction: MalformedCertAction

  constructor(private readonly opts: RegistrarServiceOptions) {
    this.tpmIdentity = opts.tpmIdentity ?? 'default'
    this.malformedCertAction = opts.malformedCertAction ?? 'warn'
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
      await this.opts.repo.register(agentId, write, (existing) => {
        if (!existing) return
        const changed = identityChange(existing, write)
        if (changed) {
          this.opts.log?.warn(
            { agentId, field: changed },
            'refused re-registration with a different TPM identity',
          )
          throw new RegistrarError(403, IDENTITY_CHANGE_FORBIDDEN)
        }
      })
      this.opts.log?.info({ agentId }, 'agent registered; awaiting activation')
      return { blob }
    })
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
    const ekCaChain = ekCaChainOf(body, candidates, ekCert, this.malformedCertAction)
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
        ek_ca_chain: ekCaChain,
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

  /** Checks the auth_tag; a mismatch deletes the agent (it must register again). */
  async activate(agentIdInput: unknown, bodyInput: unknown): Promise<void> {
    const agentId = checkAgentId(agentIdInput)
    const authTag = (bodyInput as Record<string, unknown> | null | undefined)?.auth_tag
    if (typeof authTag !== 'string' || authTag === '') {
      throw new RegistrarError(400, "Missing or invalid parameter 'auth_tag'")
    }
    const outcome = await this.serialised(agentId, () =>
      this.opts.repo.activate(agentId, (key) => authTagMatches(key, agentId, authTag)),
    )
    if (outcome === 'not_found') throw new RegistrarError(404, `Agent with ID '${agentId}' not found`)
    if (outcome === 'mismatch_deleted') {
      this.opts.log?.warn({ agentId }, 'auth_tag mismatch; agent record deleted')
      const shown = authTag.length > 100 ? `${authTag.slice(0, 100)}…` : authTag
      throw new RegistrarError(
        400,
        `Auth tag '${shown}' for agent '${agentId}' does not match expected value. The agent has been deleted from database, and a restart of it will be required`,
      )
    }
    this.opts.log?.info({ agentId }, 'agent activated')
  }

  async list(): Promise<string[]> {
    return this.opts.repo.listIds()
  }

  async show(agentIdInput: unknown): Promise<AgentResults> {
    const agentId = checkAgentId(agentIdInput)
    const rec = await this.opts.repo.find(agentId)
    if (!rec) throw new RegistrarError(404, `Agent with ID '${agentId}' not found`)
    if (!rec.active) throw new RegistrarError(404, `Agent with ID '${agentId}' has not been activated`)
    return toResults(rec)
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
