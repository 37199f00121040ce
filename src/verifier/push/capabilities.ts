/**
 * Capability negotiation of `POST /v3/agents/:id/attestations` (keylime-api.md §4.2, keylime-protocols.md §H.4):
 * from what the agent offers, choose only the evidence its policies need: a TPM quote over the required PCRs in the
 * first acceptable bank that has them all, the UEFI log iff a measured-boot policy is enrolled, the IMA log from the
 * verifier's starting offset iff a runtime policy is. Pure; every refusal names the offending field by JSON pointer.
 */
import type { JsonApiErrorItem } from './json-api.ts'
import { invalidField } from './json-api.ts'

export interface EvidenceItemOffer {
  evidence_class?: unknown
  evidence_type?: unknown
  capabilities?: Record<string, unknown>
}

export interface RequestedItem {
  evidence_class: string
  evidence_type: string
  capabilities: Record<string, unknown>
  chosen_parameters: Record<string, unknown>
}

export interface NegotiationInput {
  offered: readonly EvidenceItemOffer[]
  bootTime: string | null
  requiredPcrs: readonly number[]
  acceptedHash: readonly string[]
  acceptedSigning: readonly string[]
  /** The enrolled AK's kind decides the only usable scheme (RSASSA or ECDSA). */
  akKind: 'rsa' | 'ecc'
  needsUefiLog: boolean
  needsImaLog: boolean
  /** The IMA starting offset, given the IMA entry count the agent reported (null: none reported). */
  imaOffset: (entryCount: number | null) => number
  challenge: Buffer
}

export type NegotiationResult =
  | { ok: true; requested: RequestedItem[] }
  | { ok: false; errors: JsonApiErrorItem[] }

const SCHEME_OF_AK = { rsa: 'rsassa', ecc: 'ecdsa' } as const

const strings = (v: unknown): string[] | null =>
  Array.isArray(v) && v.every((x) => typeof x === 'string') ? (v as string[]) : null

export function negotiateEvidence(input: NegotiationInput): NegotiationResult {
  const errors: JsonApiErrorItem[] = []
  const requested: RequestedItem[] = []
  const find = (cls: string, type: string) =>
    input.offered.findIndex((o) => o?.evidence_class === cls && o?.evidence_type === type)

  const q = find('certification', 'tpm_quote')
  if (q < 0) errors.push(invalidField('/evidence_supported', 'a tpm_quote certification is required'))
  else {
    const base = `/evidence_supported/${q}/capabilities`
    const caps = input.offered[q]?.capabilities ?? {}
    if (caps.component_version !== '2.0')
      errors.push(invalidField(`${base}/component_version`, 'component_version must be "2.0"'))
    const schemes = strings(caps.signature_schemes)
    const scheme = SCHEME_OF_AK[input.akKind]
    if (schemes === null) errors.push(invalidField(`${base}/signature_schemes`, 'must be a list of strings'))
    else if (!schemes.includes(scheme) || !input.acceptedSigning.includes(scheme))
      errors.push(
        invalidField(
          `${base}/signature_schemes`,
          `the AK signs with ${scheme}, which must be offered and accepted`,
        ),
      )
    const hashes = strings(caps.hash_algorithms)
    if (hashes === null) errors.push(invalidField(`${base}/hash_algorithms`, 'must be a list of strings'))
    const subjects = caps.available_subjects
    let bank: string | undefined
    if (typeof subjects !== 'object' || subjects === null || Array.isArray(subjects))
      errors.push(invalidField(`${base}/available_subjects`, 'must map each PCR bank to its PCR numbers'))
    else if (hashes !== null) {
      const banks = subjects as Record<string, unknown>
      bank = input.acceptedHash.find((h) => {
        const pcrs = banks[h]
        return hashes.includes(h) && Array.isArray(pcrs) && input.requiredPcrs.every((p) => pcrs.includes(p))
      })
      if (bank === undefined)
        errors.push(
          invalidField(
            `${base}/available_subjects`,
            `no accepted bank (${input.acceptedHash.join(', ')}) offers PCRs ${input.requiredPcrs.join(', ')}`,
          ),
        )
    }
    const keys = caps.certification_keys
    const key = Array.isArray(keys)
      ? (keys as Record<string, unknown>[]).find(
          (k) =>
            k?.key_class === 'asymmetric' && k.server_identifier === 'ak' && k.key_algorithm === input.akKind,
        )
      : undefined
    if (!key)
      errors.push(
        invalidField(
          `${base}/certification_keys`,
          `needs an asymmetric ${input.akKind} key with server_identifier "ak"`,
        ),
      )
    if (errors.length === 0 && bank !== undefined && key)
      requested.push({
        evidence_class: 'certification',
        evidence_type: 'tpm_quote',
        capabilities: caps,
        chosen_parameters: {
          challenge: input.challenge.toString('base64'),
          signature_scheme: scheme,
          hash_algorithm: bank,
          selected_subjects: { [bank]: [...input.requiredPcrs] },
          certification_key: key,
        },
      })
  }

  if (input.needsUefiLog) {
    const u = find('log', 'uefi_log')
    if (u < 0)
      errors.push(invalidField('/evidence_supported', 'a uefi_log is required by the measured-boot policy'))
    else {
      const caps = input.offered[u]?.capabilities ?? {}
      const formats = strings(caps.formats)
      if (formats !== null && !formats.includes('application/octet-stream'))
        errors.push(
          invalidField(`/evidence_supported/${u}/capabilities/formats`, 'needs application/octet-stream'),
        )
      else
        requested.push({
          evidence_class: 'log',
          evidence_type: 'uefi_log',
          capabilities: caps,
          chosen_parameters: { format: 'application/octet-stream' },
        })
    }
  }

  if (input.needsImaLog) {
    const i = find('log', 'ima_log')
    if (i < 0)
      errors.push(invalidField('/evidence_supported', 'an ima_log is required by the runtime policy'))
    else {
      const caps = input.offered[i]?.capabilities ?? {}
      const count = caps.entry_count
      const formats = strings(caps.formats)
      if (count !== undefined && (typeof count !== 'number' || !Number.isSafeInteger(count) || count < 0))
        errors.push(
          invalidField(`/evidence_supported/${i}/capabilities/entry_count`, 'must be a whole number'),
        )
      else if (formats !== null && !formats.includes('text/plain'))
        errors.push(invalidField(`/evidence_supported/${i}/capabilities/formats`, 'needs text/plain'))
      else
        requested.push({
          evidence_class: 'log',
          evidence_type: 'ima_log',
          capabilities: caps,
          chosen_parameters: {
            starting_offset: input.imaOffset(typeof count === 'number' ? count : null),
            format: 'text/plain',
          },
        })
    }
    if (input.bootTime === null)
      errors.push(
        invalidField('/system_info/boot_time', 'boot_time is required when a runtime policy is enrolled'),
      )
  }
  return errors.length > 0 ? { ok: false, errors } : { ok: true, requested }
}
