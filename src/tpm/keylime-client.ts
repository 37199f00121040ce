/**
 * The TPM operations a Keylime agent performs, as plain functions over an open `Tpm`: EK creation and
 * certificate, AK creation/loading under the EK, credential activation, quotes with matching PCR values,
 * PCR read/extend/reset and TPM information. Every use of the EK goes through a fresh
 * PolicySecret(TPM_RH_ENDORSEMENT) policy session, as the TCG EK policy requires.
 */

import { createHash, type JsonWebKey, X509Certificate } from 'node:crypto'
import { Certify, Quote } from './commands/attestation.ts'
import { GetCapability, type TpmsCapabilityData } from './commands/capability.ts'
import { FlushContext } from './commands/context.ts'
import { ActivateCredential } from './commands/credential.ts'
import { NvDefineSpace, NvRead, NvReadPublic, NvUndefineSpace, NvWrite } from './commands/nv.ts'
import { Create, CreatePrimary, Load, ReadPublic } from './commands/object.ts'
import { PcrExtend, PcrRead, PcrReset } from './commands/pcr.ts'
import {
  EkCaChainNvRange,
  EkCertNvIndex,
  EkCertNvIndices,
  HashAlgs,
  nodeHashName,
  TpmAlg,
  TpmaNv,
  TpmCap,
  TpmHt,
  TpmPt,
  TpmRh,
  tpmAlgName,
} from './constants.ts'
import { TpmUsageError } from './errors.ts'
import { derSequenceLength } from './marshal/der.ts'
import { TpmRc, TpmResponseError } from './rc.ts'
import { PasswordSession } from './session.ts'
import { ekPolicySession } from './sessions.ts'
import {
  akTemplate,
  DEVICE_ID_TEMPLATES,
  type DeviceIdTemplateName,
  deviceIdTemplate,
  EK_TEMPLATE_ECC_P256,
  EK_TEMPLATE_RSA2048,
} from './templates.ts'
import type { Tpm } from './tpm.ts'
import { pcrSelection } from './types/pcr.ts'
import { decodeTpm2bPublic, type TpmtPublic } from './types/public.ts'

export type HashAlgName = 'sha1' | 'sha256' | 'sha384' | 'sha512'
export type SignAlgName = 'rsassa' | 'ecdsa'
export type EncAlgName = 'rsa' | 'ecc'

/** Owner/endorsement passwords (`hex:` prefix allowed), as Keylime's `tpm_ownerpassword`. */
export interface HierarchyAuth {
  endorsementPassword?: string
}

function hashAlgId(name: HashAlgName): number {
  const entry = HashAlgs[name]
  if (!entry) throw new TpmUsageError(`unsupported hash algorithm "${name}"`)
  return entry.alg
}

function signSchemeId(name: SignAlgName): number {
  if (name === 'rsassa') return TpmAlg.RsaSsa
  if (name === 'ecdsa') return TpmAlg.Ecdsa
  throw new TpmUsageError(`unsupported signing algorithm "${name}"`)
}

export interface CreatedEk {
  handle: number
  /** TPM2B_PUBLIC (with size prefix), as the registrar's `ek_tpm`. */
  publicArea: Uint8Array
  name: Uint8Array
}

/** Creates the TCG default EK (template L-1 RSA-2048 or L-2 ECC P-256) in the endorsement hierarchy. */
export async function createEk(tpm: Tpm, alg: EncAlgName, auth: HierarchyAuth = {}): Promise<CreatedEk> {
  const template = alg === 'rsa' ? EK_TEMPLATE_RSA2048 : alg === 'ecc' ? EK_TEMPLATE_ECC_P256 : undefined
  if (!template) throw new TpmUsageError(`unsupported EK algorithm "${alg}"`)
  const r = await tpm.run(
    CreatePrimary,
    {
      primaryHandle: TpmRh.Endorsement,
      inSensitive: { userAuth: new Uint8Array(0), data: new Uint8Array(0) },
      inPublic: template,
      outsideInfo: new Uint8Array(0),
      creationPcr: [],
    },
    [new PasswordSession(auth.endorsementPassword)],
  )
  return { handle: r.objectHandle, publicArea: r.outPublicBytes, name: r.name }
}

