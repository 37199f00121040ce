/**
 * Identity and integrity quotes (keylime-api.md §1): PCR 16 is reset and extended with H(payload pubkey PEM)
 * once, and re-bound if anything else changed it; every quote covers mask ∪ {16}; the IMA list is read after the
 * quote so it always contains at least what PCR 10 covers; the UEFI log is attached only when PCR 0 is quoted.
 */
import { createHash } from 'node:crypto'
import { type FileHandle, open, readFile } from 'node:fs/promises'
import type { IdentityQuoteResults, IntegrityQuoteResults } from '../api/agent/schemas.ts'
import { KeylimeError } from '../common/errors.ts'
import type { Logger } from '../common/log.ts'
import { encodePcrBlob } from '../evidence/quote/pcr-blob.ts'
import { formatQuoteString } from '../evidence/quote/quote-string.ts'
import type { AgentQuote, AgentTpm, EncAlgName, HashAlgName, SignAlgName, TpmLock } from './agent-tpm.ts'
import type { IntegrityQuoteParams } from './app.ts'
import type { ImaMeasurementList } from './ima-list.ts'

export const DATA_PCR = 16

/** Builds the `r<attest>:<sig>:<pcrblob>` string (the quote codec of src/evidence/quote). */
export type QuoteFormatter = (q: AgentQuote, hashAlg: HashAlgName) => string

/** The quote string (protocols §A.1): TPMS_ATTEST, TPMT_SIGNATURE and the tpm2-tools PCR blob of the quoted bank. */
export const formatAgentQuote: QuoteFormatter = (q, hashAlg) => {
  const pcrBlob = encodePcrBlob({ banks: [{ hashAlg, values: q.pcrValues }] })
  return formatQuoteString({ attest: q.attest, signature: q.signature, pcrBlob })
}

export class QuoteError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_AGENT_QUOTE', message, { statusCode: 500, ...options })
  }
}

export interface QuoteServiceOptions {
  tpm: AgentTpm
  lock: TpmLock
  akHandle: number
  hashAlg: HashAlgName
  signAlg: SignAlgName
  encAlg: EncAlgName
  pubkeyPem: string
  ima: ImaMeasurementList
  mbLogPath: string
  formatQuote: QuoteFormatter
  log: Logger
}

/** `enc_alg` as each API version names it (≥2.5 spells out the key size). */
export function encAlgForVersion(encAlg: EncAlgName, apiVersion: string): string {
  const [major, minor] = apiVersion.split('.').map(Number) as [number, number]
  const explicit = major > 2 || (major === 2 && minor >= 5)
  if (!explicit) return encAlg
  return encAlg === 'rsa' ? 'rsa2048' : 'ecc256'
}

/** Expected PCR 16 after binding: H(0^n ‖ H(pubkey PEM)). */
export function expectedDataPcr(hashAlg: HashAlgName, pubkeyPem: string): Buffer {
  const d = createHash(hashAlg).update(pubkeyPem, 'utf8').digest()
  return createHash(hashAlg).update(Buffer.alloc(d.length)).update(d).digest()
}

export class QuoteService {
  private readonly o: QuoteServiceOptions
  private readonly expected16: Buffer
  /** The UEFI event log opened before run_as dropped root (securityfs is root-only); null reads by path. */
  private mbLog: FileHandle | null = null

  constructor(o: QuoteServiceOptions) {
    this.o = o
    this.expected16 = expectedDataPcr(o.hashAlg, o.pubkeyPem)
  }

