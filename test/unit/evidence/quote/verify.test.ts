import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { publicAreaToKeyObject } from '../../../../src/crypto/tpm-public.ts'
import {
  checkClock,
  formatQuoteString,
  QUOTE_VALIDATION_EVENT,
  type TpmClockInfo,
  verifyQuote,
  verifyQuoteSignatureAsync,
} from '../../../../src/evidence/quote/index.ts'
import { akTemplate, encodeTpm2bPublic, TpmAlg } from '../../../../src/tpm/index.ts'
import { pcrValues, softwareAk, softwareQuote, softwareQuoteParts } from './software-quote.ts'

const rsa = softwareAk('rsa')
const ecc = softwareAk('ecc')
const NONCE = 'aBcDeFgHiJ0123456789'

function messageOf(r: ReturnType<typeof verifyQuote>): string {
  if (r.verdict.ok) return 'ok'
  expect(r.verdict.events).toHaveLength(1)
  const ev = r.verdict.events[0]
  expect(ev?.eventId).toBe(QUOTE_VALIDATION_EVENT)
  expect(ev?.recoverable).toBe(false)
  return String(ev?.context.message)
}

describe.each([
  ['RSA', rsa],
  ['ECC', ecc],
])('verifyQuote with a %s AK', (_n, ak) => {
  const pcrs = pcrValues('sha256', [0, 1, 10, 16])

  it('accepts a good quote with the AK as TPM2B_PUBLIC or cached KeyObject', () => {
    const quote = softwareQuote(ak, { nonce: NONCE, pcrs })
    for (const akPublic of [ak.tpm2bPublic, publicAreaToKeyObject(ak.tpm2bPublic), ak.publicKey]) {
      const r = verifyQuote({ akPublic, quote, nonce: NONCE, hashAlg: 'sha256' })
      expect(r.verdict).toEqual({ ok: true })
      expect([...(r.pcrs?.entries() ?? [])]).toEqual([...pcrs.entries()])
      expect(r.clockInfo).toEqual({ clock: 1000, resetCount: 0, restartCount: 0, safe: 1 })
    }
  })

  it('checks the nonce: ASCII string (pull), raw bytes and base64 (push)', () => {
    const quote = softwareQuote(ak, { nonce: NONCE, pcrs })
    expect(
      messageOf(verifyQuote({ akPublic: ak.publicKey, quote, nonce: `${NONCE}0`, hashAlg: 'sha256' })),
    ).toMatch(/nonce/)
    const raw = new Uint8Array([1, 2, 3, 250])
    const pushQuote = softwareQuoteParts(ak, { nonce: raw, pcrs })
    expect(
      verifyQuote({ akPublic: ak.publicKey, quote: pushQuote, nonce: raw, hashAlg: 'sha256' }).verdict.ok,
    ).toBe(true)
    const b64 = Buffer.from(raw).toString('base64')
    expect(
      verifyQuote({ akPublic: ak.publicKey, quote: pushQuote, nonce: b64, hashAlg: 'sha256' }).verdict.ok,
    ).toBe(false)
    const withB64 = verifyQuote({
      akPublic: ak.publicKey,
      quote: pushQuote,
      nonce: b64,
      acceptBase64Nonce: true,
      hashAlg: 'sha256',
    })
    expect(withB64.verdict.ok).toBe(true)
  })

  it('rejects a quote signed by another key, a mismatched hash and a wrong PCR value', () => {
    const quote = softwareQuote(ak, { nonce: NONCE, pcrs })
    const other = softwareAk(ak.kind)
    expect(
      messageOf(verifyQuote({ akPublic: other.publicKey, quote, nonce: NONCE, hashAlg: 'sha256' })),
    ).toMatch(/does not verify/)
    expect(
      messageOf(verifyQuote({ akPublic: ak.publicKey, quote, nonce: NONCE, hashAlg: 'sha384' })),
    ).toMatch(/signed with hash sha256, expected sha384/)
    const parts = softwareQuoteParts(ak, { nonce: NONCE, pcrs })
    const forged = softwareQuoteParts(ak, { nonce: NONCE, pcrs: new Map([...pcrs, [1, new Uint8Array(32)]]) })
    const mixed = formatQuoteString({ ...parts, pcrBlob: forged.pcrBlob })
    expect(
      messageOf(verifyQuote({ akPublic: ak.publicKey, quote: mixed, nonce: NONCE, hashAlg: 'sha256' })),
    ).toMatch(/PCR values do not match/)
  })

  it('a signature verified ahead on the thread pool spares only that computation, for exactly those parts', async () => {
    const parts = softwareQuoteParts(ak, { nonce: NONCE, pcrs })
    await verifyQuoteSignatureAsync(ak.publicKey, parts, 'sha256')
    expect(
      verifyQuote({ akPublic: ak.publicKey, quote: parts, nonce: NONCE, hashAlg: 'sha256' }).verdict,
    ).toEqual({
      ok: true,
    })
    // every other check still runs on the verified parts
    expect(
      messageOf(verifyQuote({ akPublic: ak.publicKey, quote: parts, nonce: `${NONCE}0`, hashAlg: 'sha256' })),
    ).toMatch(/nonce/)
    const forged = softwareQuoteParts(ak, { nonce: NONCE, pcrs: new Map([...pcrs, [1, new Uint8Array(32)]]) })
    const goodBlob = parts.pcrBlob
    parts.pcrBlob = forged.pcrBlob
    expect(
      messageOf(verifyQuote({ akPublic: ak.publicKey, quote: parts, nonce: NONCE, hashAlg: 'sha256' })),
    ).toMatch(/PCR values do not match/)
    parts.pcrBlob = goodBlob
    // another key, or other signed bytes in the same object, are verified again (and fail)
    const other = softwareAk(ak.kind)
    expect(
      messageOf(verifyQuote({ akPublic: other.publicKey, quote: parts, nonce: NONCE, hashAlg: 'sha256' })),
    ).toMatch(/does not verify/)
    const otherQuote = softwareQuoteParts(ak, { nonce: 'another nonce', pcrs })
    const signedAttest = parts.attest
    const flipped = Uint8Array.from(signedAttest)
    flipped[flipped.length - 1] = (flipped[flipped.length - 1] as number) ^ 1
    parts.attest = flipped
    expect(
      messageOf(verifyQuote({ akPublic: ak.publicKey, quote: parts, nonce: NONCE, hashAlg: 'sha256' })),
    ).toMatch(/does not verify/)
    parts.attest = signedAttest
    parts.signature = otherQuote.signature
    expect(
      messageOf(verifyQuote({ akPublic: ak.publicKey, quote: parts, nonce: NONCE, hashAlg: 'sha256' })),
    ).toMatch(/does not verify/)
  })

  it('a bad or malformed signature verified ahead is remembered as nothing', async () => {
    const other = softwareAk(ak.kind)
    const foreign = softwareQuoteParts(other, { nonce: NONCE, pcrs })
    await verifyQuoteSignatureAsync(ak.publicKey, foreign, 'sha256')
    expect(
      messageOf(verifyQuote({ akPublic: ak.publicKey, quote: foreign, nonce: NONCE, hashAlg: 'sha256' })),
    ).toMatch(/does not verify/)
    const garbled = {
      ...softwareQuoteParts(ak, { nonce: NONCE, pcrs }),
      signature: new Uint8Array([1, 2, 3]),
    }
    await verifyQuoteSignatureAsync(ak.publicKey, garbled, 'sha256')
    expect(
      messageOf(verifyQuote({ akPublic: ak.publicKey, quote: garbled, nonce: NONCE, hashAlg: 'sha256' })),
    ).toMatch(/malformed quote/)
    const good = softwareQuoteParts(ak, { nonce: NONCE, pcrs })
    await verifyQuoteSignatureAsync(ak.publicKey, good, 'md5')
    await verifyQuoteSignatureAsync(ak.publicKey, good, 'sha384')
    expect(
      messageOf(verifyQuote({ akPublic: ak.publicKey, quote: good, nonce: NONCE, hashAlg: 'sha384' })),
    ).toMatch(/signed with hash sha256, expected sha384/)
  })

  it('rejects attestations that are not quotes', () => {
    const quote = softwareQuote(ak, { nonce: NONCE, pcrs, certify: true })
    expect(
      messageOf(verifyQuote({ akPublic: ak.publicKey, quote, nonce: NONCE, hashAlg: 'sha256' })),
    ).toMatch(/not a quote/)
  })

  it('turns any malformed quote into a failure verdict, never an exception', () => {
    const good = softwareQuoteParts(ak, { nonce: NONCE, pcrs })
    fc.assert(
      fc.property(
        fc.constantFrom('attest', 'signature', 'pcrBlob') as fc.Arbitrary<'attest' | 'signature' | 'pcrBlob'>,
        fc.array(fc.tuple(fc.nat(600), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
        fc.nat(700),
        (part, edits, cut) => {
          const bytes = Uint8Array.from(good[part])
          for (const [i, v] of edits) if (i < bytes.length) bytes[i] = v
          const mutated = { ...good, [part]: cut % 3 === 0 ? bytes.subarray(0, cut % bytes.length) : bytes }
          const r = verifyQuote({ akPublic: ak.publicKey, quote: mutated, nonce: NONCE, hashAlg: 'sha256' })
          if (!r.verdict.ok) expect(r.verdict.events[0]?.eventId).toBe(QUOTE_VALIDATION_EVENT)
        },
      ),
      { numRuns: 300 },
    )
    expect(
      messageOf(verifyQuote({ akPublic: ak.publicKey, quote: 'garbage', nonce: NONCE, hashAlg: 'sha256' })),
    ).toMatch(/malformed quote/)
    expect(
      messageOf(verifyQuote({ akPublic: ak.publicKey, quote: 'r::', nonce: NONCE, hashAlg: 'md5' })),
    ).toMatch(/unsupported hash algorithm md5/)
  })
})

describe('verifyQuote scheme rules', () => {
  const pcrs = pcrValues('sha256', [16])

  it('refuses RSAPSS quotes from an RSA AK', () => {
    const quote = softwareQuote(rsa, { nonce: NONCE, pcrs, sigAlg: TpmAlg.RsaPss })
    expect(
      messageOf(verifyQuote({ akPublic: rsa.publicKey, quote, nonce: NONCE, hashAlg: 'sha256' })),
    ).toMatch(/only accepts RSASSA/)
  })

  it('refuses ECSCHNORR quotes from an ECC AK', () => {
    const quote = softwareQuote(ecc, { nonce: NONCE, pcrs, sigAlg: TpmAlg.EcSchnorr })
    expect(
      messageOf(verifyQuote({ akPublic: ecc.publicKey, quote, nonce: NONCE, hashAlg: 'sha256' })),
    ).toMatch(/only accepts ECDSA/)
  })

  it('refuses an AK public area whose scheme is not RSASSA', () => {
    const t = akTemplate('rsassa')
    const jwk = rsa.publicKey.export({ format: 'jwk' })
    const pssAk = encodeTpm2bPublic({
      ...t,
      parameters: { ...t.parameters, scheme: { scheme: TpmAlg.RsaPss, hashAlg: TpmAlg.Sha256, count: 0 } },
      unique: { kind: 'rsa', n: Buffer.from(jwk.n ?? '', 'base64url') },
    } as typeof t)
    const quote = softwareQuote(rsa, { nonce: NONCE, pcrs })
    expect(messageOf(verifyQuote({ akPublic: pssAk, quote, nonce: NONCE, hashAlg: 'sha256' }))).toMatch(
      /RSASSA key/,
    )
  })

  it('verifies sha1 and sha384 banks when the AK signs with them', () => {
    for (const hashAlg of ['sha1', 'sha384'] as const) {
      const ak = softwareAk('rsa', hashAlg)
      const values = pcrValues(hashAlg, [0, 16, 23])
      const quote = softwareQuote(ak, { nonce: NONCE, pcrs: values, hashAlg })
      const r = verifyQuote({ akPublic: ak.publicKey, quote, nonce: NONCE, hashAlg })
      expect(r.verdict).toEqual({ ok: true })
      expect(r.pcrs?.get(23)).toEqual(values.get(23))
    }
  })
})

describe('checkClock', () => {
  const c = (clock: number, resetCount = 0, restartCount = 0, safe = 1): TpmClockInfo => ({
    clock,
    resetCount,
    restartCount,
    safe,
  })
  const msg = (r: ReturnType<typeof checkClock>) =>
    r.verdict.ok ? 'ok' : `${r.verdict.events[0]?.eventId}: ${String(r.verdict.events[0]?.context.message)}`

  it('accepts an advancing clock and keeps the new value', () => {
    const r = checkClock(c(100), c(200))
    expect(msg(r)).toBe('ok')
    expect(r.clockInfo).toEqual(c(200))
    expect(checkClock(null, c(5)).clockInfo).toEqual(c(5))
  })

  it('rejects a clock that does not advance unless both counters moved', () => {
    expect(msg(checkClock(c(200), c(200)))).toMatch(
      /^qoute_validation\.quote_validation: TPM clock did not increase/,
    )
    expect(msg(checkClock(c(200), c(100, 1, 0)))).toMatch(/did not increase/)
    expect(msg(checkClock(c(200), c(100, 0, 1)))).toMatch(/did not increase/)
    const both = checkClock(c(200), c(100, 1, 1))
    expect(msg(both)).toBe('ok')
    expect(both.clockInfo).toEqual(c(200)) // upstream keeps the stored value in this case
  })

  it('rejects decreasing counters and an unsafe clock', () => {
    expect(msg(checkClock(c(1, 2, 0), c(5, 1, 0)))).toMatch(/resetCount value decreased/)
    expect(msg(checkClock(c(1, 0, 2), c(5, 0, 1)))).toMatch(/restartCount value decreased/)
    expect(msg(checkClock(c(1), c(5, 0, 0, 0)))).toMatch(/safe flag/)
    expect(checkClock(c(1, 2, 0), c(5, 1, 0)).verdict).toMatchObject({ events: [{ recoverable: false }] })
  })

  it('derives the stored JSON shape from a verified quote', () => {
    const pcrs = pcrValues('sha256', [16])
    const quote = softwareQuote(ecc, { nonce: NONCE, pcrs, clock: 2n ** 40n, resetCount: 3, restartCount: 4 })
    const r = verifyQuote({ akPublic: ecc.publicKey, quote, nonce: NONCE, hashAlg: 'sha256' })
    expect(r.clockInfo).toEqual(c(2 ** 40, 3, 4))
    expect(JSON.parse(JSON.stringify(r.clockInfo))).toEqual(r.clockInfo)
  })
})
