import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  akTemplate,
  decodeExact,
  decodeTpm2b,
  decodeTpm2bAttest,
  decodeTpm2bEncryptedSecret,
  decodeTpm2bIdObject,
  decodeTpm2bNvPublic,
  decodeTpm2bPublic,
  decodeTpmsAttest,
  decodeTpmsContext,
  decodeTpmtPublic,
  decodeTpmtSignature,
  EK_TEMPLATE_ECC_P256,
  EK_TEMPLATE_RSA2048,
  encodeTpm2b,
  encodeTpm2bIdObject,
  encodeTpm2bNvPublic,
  encodeTpm2bPublic,
  encodeTpmsAttest,
  encodeTpmsContext,
  encodeTpmtPublic,
  encodeTpmtSignature,
  encodeWith,
  pcrSelection,
  TPM_GENERATED_VALUE,
  TpmAlg,
  TpmFormatError,
  TpmlDigest,
  TpmlPcrSelection,
  TpmSt,
  type TpmsAttest,
  TpmsClockInfo,
  type TpmtSignature,
  TpmtSigScheme,
  TpmtTicket,
} from '../../../src/tpm/index.ts'

const hex = (s: string) => Uint8Array.from(Buffer.from(s, 'hex'))

const quoteAttest: Omit<TpmsAttest, 'raw'> = {
  magic: TPM_GENERATED_VALUE,
  type: TpmSt.AttestQuote,
  qualifiedSigner: hex(`000b${'11'.repeat(32)}`),
  extraData: new TextEncoder().encode('abcdefghij0123456789'),
  clockInfo: { clock: 123456789n, resetCount: 3, restartCount: 7, safe: true },
  firmwareVersion: 0x2000_0001_0000_0000n,
  attested: {
    kind: 'quote',
    pcrSelect: [pcrSelection(TpmAlg.Sha256, [0, 1, 2, 10, 16])],
    pcrDigest: hex('aa'.repeat(32)),
  },
}

describe('TPMS_ATTEST', () => {
  it('round-trips a QUOTE and keeps the exact signed bytes', () => {
    const bytes = encodeTpmsAttest(quoteAttest)
    const decoded = decodeTpmsAttest(bytes)
    expect(decoded.raw).toEqual(bytes)
    expect(decoded.clockInfo).toEqual(quoteAttest.clockInfo)
    expect(decoded.attested).toEqual(quoteAttest.attested)
    expect(decoded.extraData).toEqual(quoteAttest.extraData)
    expect(encodeTpmsAttest(decoded)).toEqual(bytes)
    // magic, type, 2 TPM2Bs, 17 clock bytes, firmware, selection (4+2+1+3), digest
    expect(bytes.length).toBe(4 + 2 + 36 + 22 + 17 + 8 + 10 + 34)
  })

  it('round-trips a CERTIFY', () => {
    const certify = {
      ...quoteAttest,
      type: TpmSt.AttestCertify,
      attested: { kind: 'certify' as const, name: hex('000b01'), qualifiedName: hex('000b02') },
    }
    const decoded = decodeTpmsAttest(encodeTpmsAttest(certify))
    expect(decoded.attested).toEqual(certify.attested)
  })

  it('rejects a wrong magic, unknown type, trailing bytes and truncation with offsets and paths', () => {
    const bytes = encodeTpmsAttest(quoteAttest)
    const badMagic = bytes.slice()
    badMagic[0] = 0
    expect(() => decodeTpmsAttest(badMagic)).toThrow(/magic/)
    const badType = bytes.slice()
    badType[5] = 0x14
    expect(() => decodeTpmsAttest(badType)).toThrow(/unsupported attestation type/)
    expect(() => decodeTpmsAttest(Uint8Array.from([...bytes, 0]))).toThrow(/trailing/)
    try {
      decodeTpmsAttest(bytes.subarray(0, 70))
      expect.unreachable()
    } catch (err) {
      expect(err).toBeInstanceOf(TpmFormatError)
      expect((err as TpmFormatError).code).toBe('ERR_TPM_FORMAT')
      expect((err as TpmFormatError).path).toBe('TPMS_ATTEST.clockInfo')
      expect((err as TpmFormatError).offset).toBe(64)
    }
    const badSafe = bytes.slice()
    badSafe[4 + 2 + 36 + 22 + 16] = 2
    expect(() => decodeTpmsAttest(badSafe)).toThrow(/safe must be 0 or 1/)
  })

  it('decodes a TPM2B_ATTEST whose size must match', () => {
    const inner = encodeTpmsAttest(quoteAttest)
    const wrapped = encodeTpm2b(inner)
    expect(decodeTpm2bAttest(wrapped).raw).toEqual(inner)
    const extra = encodeTpm2b(Uint8Array.from([...inner, 1]))
    expect(() => decodeTpm2bAttest(extra)).toThrow(/unused bytes/)
  })
})

