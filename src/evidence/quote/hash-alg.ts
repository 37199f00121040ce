/** TPM_ALG_ID values of the PCR bank / signature hash algorithms Keylime accepts (TPM 2.0 Part 2, 6.3). */
import { QuoteFormatError } from './errors.ts'

export type QuoteHashAlg = 'sha1' | 'sha256' | 'sha384' | 'sha512' | 'sm3_256'

export const HASH_ALG_IDS: Readonly<Record<QuoteHashAlg, number>> = Object.freeze({
  sha1: 0x0004,
  sha256: 0x000b,
  sha384: 0x000c,
  sha512: 0x000d,
  sm3_256: 0x0012,
})

export const HASH_ALG_SIZES: Readonly<Record<QuoteHashAlg, number>> = Object.freeze({
  sha1: 20,
  sha256: 32,
  sha384: 48,
  sha512: 64,
  sm3_256: 32,
})

const BY_ID = new Map<number, QuoteHashAlg>(
  Object.entries(HASH_ALG_IDS).map(([name, id]) => [id, name as QuoteHashAlg]),
)

export function hashAlgName(id: number): QuoteHashAlg | undefined {
  return BY_ID.get(id)
}

export function isQuoteHashAlg(name: unknown): name is QuoteHashAlg {
  return typeof name === 'string' && Object.hasOwn(HASH_ALG_IDS, name)
}

export function hashAlgId(name: QuoteHashAlg): number {
  const id = HASH_ALG_IDS[name]
  if (id === undefined) throw new QuoteFormatError(`unknown hash algorithm ${String(name)}`)
  return id
}