/** Public area (TPM2B_PUBLIC) and Name of a loaded or persistent object, e.g. a persistent EK. */
export async function readPublic(
  tpm: Tpm,
  handle: number,
): Promise<{ publicArea: Uint8Array; name: Uint8Array }> {
  const r = await tpm.run(ReadPublic, { objectHandle: handle })
  return { publicArea: r.outPublicBytes, name: r.name }
}

async function capability(
  tpm: Tpm,
  cap: number,
  property: number,
  count: number,
): Promise<TpmsCapabilityData> {
  return (await tpm.run(GetCapability, { capability: cap, property, propertyCount: count })).capabilityData
}

/** TPM properties from `first` on (fixed or variable), following `moreData`. */
export async function getTpmProperties(tpm: Tpm, first: number, count = 64): Promise<Map<number, number>> {
  const out = new Map<number, number>()
  let property = first
  for (let round = 0; round < 16; round++) {
    const r = await tpm.run(GetCapability, {
      capability: TpmCap.TpmProperties,
      property,
      propertyCount: count,
    })
    const data = r.capabilityData
    if (data.capability !== TpmCap.TpmProperties || data.properties.length === 0) break
    for (const p of data.properties) out.set(p.property, p.value)
    const last = data.properties.at(-1)?.property ?? property
    if (!r.moreData || out.size >= count) break
    property = last + 1
  }
  return out
}

/**
 * Every handle GetCapability(TPM_CAP_HANDLES) lists from `handleType` (`TpmHt.*`), following `moreData`.
 * Session queries (0x02 loaded, 0x03 saved) return HMAC (0x02..) and policy (0x03..) handles alike.
 */
export async function listHandles(tpm: Tpm, handleType: number): Promise<number[]> {
  const isSession = handleType === TpmHt.HmacSession || handleType === TpmHt.PolicySession
  const accepts = (h: number) =>
    isSession ? h >>> 24 === TpmHt.HmacSession || h >>> 24 === TpmHt.PolicySession : h >>> 24 === handleType
  const out: number[] = []
  let property = (handleType << 24) >>> 0
  for (let round = 0; round < 64; round++) {
    const r = await tpm.run(GetCapability, { capability: TpmCap.Handles, property, propertyCount: 256 })
    if (r.capabilityData.capability !== TpmCap.Handles) break
    const handles = r.capabilityData.handles.filter(accepts)
    out.push(...handles)
    const last = r.capabilityData.handles.at(-1)
    if (!r.moreData || last === undefined) break
    property = last + 1
  }
  return out
}

/** Loaded transient objects, and sessions loaded or context-saved (both use session slots), for leak checks. */
export async function getHandleCounts(tpm: Tpm): Promise<{ transient: number; sessions: number }> {
  const transient = (await listHandles(tpm, TpmHt.Transient)).length
  const loaded = await listHandles(tpm, TpmHt.HmacSession)
  const saved = await listHandles(tpm, TpmHt.PolicySession)
  return { transient, sessions: new Set([...loaded, ...saved]).size }
}

/** Reads a whole NV index in chunks of TPM_PT_NV_BUFFER_MAX, authorising with the index itself. */
export async function nvReadAll(tpm: Tpm, nvIndex: number, password?: string): Promise<Uint8Array> {
  const { nvPublic } = await tpm.run(NvReadPublic, { nvIndex })
  const props = await getTpmProperties(tpm, TpmPt.NvBufferMax, 1)
  const chunk = Math.max(1, Math.min(props.get(TpmPt.NvBufferMax) ?? 512, 1024))
  const out = new Uint8Array(nvPublic.dataSize)
  for (let offset = 0; offset < nvPublic.dataSize; offset += chunk) {
    const size = Math.min(chunk, nvPublic.dataSize - offset)
    const { data } = await tpm.run(NvRead, { authHandle: nvIndex, nvIndex, size, offset }, [
      new PasswordSession(password),
    ])
    if (data.length !== size) throw new TpmUsageError(`NV_Read returned ${data.length} bytes, asked ${size}`)
    out.set(data, offset)
  }
  return out
}

