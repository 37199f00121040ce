/**
 * Quote verification and MakeCredential throughput on one core (this process):
 *   node --import tsx bench/quote.ts [seconds-per-case]
 * Quotes are signed in software with real RSA-2048 / ECDSA P-256 keys (same bytes a TPM produces), verified with a
 * cached AK KeyObject as the verifier does. Prints one line per case and a JSON summary.
 */
import { constants, generateKeyPairSync, verify } from 'node:crypto'
import { makeCredential } from '../src/crypto/make-credential.ts'
import { objectName, publicAreaToKeyObject } from '../src/crypto/tpm-public.ts'
import { checkPcrPolicy, parsePcrBlob, parseTpmPolicy, verifyQuote } from '../src/evidence/quote/index.ts'
import { EK_TEMPLATE_ECC_P256, EK_TEMPLATE_RSA2048, encodeTpm2bPublic } from '../src/tpm/index.ts'
import {
  pcrValues,
  softwareAk,
  softwareQuote,
  softwareQuoteParts,
} from '../test/unit/evidence/quote/software-quote.ts'

const seconds = Number(process.argv[2] ?? 2)
const results: Record<string, number> = {}

function measure(label: string, fn: (i: number) => void): number {
  for (let i = 0; i < 200; i++) fn(i) // warm-up
  const deadline = performance.now() + seconds * 1000
  let n = 0
  const start = performance.now()
  while (performance.now() < deadline) {
    for (let k = 0; k < 50; k++) fn(n++)
  }
  const perSecond = Math.round(n / ((performance.now() - start) / 1000))
  results[label] = perSecond
  console.log(`${label.padEnd(48)} ${perSecond.toLocaleString('en-US').padStart(10)} /s`)
  return perSecond
}

const PCRS = [0, 1, 2, 3, 4, 5, 6, 7, 10, 14, 16]
for (const kind of ['rsa', 'ecc'] as const) {
  const ak = softwareAk(kind)
  const akKey = publicAreaToKeyObject(ak.tpm2bPublic) // parsed once, as the verifier caches it
  const quotes = Array.from({ length: 64 }, (_, i) => {
    const nonce = `nonce${String(i).padStart(15, '0')}`
    return { nonce, quote: softwareQuote(ak, { nonce, pcrs: pcrValues('sha256', PCRS, String(i)) }) }
  })
  const label = kind === 'rsa' ? 'RSA-2048 RSASSA' : 'ECDSA P-256'
  measure(`verifyQuote, cached AK (${label})`, (i) => {
    const q = quotes[i & 63] as (typeof quotes)[number]
    const r = verifyQuote({ akPublic: akKey, quote: q.quote, nonce: q.nonce, hashAlg: 'sha256' })
    if (!r.verdict.ok) throw new Error('bench quote failed')
  })
  // The signature check alone, to show how much of the above is the public-key operation.
  const parts = softwareQuoteParts(ak, { nonce: 'n', pcrs: pcrValues('sha256', PCRS) })
  const rawSig =
    kind === 'rsa'
      ? parts.signature.subarray(6)
      : Buffer.concat([parts.signature.subarray(6, 38), parts.signature.subarray(40, 72)])
  measure(`  node:crypto verify only (${label})`, () => {
    const ok =
      kind === 'rsa'
        ? verify('sha256', parts.attest, { key: akKey, padding: constants.RSA_PKCS1_PADDING }, rawSig)
        : verify('sha256', parts.attest, { key: akKey, dsaEncoding: 'ieee-p1363' }, rawSig)
    if (!ok) throw new Error('bench signature failed')
  })
}

const blob = softwareQuoteParts(softwareAk('ecc'), { nonce: 'n', pcrs: pcrValues('sha256', PCRS) }).pcrBlob
measure('parsePcrBlob (11 PCRs)', () => parsePcrBlob(blob))
const policy = parseTpmPolicy({ '0': ['00'.repeat(32)], '14': ['11'.repeat(32)] })
const pcrs = parsePcrBlob(blob).banks[0]?.values ?? new Map()
measure('checkPcrPolicy (tpm_policy + PCR16 binding)', () =>
  checkPcrPolicy({ pcrs, tpmPolicy: policy, boundPubkeyPem: 'pem', hashAlg: 'sha256' }),
)

const akName = objectName(softwareAk('rsa').tpm2bPublic)
const secret = Buffer.alloc(32, 0x41)
for (const [label, template, key] of [
  ['RSA-2048 EK', EK_TEMPLATE_RSA2048, generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey],
  ['ECC P-256 EK', EK_TEMPLATE_ECC_P256, generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey],
] as const) {
  const jwk = key.export({ format: 'jwk' })
  const b = (s: string | undefined) => Buffer.from(s ?? '', 'base64url')
  const ekPublic = encodeTpm2bPublic(
    template.parameters.kind === 'rsa'
      ? { ...template, unique: { kind: 'rsa', n: b(jwk.n) } }
      : { ...template, unique: { kind: 'ecc', x: b(jwk.x), y: b(jwk.y) } },
  )
  measure(`makeCredential (${label})`, () => makeCredential({ ekPublic, akName, secret }))
}

console.log(JSON.stringify({ bench: 'quote', node: process.version, seconds, results }))
