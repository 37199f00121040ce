/**
 * The push agent's evidence on swtpm: the capabilities name the AK and the bank it can quote; the quote answers the
 * verifier's raw challenge over exactly the PCRs selected and verifies with our quote checks; the IMA increment
 * starts at the requested offset; the PoP certification is the AK certified by itself
 * over the challenge; requests for what the agent did not offer are refused.
 */
import { randomBytes, verify } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type AgentTpm, openKeylimeTpm, TpmLock } from '../../src/agent/agent-tpm.ts'
import { ImaEmulator, imaNgFormatter } from '../../src/agent/ima-emulator.ts'
import { ImaMeasurementList } from '../../src/agent/ima-list.ts'
import {
  collectCapabilities,
  collectEvidence,
  type EvidenceSource,
  readBootTime,
} from '../../src/agent/push/evidence.ts'
import { establishTpmIdentity } from '../../src/agent/tpm-identity.ts'
import { createLogger } from '../../src/common/log.ts'
import { objectName, publicAreaToKeyObject, publicKeyPemOf } from '../../src/crypto/tpm-public.ts'
import { verifyQuote } from '../../src/evidence/quote/verify.ts'
import { decodeTpmsAttest } from '../../src/tpm/types/attest.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

const log = createLogger('push-evidence', 'silent')
let dir: string
let swtpm: SwtpmInstance
let tpm: AgentTpm
let source: EvidenceSource
const lock = new TpmLock()
const transient: number[] = []

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'push-evidence-'))
  swtpm = await startSwtpm()
  tpm = await openKeylimeTpm(swtpm.transport)
  const id = await establishTpmIdentity(
    tpm,
    lock,
    {
      uuid: 'generate',
      hashAlg: 'sha256',
      signAlg: 'rsassa',
      encAlg: 'rsa',
      ekHandle: 'generate',
      agentDataPath: join(dir, 'agent_data.json'),
    },
    publicKeyPemOf,
    log,
    transient,
  )
  const imaPath = join(dir, 'ima.txt')
  const files = ['a', 'b', 'c'].map((n) => {
    const p = join(dir, n)
    writeFileSync(p, `content ${n}`)
    return p
  })
  await new ImaEmulator({ tpm, lock, listPath: imaPath, hashAlg: 'sha256', format: imaNgFormatter }).measure(
    files,
  )
  const banks = await tpm.pcrBanks()
  source = {
    tpm,
    lock,
    akHandle: id.ak.handle,
    akPublic: id.ak.publicArea,
    hashAlg: 'sha256',
    signAlg: 'rsassa',
    pcrs: banks.find((b) => b.hashAlg === 'sha256')?.pcrs ?? [],
    ima: new ImaMeasurementList(imaPath),
    uefiLogPath: join(dir, 'no-uefi-log'),
    serverIdentifier: 'ak',
    uefiEvidenceVersion: '2.1',
    bootTime: await readBootTime(),
  }
}, 60_000)

afterAll(async () => {
  for (const h of transient) await tpm?.flush(h).catch(() => undefined)
  await tpm?.close()
  await swtpm?.stop()
  rmSync(dir, { recursive: true, force: true })
})