/** Every EK certificate stored at a TCG EK-credential NV index of the family (low and high ranges), in index order. */
export async function listEkCertificates(
  tpm: Tpm,
  alg: EncAlgName,
): Promise<{ index: number; template: string; der: Uint8Array }[]> {
  const candidates = EkCertNvIndices[alg]
  if (candidates === undefined) throw new TpmUsageError(`unsupported EK algorithm "${alg}"`)
  const defined = new Set(await listHandles(tpm, TpmHt.NvIndex))
  const out: { index: number; template: string; der: Uint8Array }[] = []
  for (const { index, template } of candidates) {
    if (!defined.has(index)) continue
    const der = await readCertificateAt(tpm, index)
    if (der !== null) out.push({ index, template, der })
  }
  return out
}

/** The NV index's contents up to the end of the DER certificate it starts with (NV areas are often padded). */
async function readCertificateAt(tpm: Tpm, index: number): Promise<Uint8Array | null> {
  let data: Uint8Array
  try {
    data = await nvReadAll(tpm, index)
  } catch (err) {
    if (err instanceof TpmResponseError && err.baseRc === TpmRc.Handle) return null
    throw err
  }
  const len = derSequenceLength(data)
  return len !== undefined && len <= data.length ? data.slice(0, len) : data
}

/** Unsigned big-endian integer bytes without leading zeros, to compare TPM and JWK encodings of one number. */
function unsignedBytes(bytes: Uint8Array): Buffer {
  let i = 0
  while (i < bytes.length - 1 && bytes[i] === 0) i++
  return Buffer.from(bytes.subarray(i))
}

/**
 * Whether a DER certificate certifies the key of a TPM2B_PUBLIC: same RSA modulus and exponent, or same ECC point.
 * undefined when node cannot parse the certificate (some vendors' DER is not strict), so the keys cannot be compared.
 */
function certificateCertifiesEk(der: Uint8Array, ekPublic: TpmtPublic): boolean | undefined {
  let jwk: JsonWebKey
  try {
    jwk = new X509Certificate(der).publicKey.export({ format: 'jwk' })
  } catch {
    return undefined
  }
  const b64 = (v: string | undefined) => unsignedBytes(Buffer.from(v ?? '', 'base64url'))
  const { unique, parameters } = ekPublic
  if (unique.kind === 'rsa' && parameters.kind === 'rsa') {
    const exponent = Buffer.alloc(4)
    exponent.writeUInt32BE(parameters.exponent === 0 ? 65537 : parameters.exponent)
    return (
      jwk.kty === 'RSA' &&
      b64(jwk.n).equals(unsignedBytes(unique.n)) &&
      b64(jwk.e).equals(unsignedBytes(exponent))
    )
  }
  if (unique.kind === 'ecc') {
    return (
      jwk.kty === 'EC' &&
      b64(jwk.x).equals(unsignedBytes(unique.x)) &&
      b64(jwk.y).equals(unsignedBytes(unique.y))
    )
  }
  return false
}

/**
 * The EK certificate (DER) from the TCG NV indices, or null if there is none.
 *
 * Without `ekPublicArea`: the index of the default template for `alg` (RSA 0x01c00002, ECC 0x01c0000a), the
 * certificate of the EK `createEk` makes. With it (TPM2B_PUBLIC of the EK in use): every EK certificate index of
 * the family (`EkCertNvIndices`) is tried and only a certificate of that key is returned, so an EK made from another
 * template never gets a certificate for a different key (swtpm's ECC certificate at 0x01c00016 is for its P-384
 * EK, not for the L-2 P-256 one). A certificate node cannot parse is returned only from the default index, as
 * before, since its key cannot be compared.
 */
export async function readEkCertificate(
  tpm: Tpm,
  alg: EncAlgName,
  ekPublicArea?: Uint8Array,
): Promise<Uint8Array | null> {
  const defaultIndex = EkCertNvIndex[alg]
  const candidates = EkCertNvIndices[alg]
  if (defaultIndex === undefined || candidates === undefined)
    throw new TpmUsageError(`unsupported EK algorithm "${alg}"`)
  if (ekPublicArea === undefined) return readCertificateAt(tpm, defaultIndex)

  const ekPublic = decodeTpm2bPublic(ekPublicArea)
  const family = alg === 'rsa' ? TpmAlg.Rsa : TpmAlg.Ecc
  if (ekPublic.type !== family)
    throw new TpmUsageError(
      `the EK is not an ${alg.toUpperCase()} key (type 0x${ekPublic.type.toString(16)})`,
    )
  for (const { index, der } of await listEkCertificates(tpm, alg)) {
    const matches = certificateCertifiesEk(der, ekPublic)
    if (matches === true || (matches === undefined && index === defaultIndex)) return der
  }
  return null
}