describe('TPMT_SIGNATURE', () => {
  const sigs: TpmtSignature[] = [
    { sigAlg: TpmAlg.RsaSsa, hash: TpmAlg.Sha256, sig: hex('01'.repeat(256)) },
    { sigAlg: TpmAlg.RsaPss, hash: TpmAlg.Sha384, sig: hex('02'.repeat(256)) },
    { sigAlg: TpmAlg.Ecdsa, hash: TpmAlg.Sha256, r: hex('03'.repeat(32)), s: hex('04'.repeat(32)) },
    { sigAlg: TpmAlg.Hmac, hash: TpmAlg.Sha1, digest: hex('05'.repeat(20)) },
    { sigAlg: TpmAlg.Null },
  ]
  it.each(sigs.map((s) => [s.sigAlg, s] as const))('round-trips alg 0x%s', (_alg, sig) => {
    const bytes = encodeTpmtSignature(sig)
    expect(decodeTpmtSignature(bytes)).toEqual(sig)
  })
  it('rejects unknown algorithms', () => {
    expect(() => decodeTpmtSignature(hex('0099000b0000'))).toThrow(/unsupported signature algorithm/)
  })
})

describe('TPMT_PUBLIC / TPM2B_PUBLIC', () => {
  const templates = {
    'EK RSA': EK_TEMPLATE_RSA2048,
    'EK ECC': EK_TEMPLATE_ECC_P256,
    'AK RSA': akTemplate('rsassa'),
    'AK ECC': akTemplate('ecdsa'),
  }
  it.each(Object.entries(templates))('%s round-trips, raw = TPMT_PUBLIC bytes', (_name, template) => {
    const tpmt = encodeTpmtPublic(template)
    const decoded = decodeTpmtPublic(tpmt)
    expect(decoded.raw).toEqual(tpmt)
    expect(encodeTpmtPublic(decoded)).toEqual(tpmt)
    const b = encodeTpm2bPublic(template)
    expect(b.length).toBe(tpmt.length + 2)
    expect(decodeTpm2bPublic(b).raw).toEqual(tpmt)
  })
  it('encodes the EK RSA template as the TCG profile lays it out', () => {
    const tpmt = Buffer.from(encodeTpmtPublic(EK_TEMPLATE_RSA2048)).toString('hex')
    expect(
      tpmt.startsWith('0001000b000300b20020837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa'),
    ).toBe(true)
    expect(tpmt.slice(84, 84 + 28)).toBe('0006008000430010080000000000')
    expect(tpmt.slice(112, 116)).toBe('0100')
  })
  it('rejects a size prefix that does not match', () => {
    const b = encodeTpm2bPublic(akTemplate('ecdsa'))
    const longer = b.slice()
    longer[1] = (longer[1] ?? 0) + 1
    expect(() => decodeTpm2bPublic(longer)).toThrow(TpmFormatError)
    expect(() => decodeTpm2bPublic(b.subarray(0, b.length - 1))).toThrow(/truncated/)
  })
})

describe('small structures', () => {
  it('TPML_PCR_SELECTION maps bitmaps to indices', () => {
    const bytes = encodeWith((w) =>
      TpmlPcrSelection.encode(w, [pcrSelection(TpmAlg.Sha1, [0, 7, 8, 23]), pcrSelection(TpmAlg.Sha256, [])]),
    )
    expect(Buffer.from(bytes).toString('hex')).toBe('00000002' + '0004038101' + '80' + '000b03000000')
    expect(decodeExact(bytes, 'sel', (r) => TpmlPcrSelection.decode(r))).toEqual([
      { hash: TpmAlg.Sha1, pcrs: [0, 7, 8, 23], sizeofSelect: 3 },
      { hash: TpmAlg.Sha256, pcrs: [], sizeofSelect: 3 },
    ])
    expect(() => decodeExact(hex('00000011'), 'sel', (r) => TpmlPcrSelection.decode(r))).toThrow(/exceeds 16/)
  })
  it('TPML_DIGEST, TPMS_CLOCK_INFO, TPMT_SIG_SCHEME, tickets', () => {
    const digests = [hex('00'.repeat(32)), hex('ff'.repeat(20))]
    const d = encodeWith((w) => TpmlDigest.encode(w, digests))
    expect(decodeExact(d, 'x', (r) => TpmlDigest.decode(r))).toEqual(digests)
    const clock = { clock: 2n ** 63n, resetCount: 0xffffffff, restartCount: 0, safe: false }
    expect(
      decodeExact(
        encodeWith((w) => TpmsClockInfo.encode(w, clock)),
        'c',
        (r) => TpmsClockInfo.decode(r),
      ),
    ).toEqual(clock)
    const scheme = { scheme: TpmAlg.Ecdsa, hashAlg: TpmAlg.Sha256 }
    expect(
      decodeExact(
        encodeWith((w) => TpmtSigScheme.encode(w, scheme)),
        's',
        (r) => TpmtSigScheme.decode(r),
      ),
    ).toEqual(scheme)
    const ticket = { tag: TpmSt.Creation, hierarchy: 0x4000000b, digest: hex('01'.repeat(32)) }
    expect(
      decodeExact(
        encodeWith((w) => TpmtTicket.encode(w, ticket)),
        't',
        (r) => TpmtTicket.decode(r),
      ),
    ).toEqual(ticket)
  })
  it('TPM2B_NV_PUBLIC, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET, TPMS_CONTEXT', () => {
    const nv = {
      nvIndex: 0x01c00002,
      nameAlg: TpmAlg.Sha256,
      attributes: 0x620f0001,
      authPolicy: new Uint8Array(0),
      dataSize: 1000,
    }
    expect(decodeTpm2bNvPublic(encodeTpm2bNvPublic(nv))).toEqual(nv)
    const id = { integrityHmac: hex('0a'.repeat(32)), encIdentity: hex('0b'.repeat(34)) }
    expect(decodeTpm2bIdObject(encodeTpm2bIdObject(id))).toEqual(id)
    expect(decodeTpm2bEncryptedSecret(encodeTpm2b(hex('0c'.repeat(256))))).toEqual(hex('0c'.repeat(256)))
    const ctx = {
      sequence: 77n,
      savedHandle: 0x80000000,
      hierarchy: 0x4000000b,
      contextBlob: hex('0d'.repeat(100)),
    }
    expect(decodeTpmsContext(encodeTpmsContext(ctx))).toEqual(ctx)
  })
})

