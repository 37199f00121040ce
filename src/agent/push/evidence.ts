/**
 * What the push agent offers and sends (keylime-api.md §4.2, keylime-protocols.md §H steps 4-5): the capabilities
 * (`evidence_supported`: a TPM quote by the AK over the PCRs of the configured bank, the UEFI event log, the IMA
 * list with partial access) and, for what the verifier chose, the evidence itself: the quote over the selected
 * PCRs with the verifier's challenge, the whole UEFI log, and the IMA entries from the offset the verifier asked
 * for, read after the quote so they always cover what PCR 10 was when quoted.
 */
import { readFile } from 'node:fs/promises'
import { KeylimeError } from '../../common/errors.ts'
import { ECC_CURVES, readTpm2bPublic } from '../../crypto/tpm-public.ts'
import { parseEventLog } from '../../evidence/mb/parse.ts'
import { encodePcrBlob } from '../../evidence/quote/pcr-blob.ts'
import type { AgentTpm, HashAlgName, SignAlgName, TpmLock } from '../agent-tpm.ts'
import type { ImaMeasurementList } from '../ima-list.ts'

export class EvidenceRequestError extends KeylimeError {
  constructor(message: string) {
    super('ERR_PUSH_EVIDENCE_REQUEST', message)
  }
}

export interface EvidenceSource {
  tpm: AgentTpm
  lock: TpmLock
  akHandle: number
  /** TPM2B_PUBLIC of the AK. */
  akPublic: Uint8Array
  hashAlg: HashAlgName
  signAlg: SignAlgName
  /** PCR indexes active in the `hashAlg` bank. */
  pcrs: number[]
  ima: ImaMeasurementList
  uefiLogPath: string
  serverIdentifier: string
  uefiEvidenceVersion: string
  /** ISO 8601 boot time of this machine (stable across reads). */
  bootTime: string
}

type Json = Record<string, unknown>

/** `key_algorithm` and `key_size` of the AK, as the capabilities name them. */
export function certificationKeyOf(akPublic: Uint8Array): { key_algorithm: string; key_size: number } {
  const area = readTpm2bPublic(akPublic)
  if (area.parameters.kind === 'rsa') return { key_algorithm: 'rsa', key_size: area.parameters.keyBits }
  if (area.parameters.kind === 'ecc') {
    const curve = ECC_CURVES.get(area.parameters.curveId)
    return { key_algorithm: 'ecc', key_size: (curve?.size ?? 32) * 8 }
  }
  throw new EvidenceRequestError('the AK is neither an RSA nor an ECC key')
}

async function readOptional(path: string): Promise<Buffer | null> {
  try {
    return await readFile(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw err
  }
}

/** Number of events in a UEFI log, or undefined when it does not parse (the field is optional). */
function uefiEntryCount(log: Buffer): number | undefined {
  try {
    return parseEventLog(log).events.length
  } catch {
    return undefined
  }
}

/** The `evidence_supported` list and `system_info` of a capabilities request. */
export async function collectCapabilities(src: EvidenceSource): Promise<{
  evidence_supported: Json[]
  system_info: { boot_time: string }
}> {
  const key = certificationKeyOf(src.akPublic)
  const items: Json[] = [
    {
      evidence_class: 'certification',
      evidence_type: 'tpm_quote',
      capabilities: {
        component_version: '2.0',
        signature_schemes: [src.signAlg],
        hash_algorithms: [src.hashAlg],
        available_subjects: { [src.hashAlg]: src.pcrs },
        certification_keys: [
          {
            key_class: 'asymmetric',
            ...key,
            server_identifier: src.serverIdentifier,
            public: Buffer.from(src.akPublic).toString('base64'),
          },
        ],
      },
    },
  ]
  const uefi = await readOptional(src.uefiLogPath)
  if (uefi !== null) {
    const count = uefiEntryCount(uefi)
    items.push({
      evidence_class: 'log',
      evidence_type: 'uefi_log',
      capabilities: {
        evidence_version: src.uefiEvidenceVersion,
        ...(count !== undefined ? { entry_count: count } : {}),
        supports_partial_access: false,
        appendable: false,
        formats: ['application/octet-stream'],
      },
    })
  }
  const imaEntries = await src.ima.entryCount()
  if (imaEntries !== null) {
    items.push({
      evidence_class: 'log',
      evidence_type: 'ima_log',
      capabilities: {
        entry_count: imaEntries,
        supports_partial_access: true,
        appendable: true,
        formats: ['text/plain'],
      },
    })
  }
  return { evidence_supported: items, system_info: { boot_time: src.bootTime } }
}

function asObject(v: unknown, what: string): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new EvidenceRequestError(`${what} is not an object`)
  return v as Json
}

/** The PCRs the verifier selected from our one bank; refuses anything we did not offer. */
function selectedPcrs(params: Json, src: EvidenceSource): number[] {
  const subjects = params.selected_subjects
  if (subjects === undefined || subjects === null) return src.pcrs
  const banks = asObject(subjects, 'selected_subjects')
  const out = new Set<number>()
  for (const [bank, list] of Object.entries(banks)) {
    if (!Array.isArray(list)) throw new EvidenceRequestError(`selected_subjects.${bank} is not a list`)
    if (list.length === 0) continue
    if (bank !== src.hashAlg)
      throw new EvidenceRequestError(`the verifier selected PCR bank ${bank}, which this agent did not offer`)
    for (const p of list) {
      if (typeof p !== 'number' || !src.pcrs.includes(p))
        throw new EvidenceRequestError(
          `the verifier selected PCR ${String(p)}, which this agent did not offer`,
        )
      out.add(p)
    }
  }
  return [...out].sort((a, b) => a - b)
}