/**
 * Runs `fn` with a fresh EK policy session. The TPM flushes the session when the command succeeds (it is not
 * continued) but keeps it when the command fails, so it is flushed here on failure.
 */
async function withEkPolicy<T>(
  tpm: Tpm,
  auth: HierarchyAuth,
  ekHandle: number,
  fn: (session: Awaited<ReturnType<typeof ekPolicySession>>) => Promise<T>,
): Promise<T> {
  // The EK's own nameAlg and authPolicy pick the policy: low-range templates, or a high-range persistent EK.
  const { outPublic } = await tpm.run(ReadPublic, { objectHandle: ekHandle })
  const session = await ekPolicySession(tpm, auth.endorsementPassword, outPublic)
  try {
    return await fn(session)
  } catch (err) {
    await tpm.run(FlushContext, { flushHandle: session.handle }).catch(() => {})
    throw err
  }
}

export interface CreatedAk {
  /** TPM2B_PUBLIC (with size prefix), as the registrar's `aik_tpm`. */
  publicArea: Uint8Array
  /** TPM2B_PRIVATE (with size prefix), to be stored and given back to `loadAk`. */
  privateArea: Uint8Array
  handle: number
  name: Uint8Array
}

/** Creates and loads a restricted signing AK under the EK. */
export async function createAk(
  tpm: Tpm,
  ekHandle: number,
  algs: { hashAlg: HashAlgName; signAlg: SignAlgName },
  auth: HierarchyAuth = {},
): Promise<CreatedAk> {
  signSchemeId(algs.signAlg)
  const inPublic = akTemplate(algs.signAlg, hashAlgId(algs.hashAlg))
  const created = await withEkPolicy(tpm, auth, ekHandle, (session) =>
    tpm.run(
      Create,
      {
        parentHandle: ekHandle,
        inSensitive: { userAuth: new Uint8Array(0), data: new Uint8Array(0) },
        inPublic,
        outsideInfo: new Uint8Array(0),
        creationPcr: [],
      },
      [session],
    ),
  )
  const loaded = await loadAk(tpm, ekHandle, created.outPublicBytes, created.outPrivateBytes, auth)
  return { publicArea: created.outPublicBytes, privateArea: created.outPrivateBytes, ...loaded }
}

/** Loads a previously created AK under the EK. */
export async function loadAk(
  tpm: Tpm,
  ekHandle: number,
  publicArea: Uint8Array,
  privateArea: Uint8Array,
  auth: HierarchyAuth = {},
): Promise<{ handle: number; name: Uint8Array }> {
  const r = await withEkPolicy(tpm, auth, ekHandle, (session) =>
    tpm.run(Load, { parentHandle: ekHandle, inPrivate: privateArea, inPublic: publicArea }, [session]),
  )
  return { handle: r.objectHandle, name: r.name }
}

/**
 * TPM2_ActivateCredential with the AK (empty password) and the EK (EK policy): returns the secret the
 * registrar's MakeCredential wrapped. Blob and secret are TPM2B bytes (size prefixes included).
 */
export async function activateCredential(
  tpm: Tpm,
  args: { akHandle: number; ekHandle: number; credentialBlob: Uint8Array; encryptedSecret: Uint8Array },
  auth: HierarchyAuth = {},
): Promise<Uint8Array> {
  const r = await withEkPolicy(tpm, auth, args.ekHandle, (session) =>
    tpm.run(
      ActivateCredential,
      {
        activateHandle: args.akHandle,
        keyHandle: args.ekHandle,
        credentialBlob: args.credentialBlob,
        secret: args.encryptedSecret,
      },
      [new PasswordSession(), session],
    ),
  )
  return r.certInfo
}