  /** Opens the IMA list and the UEFI event log now, for a process about to give up root (run_as). */
  async holdMeasurementFiles(): Promise<void> {
    await this.o.ima.holdOpen()
    if (this.mbLog) return
    try {
      this.mbLog = await open(this.o.mbLogPath, 'r')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
  }

  async closeMeasurementFiles(): Promise<void> {
    await this.o.ima.close()
    const fh = this.mbLog
    this.mbLog = null
    await fh?.close()
  }

  /** Resets PCR 16 and extends it with H(pubkey PEM). Call with the lock held. */
  private async bindUnlocked(): Promise<void> {
    const digest = createHash(this.o.hashAlg).update(this.o.pubkeyPem, 'utf8').digest()
    await this.o.tpm.pcrReset(DATA_PCR)
    await this.o.tpm.pcrExtend(DATA_PCR, { [this.o.hashAlg]: digest })
  }

  /** Binds the payload key into PCR 16 and checks the bank is active (a missing bank fails here, not per quote). */
  bindPubkey(): Promise<void> {
    return this.o.lock.run(async () => {
      await this.bindUnlocked()
      let value: Uint8Array | undefined
      try {
        value = (await this.o.tpm.pcrRead(this.o.hashAlg, [DATA_PCR])).get(DATA_PCR)
      } catch (err) {
        throw new QuoteError(`the TPM has no active ${this.o.hashAlg} PCR bank (tpm_hash_alg)`, {
          cause: err,
        })
      }
      if (!value || !this.expected16.equals(Buffer.from(value))) {
        throw new QuoteError(
          `PCR ${DATA_PCR} could not be bound to the payload key in the ${this.o.hashAlg} bank`,
        )
      }
    })
  }

  private quoteWithBinding(nonce: string, pcrs: number[]): Promise<AgentQuote> {
    const set = [...new Set([...pcrs, DATA_PCR])].sort((a, b) => a - b)
    return this.o.lock.run(async () => {
      const args = {
        nonce: Buffer.from(nonce, 'utf8'),
        hashAlg: this.o.hashAlg,
        pcrs: set,
        signAlg: this.o.signAlg,
      }
      let q = await this.o.tpm.quote(this.o.akHandle, args)
      const v16 = q.pcrValues.get(DATA_PCR)
      if (!v16 || !this.expected16.equals(Buffer.from(v16))) {
        this.o.log.warn('PCR 16 no longer holds the payload key binding; re-binding')
        await this.bindUnlocked()
        q = await this.o.tpm.quote(this.o.akHandle, args)
      }
      return q
    })
  }

  private async format(q: AgentQuote): Promise<string> {
    try {
      return this.o.formatQuote(q, this.o.hashAlg)
    } catch (err) {
      throw new QuoteError('could not encode the quote', { cause: err })
    }
  }

  async identity(nonce: string, apiVersion: string): Promise<IdentityQuoteResults> {
    const q = await this.quoteWithBinding(nonce, [])
    return {
      quote: await this.format(q),
      hash_alg: this.o.hashAlg,
      enc_alg: encAlgForVersion(this.o.encAlg, apiVersion),
      sign_alg: this.o.signAlg,
      pubkey: this.o.pubkeyPem,
    }
  }

  async integrity(p: IntegrityQuoteParams): Promise<IntegrityQuoteResults> {
    const q = await this.quoteWithBinding(p.nonce, p.pcrs)
    const out: IntegrityQuoteResults = {
      quote: await this.format(q),
      hash_alg: this.o.hashAlg,
      enc_alg: encAlgForVersion(this.o.encAlg, p.apiVersion),
      sign_alg: this.o.signAlg,
    }
    if (!p.partial) out.pubkey = this.o.pubkeyPem
    const ima = await this.o.ima.read(p.imaMlEntry)
    if (ima) {
      out.ima_measurement_list = ima.text
      out.ima_measurement_list_entry = ima.entry
    }
    if (p.pcrs.includes(0)) {
      try {
        const log = this.mbLog ? await readAllFrom(this.mbLog) : await readFile(this.o.mbLogPath)
        out.mb_measurement_list = log.toString('base64')
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
          this.o.log.warn(`cannot read the UEFI event log: ${(err as Error).message}`)
        }
      }
    }
    return out
  }
}

/** The whole file through an open handle, read by position so repeated calls each see it from the start. */
async function readAllFrom(fh: FileHandle): Promise<Buffer> {
  const chunks: Buffer[] = []
  let pos = 0
  for (;;) {
    const buf = Buffer.allocUnsafe(1 << 16)
    const { bytesRead } = await fh.read(buf, 0, buf.length, pos)
    if (bytesRead === 0) break
    chunks.push(buf.subarray(0, bytesRead))
    pos += bytesRead
  }
  return Buffer.concat(chunks)
}
