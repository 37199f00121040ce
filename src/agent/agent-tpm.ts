/**
 * What the agent needs from a TPM, as one narrow interface: the runtime is written against it and
 * `openKeylimeTpm` implements it with `src/tpm/keylime-client.ts`. `TpmLock` serialises whole
 * sequences (reset+extend, quote+PCR read) so one request's commands never interleave with another's.
 */
import {
  activateCredential,
  certifyObject,
  createAk,
  createDeviceIdKey,
  createEk,
  flushContext,
  flushTransientObjects,
  getHandleCounts,
  getTpmInfo,
  loadAk,
  pcrExtend,
  pcrRead,
  pcrReset,
  quote,
  readEkCaChain,
  readEkCertificate,
  readNvCertificate,
  readPublic,
} from '../tpm/keylime-client.ts'
import { Tpm } from '../tpm/tpm.ts'

export type HashAlgName = 'sha1' | 'sha256' | 'sha384' | 'sha512'
export type SignAlgName = 'rsassa' | 'ecdsa'
export type EncAlgName = 'rsa' | 'ecc'
/** TCG device identity key templates the agent can create (H-5, SM2, is not supported). */
export type DeviceIdTemplateName = 'H-1' | 'H-2' | 'H-3' | 'H-4'

export interface AgentQuote {
  /** TPMS_ATTEST bytes exactly as signed. */
  attest: Uint8Array
  /** TPMT_SIGNATURE */
  signature: Uint8Array
  pcrValues: Map<number, Uint8Array>
}

export interface AgentTpm {
  /** Creates the TCG default EK, or reads the public area of a persistent EK handle. */
  ek(alg: EncAlgName, persistentHandle: number | null): Promise<{ handle: number; publicArea: Uint8Array }>
  /** The EK certificate whose key is this EK's (TPM2B_PUBLIC), from any TCG EK certificate index; null if none. */
  readEkCertificate(alg: EncAlgName, ekPublicArea: Uint8Array): Promise<Uint8Array | null>
  createAk(
    ekHandle: number,
    algs: { hashAlg: HashAlgName; signAlg: SignAlgName },
  ): Promise<{ handle: number; publicArea: Uint8Array; privateArea: Uint8Array }>
  loadAk(ekHandle: number, publicArea: Uint8Array, privateArea: Uint8Array): Promise<{ handle: number }>
  activateCredential(args: {
    akHandle: number
    ekHandle: number
    credentialBlob: Uint8Array
    encryptedSecret: Uint8Array
  }): Promise<Uint8Array>
  quote(
    akHandle: number,
    args: { nonce: Uint8Array; hashAlg: HashAlgName; pcrs: number[]; signAlg: SignAlgName },
  ): Promise<AgentQuote>
  pcrRead(hashAlg: HashAlgName, pcrs: number[]): Promise<Map<number, Uint8Array>>
  pcrReset(pcr: number): Promise<void>
  pcrExtend(pcr: number, digests: Partial<Record<HashAlgName, Uint8Array>>): Promise<void>
  /** The EK CA chain certificates (DER) stored in the TCG chain NV range, in index order; empty if none. */
  readEkCaChain(): Promise<Uint8Array[]>
  /** The IAK or IDevID: created from a TCG template, or the public area of a persistent handle. */
  deviceIdKey(
    kind: 'iak' | 'idevid',
    source: { template: DeviceIdTemplateName } | { handle: number },
  ): Promise<{ handle: number; publicArea: Uint8Array }>
  /** The first DER certificate at an NV index. */
  readNvCertificate(index: number): Promise<Uint8Array>
  /** TPM2_Certify of `objectHandle` by `signHandle` over `qualifyingData`: TPMS_ATTEST and TPMT_SIGNATURE bytes. */
  certify(args: {
    objectHandle: number
    signHandle: number
    qualifyingData: Uint8Array
    signPassword?: string
  }): Promise<{ attest: Uint8Array; signature: Uint8Array }>
  flush(handle: number): Promise<void>
  /** Flushes transient objects a killed earlier agent left loaded; returns how many. Only at start-up. */
  flushStaleObjects(): Promise<number>
  /** The active PCR banks and their PCRs. */
  pcrBanks(): Promise<{ hashAlg: string; pcrs: number[] }[]>
  /** Number of loaded transient objects and sessions, for leak checks. */
  handleCounts(): Promise<{ transient: number; sessions: number }>
  close(): Promise<void>
}

/** A FIFO async mutex. */
export class TpmLock {
  private tail: Promise<unknown> = Promise.resolve()

  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(fn)
    this.tail = result.catch(() => undefined)
    return result
  }
}

/** The real TPM behind `AgentTpm`: `src/tpm/keylime-client.ts` on a device or swtpm (the `Tpm` class queues commands). */
export async function openKeylimeTpm(
  transport: string,
  opts: { endorsementPassword?: string } = {},
): Promise<AgentTpm> {
  const tpm = await Tpm.open(transport)
  const auth = opts.endorsementPassword ? { endorsementPassword: opts.endorsementPassword } : {}
  return {
    async ek(alg, persistentHandle) {
      if (persistentHandle !== null) {
        const { publicArea } = await readPublic(tpm, persistentHandle)
        return { handle: persistentHandle, publicArea }
      }
      const ek = await createEk(tpm, alg, auth)
      return { handle: ek.handle, publicArea: ek.publicArea }
    },
    readEkCertificate: (alg, ekPublicArea) => readEkCertificate(tpm, alg, ekPublicArea),
    createAk: (ekHandle, algs) => createAk(tpm, ekHandle, algs, auth),
    loadAk: (ekHandle, pub, priv) => loadAk(tpm, ekHandle, pub, priv, auth),
    activateCredential: (args) => activateCredential(tpm, args, auth),
    quote: (akHandle, args) => quote(tpm, akHandle, args),
    pcrRead: (hashAlg, pcrs) => pcrRead(tpm, hashAlg, pcrs),
    pcrReset: (pcr) => pcrReset(tpm, pcr),
    pcrExtend: (pcr, digests) => pcrExtend(tpm, pcr, digests),
    readEkCaChain: () => readEkCaChain(tpm),
    async deviceIdKey(kind, source) {
      if ('handle' in source) {
        const { publicArea } = await readPublic(tpm, source.handle)
        return { handle: source.handle, publicArea }
      }
      const key = await createDeviceIdKey(tpm, kind, source.template, auth)
      return { handle: key.handle, publicArea: key.publicArea }
    },
    readNvCertificate: (index) => readNvCertificate(tpm, index),
    certify: (args) =>
      certifyObject(tpm, {
        objectHandle: args.objectHandle,
        signHandle: args.signHandle,
        qualifyingData: args.qualifyingData,
        ...(args.signPassword ? { signPassword: args.signPassword } : {}),
      }),
    flush: (handle) => flushContext(tpm, handle),
    flushStaleObjects: () => flushTransientObjects(tpm),
    pcrBanks: async () => (await getTpmInfo(tpm)).pcrBanks,
    handleCounts: () => getHandleCounts(tpm),
    close: () => tpm.close(),
  }
}
