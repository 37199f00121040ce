/**
 * Cross-check with tpm2-tools on a real swtpm: quotes made by tpm2_quote (RSASSA and ECDSA AKs from tpm2_createak)
 * verify with our verifyQuote, including the PCR 16 key binding, tpm_policy checks and the TPM clock rules; tampered
 * quotes are refused.
 */
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { publicAreaToKeyObject } from '../../src/crypto/tpm-public.ts'
import {
  checkClock,
  checkPcrPolicy,
  formatQuoteString,
  parsePcrBlob,
  parseTpmPolicy,
  type TpmClockInfo,
  verifyQuote,
} from '../../src/evidence/quote/index.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

const run = promisify(execFile)

let dir: string
let swtpm: SwtpmInstance | undefined
let tcti: string

async function tpm2(tool: string, ...args: string[]): Promise<string> {
  const { stdout } = await run(`tpm2_${tool}`, args, {
    cwd: dir,
    env: { ...process.env, TPM2TOOLS_TCTI: tcti },
  })
  return stdout
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kl-crosscheck-'))
  swtpm = await startSwtpm()
  tcti = swtpm.tcti
})

afterAll(async () => {
  await swtpm?.stop()
  if (dir) rmSync(dir, { recursive: true, force: true })
})

const AGENT_PUBKEY_PEM =
  '-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAkeylimecrosscheckpubkeyAAAAAAAAAAAAAAAAA=\n-----END PUBLIC KEY-----\n'

async function quote(prefix: string, nonce: string, pcrList: string) {
  await tpm2('flushcontext', '-t')
  await tpm2(
    'quote',
    ...['-c', `${prefix}ak.ctx`, '-l', pcrList, '-q', Buffer.from(nonce).toString('hex'), '-g', 'sha256'],
    ...['-m', `${prefix}q.msg`, '-s', `${prefix}q.sig`, '-o', `${prefix}q.pcrs`],
  )
  await tpm2('flushcontext', '-t')
  return formatQuoteString({
    attest: readFileSync(join(dir, `${prefix}q.msg`)),
    signature: readFileSync(join(dir, `${prefix}q.sig`)),
    pcrBlob: readFileSync(join(dir, `${prefix}q.pcrs`)),
  })
}

beforeAll(async () => {
  // Bind a key the way the agent does: extend PCR 16 (sha256) with H(pubkey PEM).
  const digest = createHash('sha256').update(AGENT_PUBKEY_PEM, 'utf8').digest('hex')
  await tpm2('pcrextend', `16:sha256=${digest}`)
})