describe('push agent evidence on swtpm', () => {
  it('offers the AK, its one bank and the IMA list with partial access; no UEFI log when there is none', async () => {
    const caps = await collectCapabilities(source)
    expect(caps.system_info.boot_time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/)
    expect(caps.system_info.boot_time).toBe(await readBootTime())
    type Offer = { evidence_type: string; capabilities: Record<string, unknown> }
    const [quote, ima, ...rest] = caps.evidence_supported as Offer[]
    expect(rest).toEqual([])
    expect(quote?.evidence_type).toBe('tpm_quote')
    expect(quote?.capabilities.component_version).toBe('2.0')
    expect(quote?.capabilities.signature_schemes).toEqual(['rsassa'])
    expect(quote?.capabilities.available_subjects).toEqual({ sha256: source.pcrs })
    expect(source.pcrs).toContain(10)
    const key = ((quote?.capabilities.certification_keys ?? []) as Record<string, string>[])[0] ?? {}
    expect(key).toMatchObject({
      key_class: 'asymmetric',
      key_algorithm: 'rsa',
      key_size: 2048,
      server_identifier: 'ak',
    })
    expect(Buffer.from(key.public ?? '', 'base64').equals(Buffer.from(source.akPublic))).toBe(true)
    // boot_aggregate + 3 files
    expect(ima?.capabilities).toEqual({
      entry_count: 4,
      supports_partial_access: true,
      appendable: true,
      formats: ['text/plain'],
    })
  })

  it('quotes the selected PCRs over the raw challenge and sends the IMA entries from the offset asked for', async () => {
    const challenge = randomBytes(16)
    const collected = await collectEvidence(
      [
        {
          evidence_class: 'log',
          evidence_type: 'ima_log',
          chosen_parameters: { starting_offset: 1, format: 'text/plain' },
        },
        {
          evidence_class: 'certification',
          evidence_type: 'tpm_quote',
          chosen_parameters: {
            challenge: challenge.toString('base64'),
            signature_scheme: 'rsassa',
            hash_algorithm: 'sha256',
            selected_subjects: { sha256: [0, 7, 10] },
          },
        },
      ],
      source,
    )
    // same order as requested
    expect(collected.map((c) => c.evidence_type)).toEqual(['ima_log', 'tpm_quote'])
    const quote = collected[1]?.data as Record<string, string>
    const parts = {
      attest: Buffer.from(quote.message as string, 'base64'),
      signature: Buffer.from(quote.signature as string, 'base64'),
      pcrBlob: Buffer.from(quote.subject_data as string, 'base64'),
    }
    const result = verifyQuote({
      akPublic: source.akPublic,
      quote: parts,
      nonce: challenge,
      hashAlg: 'sha256',
    })
    expect(result.verdict).toEqual({ ok: true })
    expect([...(result.pcrs?.keys() ?? [])]).toEqual([0, 7, 10])
    // the challenge is the qualifying data: another one fails
    const other = verifyQuote({
      akPublic: source.akPublic,
      quote: parts,
      nonce: randomBytes(16),
      hashAlg: 'sha256',
    })
    expect(other.verdict.ok).toBe(false)

    const ima = collected[0]?.data as { entries: string; entry_count: number }
    expect(ima.entry_count).toBe(3)
    const lines = ima.entries.trimEnd().split('\n')
    expect(lines).toHaveLength(3)
    expect(lines[0]).toMatch(/\/a$/)
  })

  it('limits the IMA increment to entry_count when the verifier asks', async () => {
    const [item] = await collectEvidence(
      [
        {
          evidence_class: 'log',
          evidence_type: 'ima_log',
          chosen_parameters: { starting_offset: 0, entry_count: 2 },
        },
      ],
      source,
    )
    const ima = item?.data as { entries: string; entry_count: number }
    expect(ima.entry_count).toBe(2)
    expect(ima.entries.split('\n').filter(Boolean)).toHaveLength(2)
  })

  it('refuses a bank, a PCR, a scheme or an evidence type it did not offer', async () => {
    const quoteWith = (params: Record<string, unknown>) =>
      collectEvidence(
        [
          {
            evidence_class: 'certification',
            evidence_type: 'tpm_quote',
            chosen_parameters: { challenge: randomBytes(16).toString('base64'), ...params },
          },
        ],
        source,
      )
    await expect(quoteWith({ selected_subjects: { sha1: [0] } })).rejects.toThrow(/bank sha1/)
    await expect(quoteWith({ selected_subjects: { sha256: [99] } })).rejects.toThrow(/PCR 99/)
    await expect(quoteWith({ signature_scheme: 'rsapss' })).rejects.toThrow(/signature_scheme rsapss/)
    await expect(quoteWith({ challenge: '' })).rejects.toThrow(/no challenge/)
    await expect(
      collectEvidence([{ evidence_class: 'log', evidence_type: 'uefi_log' }], source),
    ).rejects.toThrow(/UEFI log/)
    await expect(
      collectEvidence([{ evidence_class: 'certification', evidence_type: 'tee_report' }], source),
    ).rejects.toThrow(/does not offer/)
    await expect(collectEvidence([], source)).rejects.toThrow(/no evidence/)
  })

  it('proves possession: TPM2_Certify of the AK by itself over the challenge, signed by the AK', async () => {
    const challenge = randomBytes(16)
    const { attest, signature } = await lock.run(() =>
      tpm.certify({ objectHandle: source.akHandle, signHandle: source.akHandle, qualifyingData: challenge }),
    )
    const decoded = decodeTpmsAttest(attest)
    expect(decoded.attested.kind).toBe('certify')
    expect(Buffer.from(decoded.extraData).equals(challenge)).toBe(true)
    if (decoded.attested.kind === 'certify')
      expect(Buffer.from(decoded.attested.name).equals(Buffer.from(objectName(source.akPublic)))).toBe(true)
    // TPMT_SIGNATURE: sigAlg RSASSA (0x0014), hash SHA-256 (0x000b), u16 size, signature
    const sig = Buffer.from(signature)
    expect(sig.readUInt16BE(0)).toBe(0x0014)
    expect(sig.readUInt16BE(2)).toBe(0x000b)
    const raw = sig.subarray(6, 6 + sig.readUInt16BE(4))
    expect(verify('sha256', attest, publicAreaToKeyObject(source.akPublic), raw)).toBe(true)
  })
})
