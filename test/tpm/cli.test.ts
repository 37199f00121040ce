import { createHash } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parsePcrSpec } from '../../src/cli/commands/tpm.ts'
import { parseQuoteString } from '../../src/evidence/quote/index.ts'
import { decodeTpmsAttest } from '../../src/tpm/index.ts'
import { runKeylime } from '../helpers/cli.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

let sw: SwtpmInstance

beforeAll(async () => {
  sw = await startSwtpm()
})
afterAll(async () => {
  await sw?.stop()
})

describe('keylime tpm CLI', () => {
  it('parses PCR specs', () => {
    expect(parsePcrSpec('sha256:0,1,2,10')).toEqual({ hashAlg: 'sha256', pcrs: [0, 1, 2, 10] })
    expect(parsePcrSpec('sha1:10,0-3')).toEqual({ hashAlg: 'sha1', pcrs: [0, 1, 2, 3, 10] })
    expect(() => parsePcrSpec('md5:1')).toThrow(/bad --pcrs/)
    expect(() => parsePcrSpec('sha256:30')).toThrow(/out of range/)
  })

  it('info prints manufacturer, banks and every stored EK certificate with its NV index', async () => {
    const { out, code } = await runKeylime(['tpm', 'info', '--tpm', sw.transport])
    expect(code).toBe(0)
    expect(out).toMatch(/Manufacturer: +IBM/)
    expect(out).toMatch(/PCR banks: +sha1 \(24 PCRs\), sha256 \(24 PCRs\)/)
    expect(out).toMatch(
      /EK cert \(rsa\) at 0x01c00002 \(L-1 RSA 2048\): subject "[^"]*", issuer "[^"]*swtpm[^"]*"/i,
    )
    // swtpm_setup also stores a certificate for its P-384 ECC EK, in the TCG high range
    expect(out).toMatch(
      /EK cert \(ecc\) at 0x01c00016 \(H-3 ECC NIST P-384\): subject "[^"]*", issuer "[^"]*swtpm[^"]*"/i,
    )
  })

  it('quote takes the TPM from KEYLIME_TPM and prints a Keylime quote whose PCR digest matches', async () => {
    const { out, code, err } = await runKeylime(
      ['tpm', 'quote', '--pcrs', 'sha256:0,1,2,10', '--nonce', 'abcdefghij0123456789', '--json'],
      { KEYLIME_TPM: sw.transport },
    )
    expect(err).toBe('')
    expect(code).toBe(0)
    const json = JSON.parse(out)
    const parts = parseQuoteString(json.quote)
    const attest = decodeTpmsAttest(parts.attest)
    expect(Buffer.from(attest.extraData).toString()).toBe('abcdefghij0123456789')
    const digest = createHash('sha256')
    for (const i of ['0', '1', '2', '10']) digest.update(Buffer.from(json.pcrs[i], 'hex'))
    expect(attest.attested.kind === 'quote' && Buffer.from(attest.attested.pcrDigest)).toEqual(
      digest.digest(),
    )
  })

  it('names every algorithm the TPM lists (no bare 0x ids)', async () => {
    const { out, code } = await runKeylime(['tpm', 'info', '--tpm', sw.transport, '--json'])
    expect(code).toBe(0)
    const algorithms = JSON.parse(out).algorithms as string[]
    expect(algorithms).toEqual(expect.arrayContaining(['rsa', 'sha256', 'ecc', 'cmac']))
    expect(algorithms.filter((a) => a.startsWith('0x'))).toEqual([])
  })

  it('pcrread reads the whole SHA-256 bank and quote quotes PCRs 0-10 when --pcrs is not given', async () => {
    const read = await runKeylime(['tpm', 'pcrread', '--tpm', sw.transport, '--json'])
    expect(read.code).toBe(0)
    expect(Object.keys(JSON.parse(read.out).sha256)).toHaveLength(24)
    const quote = await runKeylime(['tpm', 'quote', '--tpm', sw.transport, '--nonce', 'n0nce', '--json'])
    expect(quote.code).toBe(0)
    expect(Object.keys(JSON.parse(quote.out).pcrs)).toEqual([
      '0',
      '1',
      '2',
      '3',
      '4',
      '5',
      '6',
      '7',
      '8',
      '9',
      '10',
    ])
  })

  it('reports a bad transport as an error, not a crash', async () => {
    const { code, err } = await runKeylime([
      'tpm',
      'pcrread',
      '--tpm',
      'swtpm:host=127.0.0.1,port=1',
      '--pcrs',
      'sha256:0',
    ])
    expect(code).toBe(4)
    expect(err).toMatch(
      /^keylime tpm pcrread: cannot connect to swtpm at 127\.0\.0\.1:1: connection refused by 127\.0\.0\.1:1 \(check the TPM transport/,
    )
    expect(err.trimEnd().split('\n')).toHaveLength(1)
    const bad = await runKeylime(['tpm', 'info', '--tpm', 'carrier-pigeon:x'])
    expect([bad.code, bad.err]).toEqual([
      2,
      expect.stringMatching(/^keylime tpm info: unknown TPM transport "carrier-pigeon:x"/),
    ])
  })
})