describe.each([
  ['rsa', 'rsa', 'rsassa'],
  ['ecc', 'ecc', 'ecdsa'],
] as const)('tpm2_quote verified by verifyQuote (%s AK)', (prefix, alg, scheme) => {
  let akPub: Uint8Array

  beforeAll(async () => {
    await tpm2('flushcontext', '-t')
    await tpm2('createek', '-c', `${prefix}ek.ctx`, '-G', alg, '-u', `${prefix}ek.pub`)
    await tpm2(
      'createak',
      ...['-C', `${prefix}ek.ctx`, '-c', `${prefix}ak.ctx`, '-G', alg, '-g', 'sha256', '-s', scheme],
      ...['-u', `${prefix}ak.pub`],
    )
    await tpm2('flushcontext', '-t')
    akPub = new Uint8Array(readFileSync(join(dir, `${prefix}ak.pub`)))
  })

  it('accepts a genuine quote and returns the quoted PCR values', async () => {
    const nonce = 'Abcdefghij0123456789'
    const q = await quote(prefix, nonce, 'sha256:0,1,2,10,16')
    const result = verifyQuote({ akPublic: akPub, quote: q, nonce, hashAlg: 'sha256' })
    expect(result.verdict).toEqual({ ok: true })
    expect([...(result.pcrs?.keys() ?? [])]).toEqual([0, 1, 2, 10, 16])
    expect(result.clockInfo?.safe).toBe(1)
    // Same values as tpm2_pcrread reports.
    const read = await tpm2('pcrread', 'sha256:0,16')
    const pcr16 = Buffer.from(result.pcrs?.get(16) ?? [])
      .toString('hex')
      .toUpperCase()
    expect(read).toContain(`0x${pcr16}`)

    const pcr0 = Buffer.from(result.pcrs?.get(0) ?? []).toString('hex')
    const pcrs = result.pcrs ?? new Map()
    const good = parseTpmPolicy({
      '0': [pcr0, 'ab'.repeat(32)],
      '2': Buffer.from(pcrs.get(2)).toString('hex'),
    })
    expect(
      checkPcrPolicy({ pcrs, tpmPolicy: good, boundPubkeyPem: AGENT_PUBKEY_PEM, hashAlg: 'sha256' }),
    ).toEqual({
      ok: true,
    })
    const bad = checkPcrPolicy({
      pcrs,
      tpmPolicy: parseTpmPolicy({ '0': ['ff'.repeat(32)], '7': ['11'.repeat(32)] }),
      boundPubkeyPem: `${AGENT_PUBKEY_PEM} `,
      hashAlg: 'sha256',
    })
    expect(bad.ok ? [] : bad.events.map((e) => e.eventId)).toEqual([
      'pcr_validation.invalid_pcr_16',
      'pcr_validation.invalid_pcr_0',
      'pcr_validation.missing_pcrs',
    ])
  })

  it('accepts a cached KeyObject and a multi-bank quote', async () => {
    const nonce = 'zyxwvutsrq9876543210'
    const q = await quote(prefix, nonce, 'sha1:16+sha256:16,23')
    const ak = publicAreaToKeyObject(akPub)
    const result = verifyQuote({ akPublic: ak, quote: q, nonce, hashAlg: 'sha256' })
    expect(result.verdict).toEqual({ ok: true })
    expect([...(result.pcrs?.keys() ?? [])]).toEqual([16, 23])
    expect(result.pcrBlob?.banks.map((b) => b.hashAlg)).toEqual(['sha1', 'sha256'])
  })

  it('refuses wrong nonce, wrong hash, tampered attest and PCR values', async () => {
    const nonce = '01234567890123456789'
    const q = await quote(prefix, nonce, 'sha256:0,16')
    const msg = (r: ReturnType<typeof verifyQuote>) =>
      r.verdict.ok ? '' : `${r.verdict.events[0]?.eventId} ${String(r.verdict.events[0]?.context.message)}`
    expect(msg(verifyQuote({ akPublic: akPub, quote: q, nonce: `${nonce}x`, hashAlg: 'sha256' }))).toMatch(
      /^qoute_validation\.quote_validation .*nonce/,
    )
    expect(msg(verifyQuote({ akPublic: akPub, quote: q, nonce, hashAlg: 'sha1' }))).toMatch(/expected sha1/)

    const attest = Buffer.from(readFileSync(join(dir, `${prefix}q.msg`)))
    attest[attest.length - 1] = (attest[attest.length - 1] as number) ^ 1
    const sig = readFileSync(join(dir, `${prefix}q.sig`))
    const blob = Buffer.from(readFileSync(join(dir, `${prefix}q.pcrs`)))
    const tamperedAttest = formatQuoteString({ attest, signature: sig, pcrBlob: blob })
    expect(msg(verifyQuote({ akPublic: akPub, quote: tamperedAttest, nonce, hashAlg: 'sha256' }))).toMatch(
      /signature does not verify/,
    )

    blob[142] = (blob[142] as number) ^ 0xff // first byte of the first PCR value
    const original = readFileSync(join(dir, `${prefix}q.msg`))
    const tamperedPcrs = formatQuoteString({ attest: original, signature: sig, pcrBlob: blob })
    expect(parsePcrBlob(blob).banks.length).toBe(1)
    expect(msg(verifyQuote({ akPublic: akPub, quote: tamperedPcrs, nonce, hashAlg: 'sha256' }))).toMatch(
      /PCR values do not match/,
    )
  })

  it('sees the TPM clock advance between quotes', async () => {
    const clockOf = async (nonce: string): Promise<TpmClockInfo> => {
      const r = verifyQuote({
        akPublic: akPub,
        quote: await quote(prefix, nonce, 'sha256:16'),
        nonce,
        hashAlg: 'sha256',
      })
      expect(r.verdict.ok).toBe(true)
      return r.clockInfo as TpmClockInfo
    }
    const first = await clockOf('n1')
    await new Promise((r) => setTimeout(r, 20))
    const second = await clockOf('n2')
    const forward = checkClock(first, second)
    expect(forward.verdict).toEqual({ ok: true })
    expect(forward.clockInfo).toEqual(second)
    expect(checkClock(second, first).verdict.ok).toBe(false)
  })
})

describe('tpm2_quote over the SHA-1 bank with a SHA-1 signing AK', () => {
  it('verifies and returns the sha1 PCR values', async () => {
    await tpm2('flushcontext', '-t')
    await tpm2('createek', '-c', 'sha1ek.ctx', '-G', 'rsa', '-u', 'sha1ek.pub')
    await tpm2(
      'createak',
      ...[
        '-C',
        'sha1ek.ctx',
        '-c',
        'sha1ak.ctx',
        '-G',
        'rsa',
        '-g',
        'sha1',
        '-s',
        'rsassa',
        '-u',
        'sha1ak.pub',
      ],
    )
    await tpm2('flushcontext', '-t')
    const nonce = 'sha1nonce0123456789A'
    await tpm2(
      'quote',
      ...['-c', 'sha1ak.ctx', '-l', 'sha1:0,16', '-q', Buffer.from(nonce).toString('hex'), '-g', 'sha1'],
      ...['-m', 'sha1q.msg', '-s', 'sha1q.sig', '-o', 'sha1q.pcrs'],
    )
    await tpm2('flushcontext', '-t')
    const quote = formatQuoteString({
      attest: readFileSync(join(dir, 'sha1q.msg')),
      signature: readFileSync(join(dir, 'sha1q.sig')),
      pcrBlob: readFileSync(join(dir, 'sha1q.pcrs')),
    })
    const akPublic = new Uint8Array(readFileSync(join(dir, 'sha1ak.pub')))
    const r = verifyQuote({ akPublic, quote, nonce, hashAlg: 'sha1' })
    expect(r.verdict).toEqual({ ok: true })
    expect(r.pcrs?.get(0)).toEqual(new Uint8Array(20))
    expect(verifyQuote({ akPublic, quote, nonce, hashAlg: 'sha256' }).verdict.ok).toBe(false)
  })
})