/** Reads PCR values of one bank; more than 8 PCRs take several PCR_Read calls. */
export async function pcrRead(
  tpm: Tpm,
  hashAlg: HashAlgName,
  pcrs: readonly number[],
): Promise<Map<number, Uint8Array>> {
  const alg = hashAlgId(hashAlg)
  let remaining = [...new Set(pcrs)].sort((a, b) => a - b)
  for (const p of remaining) {
    if (!Number.isInteger(p) || p < 0 || p > 31) throw new TpmUsageError(`invalid PCR index ${p}`)
  }
  const values = new Map<number, Uint8Array>()
  while (remaining.length > 0) {
    const r = await tpm.run(PcrRead, { pcrSelectionIn: [pcrSelection(alg, remaining)] })
    const returned = r.pcrSelectionOut.find((s) => s.hash === alg)?.pcrs ?? []
    if (returned.length === 0 || returned.length !== r.pcrValues.length) {
      throw new TpmUsageError(
        `PCR_Read returned no values for ${hashAlg} PCRs ${remaining.join(',')} (bank inactive?)`,
      )
    }
    returned.forEach((pcr, i) => {
      values.set(pcr, r.pcrValues[i] as Uint8Array)
    })
    remaining = remaining.filter((p) => !values.has(p))
  }
  return values
}

export async function pcrExtend(
  tpm: Tpm,
  pcr: number,
  digests: Partial<Record<HashAlgName, Uint8Array>>,
): Promise<void> {
  const list = Object.entries(digests).map(([name, digest]) => {
    const entry = HashAlgs[name as HashAlgName]
    if (!entry || !digest || digest.length !== entry.size) {
      throw new TpmUsageError(`digest for ${name} must be ${entry?.size ?? '?'} bytes`)
    }
    return { hashAlg: entry.alg, digest }
  })
  await tpm.run(PcrExtend, { pcrHandle: pcr, digests: list })
}

export async function pcrReset(tpm: Tpm, pcr: number): Promise<void> {
  await tpm.run(PcrReset, { pcrHandle: pcr })
}

export async function flushContext(tpm: Tpm, handle: number): Promise<void> {
  await tpm.run(FlushContext, { flushHandle: handle })
}

/**
 * Flushes every loaded transient object (0x80xxxxxx) and returns how many it flushed. For a process starting on a
 * TPM without a resource manager (swtpm), where a killed predecessor's objects stay loaded and fill the few object
 * slots; behind the kernel resource manager (`/dev/tpmrm0`) a process lists only its own objects, so this is a
 * no-op there. It also flushes objects of any other client using the TPM at that moment: call it only at start-up.
 * Sessions are left alone: the kernel does not hide other processes' sessions from the handle list.
 */
export async function flushTransientObjects(tpm: Tpm): Promise<number> {
  let flushed = 0
  for (const handle of await listHandles(tpm, TpmHt.Transient)) {
    try {
      await tpm.run(FlushContext, { flushHandle: handle })
      flushed++
    } catch (err) {
      // Gone in between (its owner flushed it): nothing left to do.
      if (err instanceof TpmResponseError && err.baseRc === TpmRc.Handle) continue
      throw err
    }
  }
  return flushed
}

export interface KeylimeQuote {
  /** TPMS_ATTEST bytes exactly as signed. */
  attest: Uint8Array
  /** TPMT_SIGNATURE bytes. */
  signature: Uint8Array
  /** Values of the quoted PCRs that hash to the attest's pcrDigest. */
  pcrValues: Map<number, Uint8Array>
}

/**
 * TPM2_Quote over `pcrs` of the `hashAlg` bank, then reads those PCRs; if they do not hash to the quoted
 * digest (a PCR changed in between), quotes again, up to 5 times.
 */
export async function quote(
  tpm: Tpm,
  akHandle: number,
  args: { nonce: Uint8Array; hashAlg: HashAlgName; pcrs: number[]; signAlg: SignAlgName },
): Promise<KeylimeQuote> {
  const alg = hashAlgId(args.hashAlg)
  const scheme = signSchemeId(args.signAlg)
  const selection = pcrSelection(alg, args.pcrs)
  if (args.nonce.length > 64) throw new TpmUsageError('quote nonce longer than 64 bytes')
  for (let attempt = 1; ; attempt++) {
    const q = await tpm.run(Quote, {
      signHandle: akHandle,
      qualifyingData: args.nonce,
      inScheme: { scheme, hashAlg: alg },
      pcrSelect: [selection],
    })
    const pcrValues = await pcrRead(tpm, args.hashAlg, selection.pcrs)
    const h = createHash(nodeHashName(alg) ?? 'sha256')
    for (const pcr of selection.pcrs) h.update(pcrValues.get(pcr) as Uint8Array)
    const digest = h.digest()
    if (q.attest.attested.kind === 'quote' && Buffer.from(q.attest.attested.pcrDigest).equals(digest)) {
      return { attest: q.attest.raw, signature: q.signatureBytes, pcrValues }
    }
    if (attempt >= 5) throw new TpmUsageError('PCR values kept changing while quoting (5 attempts)')
  }
}