/** Every decoder the library exposes, over a whole buffer. */
const decoders: Record<string, (b: Uint8Array) => unknown> = {
  decodeTpmsAttest,
  decodeTpm2bAttest,
  decodeTpmtSignature,
  decodeTpm2bPublic,
  decodeTpmtPublic,
  decodeTpm2bNvPublic,
  decodeTpm2bIdObject,
  decodeTpm2bEncryptedSecret,
  decodeTpmsContext,
  decodeTpm2b: (b) => decodeTpm2b(b),
  TpmlPcrSelection: (b) => decodeExact(b, 'TPML_PCR_SELECTION', (r) => TpmlPcrSelection.decode(r)),
  TpmlDigest: (b) => decodeExact(b, 'TPML_DIGEST', (r) => TpmlDigest.decode(r)),
  TpmsClockInfo: (b) => decodeExact(b, 'TPMS_CLOCK_INFO', (r) => TpmsClockInfo.decode(r)),
  TpmtSigScheme: (b) => decodeExact(b, 'TPMT_SIG_SCHEME', (r) => TpmtSigScheme.decode(r)),
  TpmtTicket: (b) => decodeExact(b, 'TPMT_TK', (r) => TpmtTicket.decode(r)),
}

const seeds = [
  encodeTpmsAttest(quoteAttest),
  encodeTpm2bPublic(EK_TEMPLATE_RSA2048),
  encodeTpm2bPublic(akTemplate('ecdsa')),
  encodeTpmtSignature({
    sigAlg: TpmAlg.Ecdsa,
    hash: TpmAlg.Sha256,
    r: hex('03'.repeat(32)),
    s: hex('04'.repeat(32)),
  }),
  encodeTpmsContext({
    sequence: 1n,
    savedHandle: 0x80000001,
    hierarchy: 0x40000001,
    contextBlob: hex('aa'.repeat(40)),
  }),
]

function onlyFormatErrors(decode: (b: Uint8Array) => unknown, bytes: Uint8Array): boolean {
  try {
    decode(bytes)
  } catch (err) {
    if (!(err instanceof TpmFormatError)) throw err
  }
  return true
}

describe('fuzz: only TpmFormatError escapes a decoder', () => {
  for (const [name, decode] of Object.entries(decoders)) {
    it(`${name}: random bytes`, () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 600 }), (b) => onlyFormatErrors(decode, b)),
        { numRuns: 400 },
      )
    })
    it(`${name}: mutated and truncated valid structures`, () => {
      const mutated = fc
        .tuple(
          fc.constantFrom(...seeds),
          fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
          fc.nat(),
        )
        .map(([seed, edits, cut]) => {
          const b = seed.slice()
          for (const [at, value] of edits) b[at % b.length] = value
          return b.subarray(0, b.length - (cut % 4 === 0 ? cut % b.length : 0))
        })
      fc.assert(
        fc.property(mutated, (b) => onlyFormatErrors(decode, b)),
        { numRuns: 400 },
      )
    })
  }
  it('non-Uint8Array input is a TpmFormatError', () => {
    expect(() => decodeTpmsAttest('abc' as unknown as Uint8Array)).toThrow(TpmFormatError)
  })
})
