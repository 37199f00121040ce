/**
 * The agent's TPM identity, shared by the pull and the push agent (keylime-protocols.md §B steps 1-3, 6-7): the EK
 * (created or persistent), its certificate and CA chain from NV, the UUID, the AK (reused from the agent data file
 * while algorithms and EK match, else created and saved), and registration + activation with the registrar.
 */
import { KeylimeError } from '../common/errors.ts'
import type { Logger } from '../common/log.ts'
import { agentDataMatches, ekDigest, loadAgentData, saveAgentData } from './agent-data.ts'
import { type AgentTpm, type EncAlgName, type HashAlgName, type SignAlgName, TpmLock } from './agent-tpm.ts'
import type { AgentConfig } from './config.ts'
import type { AgentDeviceIdentity } from './device-id.ts'
import {
  activationAuthTag,
  type BackoffPolicy,
  type RegistrarConnection,
  type RegistrationRequest,
  withBackoff,
} from './registration.ts'
import { resolveAgentUuid } from './uuid.ts'

export class TpmIdentityError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_AGENT_START', message, options)
  }
}

export interface TpmIdentityOptions {
  uuid: string
  hashAlg: HashAlgName
  signAlg: SignAlgName
  encAlg: EncAlgName
  /** `ek_handle`: empty or `generate`, else a persistent handle in hex. */
  ekHandle: string
  agentDataPath: string
}

export interface TpmIdentity {
  uuid: string
  ek: { handle: number; publicArea: Uint8Array }
  /** The EK certificate (DER) from NV; null when the TPM holds none. */
  ekCertDer: Uint8Array | null
  ekCaChain: Uint8Array[]
  ak: { handle: number; publicArea: Uint8Array }
  /** True when the AK was loaded from the agent data file rather than created. */
  akReused: boolean
  /** Transient handles to flush at shutdown (the EK unless persistent, the AK). */
  transientHandles: number[]
}

/** The identity options an agent's configuration gives. */
export function tpmIdentityOptionsOf(cfg: AgentConfig): TpmIdentityOptions {
  return {
    uuid: cfg.uuid,
    hashAlg: cfg.tpm_hash_alg as HashAlgName,
    signAlg: cfg.tpm_signing_alg as SignAlgName,
    encAlg: cfg.tpm_encryption_alg as EncAlgName,
    ekHandle: cfg.ek_handle,
    agentDataPath: cfg.agent_data_path,
  }
}

/** What both agents need from the TPM library and the codecs to open the TPM and establish its identity. */
export interface AgentTpmDeps {
  openTpm(transport: string, opts?: { endorsementPassword?: string }): Promise<AgentTpm>
  /** Splits upstream's b64 `0xBADCC0DE` credential blob (protocols §B.6). */
  decodeCredentialBlob(b64: string): { credentialBlob: Uint8Array; encryptedSecret: Uint8Array }
  /** SPKI PEM of a TPM2B_PUBLIC (for `uuid = hash_ek`). */
  publicKeyPem(tpm2bPublic: Uint8Array): string
}

/** An agent's open TPM, the lock that serialises its commands, and the transient handles it must flush. */
export interface AgentTpmSession {
  tpm: AgentTpm
  lock: TpmLock
  /** Handles created so far; `establishTpmIdentity` adds to it. */
  transient: number[]
  /** Flushes the transient handles and closes the TPM, ignoring failures (shutdown goes on). Run it under `lock`. */
  release(): Promise<void>
}

/** Opens the configured TPM (`tpm`, with `tpm_ownerpassword` as the endorsement password when set). */
export async function openAgentTpm(
  cfg: Pick<AgentConfig, 'tpm' | 'tpm_ownerpassword'>,
  openTpm: AgentTpmDeps['openTpm'],
): Promise<AgentTpmSession> {
  const tpm = await openTpm(
    cfg.tpm,
    cfg.tpm_ownerpassword ? { endorsementPassword: cfg.tpm_ownerpassword } : {},
  )
  const transient: number[] = []
  return {
    tpm,
    lock: new TpmLock(),
    transient,
    release: async () => {
      for (const h of transient.splice(0)) await tpm.flush(h).catch(() => undefined)
      await tpm.close().catch(() => undefined)
    },
  }
}

/** The registration's IAK/IDevID part, certifying the identity's AK; nothing without a device identity. */
export function deviceIdentityRequest(
  deviceId: AgentDeviceIdentity | null,
  identity: Pick<TpmIdentity, 'uuid' | 'ak'>,
): Pick<RegistrationRequest, 'deviceIdentity'> {
  if (!deviceId) return {}
  return {
    deviceIdentity: {
      fields: deviceId.fields,
      certify: (version: string) => deviceId.certifyAk(identity.ak.handle, identity.uuid, version),
    },
  }
}

function parseEkHandle(v: string): number | null {
  const s = v.trim()
  if (s === '' || s === 'generate') return null
  const n = Number.parseInt(s.replace(/^0x/i, ''), 16)
  if (!Number.isInteger(n) || n < 0x81000000 || n > 0x81ffffff) {
    throw new TpmIdentityError(`ek_handle '${v}' is not a persistent handle (0x81xxxxxx)`)
  }
  return n
}

export function derToPem(der: Uint8Array): string {
  const b64 = Buffer.from(der).toString('base64')
  return `-----BEGIN CERTIFICATE-----\n${b64.replace(/.{1,64}/g, '$&\n')}-----END CERTIFICATE-----\n`
}