export interface TpmInfo {
  manufacturer: string
  vendorString: string
  /** TPM_PT_FIRMWARE_VERSION_1 and _2 as 8 hex digits each, e.g. `20191023.00163636`. */
  firmwareVersion: string
  specLevel: number
  specRevision: number
  pcrBanks: { hashAlg: string; pcrs: number[] }[]
  algorithms: string[]
  nvBufferMax: number | undefined
}

function fourChars(v: number | undefined): string {
  if (v === undefined) return ''
  return String.fromCharCode((v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff).replace(
    /[\0\s]+$/g,
    '',
  )
}

const hex8 = (v: number) => (v >>> 0).toString(16).padStart(8, '0')

/** Manufacturer, firmware, active PCR banks and algorithms. */
export async function getTpmInfo(tpm: Tpm): Promise<TpmInfo> {
  const props = await getTpmProperties(tpm, TpmPt.FamilyIndicator, 64)
  const fw1 = props.get(TpmPt.FirmwareVersion1) ?? 0
  const fw2 = props.get(TpmPt.FirmwareVersion2) ?? 0
  const pcrs = await capability(tpm, TpmCap.Pcrs, 0, 1)
  const algs = await capability(tpm, TpmCap.Algs, 0, 256)
  return {
    manufacturer: fourChars(props.get(TpmPt.Manufacturer)),
    vendorString: [TpmPt.VendorString1, TpmPt.VendorString2, TpmPt.VendorString3, TpmPt.VendorString4]
      .map((p) => fourChars(props.get(p)))
      .join(''),
    firmwareVersion: `${hex8(fw1)}.${hex8(fw2)}`,
    specLevel: props.get(TpmPt.Level) ?? 0,
    specRevision: props.get(TpmPt.Revision) ?? 0,
    pcrBanks:
      pcrs.capability === TpmCap.Pcrs
        ? pcrs.pcrBanks
            .filter((b) => b.pcrs.length > 0)
            .map((b) => ({ hashAlg: tpmAlgName(b.hash), pcrs: b.pcrs }))
        : [],
    algorithms: algs.capability === TpmCap.Algs ? algs.algorithms.map((a) => tpmAlgName(a.alg)) : [],
    nvBufferMax: props.get(TpmPt.NvBufferMax),
  }
}

export interface DeviceIdKey {
  handle: number
  /** TPM2B_PUBLIC (with size prefix), as the registrar's `iak_tpm` / `idevid_tpm`. */
  publicArea: Uint8Array
  name: Uint8Array
}

/**
 * Creates the IAK or IDevID primary from a TCG device identity template (H-1..H-4) in the endorsement hierarchy.
 * The keys are deterministic: the same template gives the key the manufacturer's certificate names.
 */
export async function createDeviceIdKey(
  tpm: Tpm,
  kind: 'iak' | 'idevid',
  template: DeviceIdTemplateName,
  auth: HierarchyAuth = {},
): Promise<DeviceIdKey> {
  if (!DEVICE_ID_TEMPLATES.includes(template))
    throw new TpmUsageError(`unsupported device identity template "${template}"`)
  const r = await tpm.run(
    CreatePrimary,
    {
      primaryHandle: TpmRh.Endorsement,
      inSensitive: { userAuth: new Uint8Array(0), data: new Uint8Array(0) },
      inPublic: deviceIdTemplate(kind, template),
      outsideInfo: new Uint8Array(0),
      creationPcr: [],
    },
    [new PasswordSession(auth.endorsementPassword)],
  )
  return { handle: r.objectHandle, publicArea: r.outPublicBytes, name: r.name }
}

/**
 * TPM2_Certify: `signHandle` (e.g. the IAK) signs, with its own scheme, that `objectHandle` (e.g. the AK) is loaded
 * in this TPM, over `qualifyingData`. Returns the TPMS_ATTEST and TPMT_SIGNATURE bytes as the TPM produced them.
 */
export async function certifyObject(
  tpm: Tpm,
  args: {
    objectHandle: number
    signHandle: number
    qualifyingData: Uint8Array
    objectPassword?: string
    signPassword?: string
  },
): Promise<{ attest: Uint8Array; signature: Uint8Array }> {
  if (args.qualifyingData.length > 64) throw new TpmUsageError('certify qualifying data longer than 64 bytes')
  const r = await tpm.run(
    Certify,
    {
      objectHandle: args.objectHandle,
      signHandle: args.signHandle,
      qualifyingData: args.qualifyingData,
      inScheme: { scheme: TpmAlg.Null, hashAlg: TpmAlg.Null },
    },
    [new PasswordSession(args.objectPassword), new PasswordSession(args.signPassword)],
  )
  return { attest: r.attest.raw, signature: r.signatureBytes }
}

/** Splits concatenated DER certificates (an NV area may hold several, then padding); stops at the first non-DER. */
export function splitDerCertificates(data: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = []
  let rest = data
  while (rest.length > 2 && rest[0] === 0x30) {
    const len = derSequenceLength(rest)
    if (len === undefined || len > rest.length) break
    out.push(rest.slice(0, len))
    rest = rest.subarray(len)
  }
  return out
}

/**
 * The EK CA chain the manufacturer stored in NV (TCG EK Credential Profile 2.x: indices 0x01c00100-0x01c001ff,
 * read in index order, each holding one or more DER certificates), for the verifier to build the EK certificate's
 * path to a root it trusts. Empty when the TPM holds none.
 */
export async function readEkCaChain(tpm: Tpm): Promise<Uint8Array[]> {
  const indices = (await listHandles(tpm, TpmHt.NvIndex))
    .filter((h) => h >= EkCaChainNvRange.first && h <= EkCaChainNvRange.last)
    .sort((a, b) => a - b)
  const out: Uint8Array[] = []
  for (const index of indices) out.push(...splitDerCertificates(await nvReadAll(tpm, index)))
  return out
}

/** The DER certificate(s) at an NV index (an IAK/IDevID certificate a manufacturer provisioned). */
export async function readNvCertificate(tpm: Tpm, index: number): Promise<Uint8Array> {
  const certs = splitDerCertificates(await nvReadAll(tpm, index))
  const first = certs[0]
  if (first === undefined)
    throw new TpmUsageError(`NV index 0x${index.toString(16)} holds no DER certificate`)
  return first
}

/**
 * Defines an owner-authorised, world-readable NV index of `data`'s size and writes `data` into it (provisioning
 * certificates into a development TPM, as a manufacturer would). An index already defined there is replaced.
 */
export async function nvDefineAndWrite(
  tpm: Tpm,
  index: number,
  data: Uint8Array,
  auth: { ownerPassword?: string } = {},
): Promise<void> {
  const owner = () => [new PasswordSession(auth.ownerPassword)]
  if ((await listHandles(tpm, TpmHt.NvIndex)).includes(index)) {
    await tpm.run(NvUndefineSpace, { authHandle: TpmRh.Owner, nvIndex: index }, owner())
  }
  await tpm.run(
    NvDefineSpace,
    {
      authHandle: TpmRh.Owner,
      auth: new Uint8Array(0),
      publicInfo: {
        nvIndex: index,
        nameAlg: TpmAlg.Sha256,
        // written by the owner only; read by anyone with the index's empty auth, as EK certificate indices are
        attributes: TpmaNv.OwnerWrite | TpmaNv.OwnerRead | TpmaNv.AuthRead | TpmaNv.NoDa,
        authPolicy: new Uint8Array(0),
        dataSize: data.length,
      },
    },
    owner(),
  )
  const props = await getTpmProperties(tpm, TpmPt.NvBufferMax, 1)
  const chunk = Math.max(1, Math.min(props.get(TpmPt.NvBufferMax) ?? 512, 1024))
  for (let offset = 0; offset < data.length; offset += chunk) {
    await tpm.run(
      NvWrite,
      { authHandle: TpmRh.Owner, nvIndex: index, data: data.subarray(offset, offset + chunk), offset },
      owner(),
    )
  }
}
