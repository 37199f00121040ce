/**
 * TPM library throughput on one core:  node --import tsx bench/tpm-structures.ts [seconds-per-case] [--no-swtpm]
 * Unmarshalling of TPMS_ATTEST / TPMT_SIGNATURE / TPM2B_PUBLIC (pure), then quotes per second against a fresh
 * swtpm (TPM2_Quote + PCR_Read round trips, what an agent does per attestation).
 */
import {
  akTemplate,
  decodeTpm2bPublic,
  decodeTpmsAttest,
  decodeTpmtSignature,
  EK_TEMPLATE_RSA2048,
  encodeTpm2bPublic,
  encodeTpmsAttest,
  encodeTpmtSignature,
  keylime,
  pcrSelection,
  TPM_GENERATED_VALUE,
  Tpm,
  TpmAlg,
  TpmSt,
} from '../src/tpm/index.ts'
import { startSwtpm } from '../test/helpers/swtpm.ts'

const seconds = Number(process.argv.find((a) => /^\d+(\.\d+)?$/.test(a)) ?? 2)
const results: Record<string, number> = {}

function measure(label: string, fn: (i: number) => void): void {
  for (let i = 0; i < 1000; i++) fn(i)
  const start = performance.now()
  const deadline = start + seconds * 1000
  let n = 0
  while (performance.now() < deadline) for (let k = 0; k < 100; k++) fn(n++)
  results[label] = Math.round(n / ((performance.now() - start) / 1000))
  console.log(`${label.padEnd(44)} ${results[label]?.toLocaleString('en-US').padStart(12)} /s`)
}

const attests = Array.from({ length: 64 }, (_, i) =>
  encodeTpmsAttest({
    magic: TPM_GENERATED_VALUE,
    type: TpmSt.AttestQuote,
    qualifiedSigner: new Uint8Array(34).fill(i),
    extraData: new TextEncoder().encode(`nonce-${String(i).padStart(14, '0')}`),
    clockInfo: { clock: BigInt(1_000_000 + i), resetCount: 1, restartCount: 0, safe: true },
    firmwareVersion: 0x2019102300163636n,
    attested: {
      kind: 'quote',
      pcrSelect: [pcrSelection(TpmAlg.Sha256, [0, 1, 2, 3, 4, 5, 6, 7, 10, 14, 16])],
      pcrDigest: new Uint8Array(32).fill(i),
    },
  }),
)
const signature = encodeTpmtSignature({
  sigAlg: TpmAlg.RsaSsa,
  hash: TpmAlg.Sha256,
  sig: new Uint8Array(256).fill(7),
})
const rsaPublic = encodeTpm2bPublic({
  ...akTemplate('rsassa'),
  unique: { kind: 'rsa', n: new Uint8Array(256).fill(9) },
})
const ekPublic = encodeTpm2bPublic(EK_TEMPLATE_RSA2048)

let sink = 0
measure('TPMS_ATTEST unmarshal (quote, 11 PCRs)', (i) => {
  sink += decodeTpmsAttest(attests[i & 63] as Uint8Array).clockInfo.resetCount
})
measure('TPMT_SIGNATURE unmarshal (RSASSA-2048)', () => {
  sink += decodeTpmtSignature(signature).sigAlg
})
measure('TPM2B_PUBLIC unmarshal (RSA AK)', () => {
  sink += decodeTpm2bPublic(rsaPublic).type
})
measure('TPM2B_PUBLIC unmarshal (RSA EK template)', () => {
  sink += decodeTpm2bPublic(ekPublic).type
})

if (!process.argv.includes('--no-swtpm')) {
  const sw = await startSwtpm()
  const tpm = await Tpm.open(sw.transport)
  try {
    for (const [encAlg, signAlg] of [
      ['rsa', 'rsassa'],
      ['ecc', 'ecdsa'],
    ] as const) {
      const ek = await keylime.createEk(tpm, encAlg)
      const ak = await keylime.createAk(tpm, ek.handle, { hashAlg: 'sha256', signAlg })
      const nonce = new TextEncoder().encode('abcdefghij0123456789')
      const pcrs = [0, 1, 2, 3, 4, 5, 6, 7, 10, 14, 16]
      for (let i = 0; i < 20; i++)
        await keylime.quote(tpm, ak.handle, { nonce, hashAlg: 'sha256', pcrs, signAlg })
      const start = performance.now()
      let n = 0
      while (performance.now() - start < seconds * 1000) {
        await keylime.quote(tpm, ak.handle, { nonce, hashAlg: 'sha256', pcrs, signAlg })
        n++
      }
      const label = `swtpm quote + PCR read (${signAlg}, 11 PCRs)`
      results[label] = Math.round(n / ((performance.now() - start) / 1000))
      console.log(`${label.padEnd(44)} ${results[label]?.toLocaleString('en-US').padStart(12)} /s`)
      await keylime.flushContext(tpm, ak.handle)
      await keylime.flushContext(tpm, ek.handle)
    }
  } finally {
    await tpm.close()
    await sw.stop()
  }
}
if (sink === -1) console.log(sink)
console.log(JSON.stringify({ bench: 'tpm-structures', perSecond: results }))