/**
 * Opens the EK and AK. Handles created before a failure are flushed by the caller: they are pushed to
 * `transient` as soon as they exist.
 */
export async function establishTpmIdentity(
  tpm: AgentTpm,
  lock: TpmLock,
  o: TpmIdentityOptions,
  publicKeyPem: (tpm2bPublic: Uint8Array) => string,
  log: Logger,
  transient: number[],
): Promise<TpmIdentity> {
  const ekPersistent = parseEkHandle(o.ekHandle)
  const ek = await lock.run(() => tpm.ek(o.encAlg, ekPersistent))
  if (ekPersistent === null) transient.push(ek.handle)
  const ekCertDer = await lock.run(() => tpm.readEkCertificate(o.encAlg, ek.publicArea))
  if (ekCertDer === null) log.warn('the TPM holds no EK certificate for this EK; registering without one')
  // Optional help for the tenant's path building: an unreadable chain index is reported, not fatal.
  const ekCaChain = await lock
    .run(() => tpm.readEkCaChain())
    .catch((err: unknown) => {
      log.warn(`the EK CA chain in NV cannot be read (${(err as Error).message}); registering without it`)
      return [] as Uint8Array[]
    })
  if (ekCaChain.length > 0) log.info(`read ${ekCaChain.length} EK CA chain certificate(s) from NV`)
  const uuid = resolveAgentUuid(o.uuid, () => publicKeyPem(ek.publicArea))

  const createAndSaveAk = async (): Promise<{ handle: number; publicArea: Uint8Array }> => {
    const created = await lock.run(() => tpm.createAk(ek.handle, { hashAlg: o.hashAlg, signAlg: o.signAlg }))
    transient.push(created.handle)
    saveAgentData(o.agentDataPath, {
      version: 1,
      ak_hash_alg: o.hashAlg,
      ak_sign_alg: o.signAlg,
      ek_encryption_alg: o.encAlg,
      ek_public_sha256: ekDigest(ek.publicArea),
      ak_public: Buffer.from(created.publicArea).toString('base64'),
      ak_private: Buffer.from(created.privateArea).toString('base64'),
    })
    log.info('created a new AK and saved it to the agent data file')
    return { handle: created.handle, publicArea: created.publicArea }
  }

  const stored = loadAgentData(o.agentDataPath)
  const want = { hashAlg: o.hashAlg, signAlg: o.signAlg, encAlg: o.encAlg, ekPublicArea: ek.publicArea }
  let ak: { handle: number; publicArea: Uint8Array }
  let akReused = false
  if (stored && agentDataMatches(stored, want)) {
    const pub = Buffer.from(stored.ak_public, 'base64')
    const priv = Buffer.from(stored.ak_private, 'base64')
    try {
      const loaded = await lock.run(() => tpm.loadAk(ek.handle, pub, priv))
      transient.push(loaded.handle)
      ak = { handle: loaded.handle, publicArea: pub }
      akReused = true
      log.info('reusing the AK from the agent data file')
    } catch (err) {
      log.warn(`stored AK could not be loaded (${(err as Error).message}); creating a new one`)
      ak = await createAndSaveAk()
    }
  } else {
    ak = await createAndSaveAk()
  }
  return { uuid, ek, ekCertDer, ekCaChain, ak, akReused, transientHandles: transient }
}

/**
 * Registers the identity (with backoff on transient failures), solves the registrar's MakeCredential challenge
 * with TPM2_ActivateCredential and activates.
 */
export async function registerTpmIdentity(args: {
  tpm: AgentTpm
  lock: TpmLock
  identity: TpmIdentity
  registrar: RegistrarConnection
  /** Fields beyond the TPM identity: contact address, mTLS certificate, device identity. */
  request: Omit<RegistrationRequest, 'uuid' | 'ekTpm' | 'ekCert' | 'aikTpm' | 'ekCaChain'>
  decodeCredentialBlob(b64: string): { credentialBlob: Uint8Array; encryptedSecret: Uint8Array }
  policy: BackoffPolicy
  log: Logger
  sleep?: (ms: number) => Promise<void>
}): Promise<void> {
  const { identity: id, tpm, lock, log } = args
  const blob = await withBackoff(
    'registration',
    args.policy,
    log,
    () =>
      args.registrar.register({
        ...args.request,
        uuid: id.uuid,
        ekTpm: Buffer.from(id.ek.publicArea).toString('base64'),
        ekCert: id.ekCertDer ? derToPem(id.ekCertDer) : null,
        aikTpm: Buffer.from(id.ak.publicArea).toString('base64'),
        ekCaChain: id.ekCaChain.length > 0 ? id.ekCaChain.map(derToPem).join('') : null,
      }),
    args.sleep,
  )
  let parts: { credentialBlob: Uint8Array; encryptedSecret: Uint8Array }
  try {
    parts = args.decodeCredentialBlob(blob)
  } catch (err) {
    throw new TpmIdentityError('registrar sent a malformed credential blob', { cause: err })
  }
  const challenge = await lock.run(() =>
    tpm.activateCredential({ akHandle: id.ak.handle, ekHandle: id.ek.handle, ...parts }),
  )
  const authTag = activationAuthTag(challenge, id.uuid)
  await withBackoff(
    'activation',
    args.policy,
    log,
    () => args.registrar.activate(id.uuid, authTag),
    args.sleep,
  )
}
