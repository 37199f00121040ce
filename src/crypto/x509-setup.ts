/** One place that points @peculiar/x509 at node's WebCrypto; import it before using the library. */
import { webcrypto } from 'node:crypto'
import * as x509 from '@peculiar/x509'

// The library's typings name DOM types; node's WebCrypto is the same API at runtime.
x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0])

export { x509 }
export const subtle: webcrypto.SubtleCrypto = webcrypto.subtle
export type CryptoKey = webcrypto.CryptoKey
export type CryptoKeyPair = webcrypto.CryptoKeyPair