async function quoteEvidence(params: Json, src: EvidenceSource): Promise<Json> {
  const challengeB64 = params.challenge
  if (typeof challengeB64 !== 'string' || challengeB64 === '')
    throw new EvidenceRequestError('the quote request carries no challenge')
  const challenge = Buffer.from(challengeB64, 'base64')
  if (challenge.length === 0 || challenge.length > 64)
    throw new EvidenceRequestError('the quote challenge must decode to 1-64 bytes')
  for (const [field, ours] of [
    ['signature_scheme', src.signAlg],
    ['hash_algorithm', src.hashAlg],
  ] as const) {
    const v = params[field]
    if (v !== undefined && v !== null && v !== ours)
      throw new EvidenceRequestError(`the verifier chose ${field} ${String(v)}; this AK uses ${ours}`)
  }
  const pcrs = selectedPcrs(params, src)
  const q = await src.lock.run(() =>
    src.tpm.quote(src.akHandle, { nonce: challenge, hashAlg: src.hashAlg, pcrs, signAlg: src.signAlg }),
  )
  const blob = encodePcrBlob({ banks: [{ hashAlg: src.hashAlg, values: q.pcrValues }] })
  return {
    message: Buffer.from(q.attest).toString('base64'),
    signature: Buffer.from(q.signature).toString('base64'),
    subject_data: Buffer.from(blob).toString('base64'),
  }
}

/** IMA entries from `starting_offset`, at most `entry_count` of them when the verifier limited it. */
async function imaEvidence(params: Json, src: EvidenceSource): Promise<Json> {
  const start = params.starting_offset ?? 0
  if (typeof start !== 'number' || !Number.isInteger(start) || start < 0)
    throw new EvidenceRequestError('ima_log starting_offset must be a whole number')
  const limit = params.entry_count
  if (limit !== undefined && limit !== null && (typeof limit !== 'number' || limit < 0))
    throw new EvidenceRequestError('ima_log entry_count must be a whole number')
  const slice = await src.ima.read(start)
  // A list that is gone, or now shorter than the offset (a new boot), has nothing from that offset on.
  if (slice === null || slice.entry !== start) return { entries: '', entry_count: 0 }
  let lines = slice.text.split('\n')
  if (lines[lines.length - 1] === '') lines.pop()
  if (typeof limit === 'number') lines = lines.slice(0, limit)
  return { entries: lines.map((l) => `${l}\n`).join(''), entry_count: lines.length }
}

/**
 * The `evidence_collected` list for an `evidence_requested` list, in the same order. The quote is taken first,
 * then the logs, so the IMA list read covers at least the quoted PCR 10.
 */
export async function collectEvidence(requested: unknown, src: EvidenceSource): Promise<Json[]> {
  if (!Array.isArray(requested) || requested.length === 0)
    throw new EvidenceRequestError('the verifier requested no evidence')
  const items = requested.map((r, i) => asObject(r, `evidence_requested[${i}]`))
  const collected = new Map<number, Json>()
  const order = items
    .map((item, i) => ({ item, i }))
    .sort(
      (a, b) =>
        Number(b.item.evidence_class === 'certification') - Number(a.item.evidence_class === 'certification'),
    )
  for (const { item, i } of order) {
    const params =
      item.chosen_parameters === undefined ? {} : asObject(item.chosen_parameters, 'chosen_parameters')
    const kind = `${String(item.evidence_class)}/${String(item.evidence_type)}`
    let data: Json
    switch (kind) {
      case 'certification/tpm_quote':
        data = await quoteEvidence(params, src)
        break
      case 'log/uefi_log': {
        const log = await readOptional(src.uefiLogPath)
        if (log === null) throw new EvidenceRequestError('the verifier asked for the UEFI log; there is none')
        data = { entries: log.toString('base64') }
        break
      }
      case 'log/ima_log':
        data = await imaEvidence(params, src)
        break
      default:
        throw new EvidenceRequestError(`the verifier asked for evidence this agent does not offer: ${kind}`)
    }
    collected.set(i, {
      evidence_class: item.evidence_class,
      evidence_type: item.evidence_type,
      data,
    })
  }
  return items.map((_, i) => collected.get(i) as Json)
}

/** Boot time from `/proc/stat` (`btime`, whole seconds, so it reads the same every time), ISO 8601 without ms. */
export async function readBootTime(
  now: () => number = Date.now,
  uptimeSeconds?: () => number,
): Promise<string> {
  let seconds: number | undefined
  try {
    const stat = await readFile('/proc/stat', 'utf8')
    const m = /^btime\s+(\d+)$/m.exec(stat)
    if (m) seconds = Number(m[1])
  } catch {
    // not Linux: derived from the uptime below
  }
  if (seconds === undefined) {
    const up = uptimeSeconds ? uptimeSeconds() : (await import('node:os')).uptime()
    seconds = Math.floor(now() / 1000 - up)
  }
  return new Date(seconds * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z')
}
