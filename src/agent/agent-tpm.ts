/**
 * What the agent needs from a TPM, as one narrow interface: the runtime is written against it and
 * `tpm-keylime.ts` implements it with team TPM's `src/tpm/keylime-client.ts`. `TpmLock` serialises whole
 * sequences (reset+extend, quote+PCR read) so one request's commands never interleave with another's.
 */
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
