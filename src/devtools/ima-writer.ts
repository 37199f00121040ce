/**
 * Test and development helper that plays the kernel's part of IMA next to a running agent: it builds ima-ng and
 * ima-sig entries (with real IMA v2 file signatures from node:crypto), appends them to the agent's list file and
 * extends PCR 10 of the agent's swtpm with their template digests. Lines are written before PCR 10 is extended (as
 * the kernel does) and in bursts, so a quote taken meanwhile sees a list that is at most one burst ahead of PCR 10.
 */
import { createHash, constants as cryptoConstants, type KeyObject, privateEncrypt } from 'node:crypto'
import { appendFileSync } from 'node:fs'
import {
  computeKeyId,
  digestWith,
  type FormattedImaEntry,
  formatImaLine,
  formatImaNgEntry,
  IMA_XATTR_DIGSIG,
  KERNEL_HASH_IDS,
  type PcrBank,
  parseImaLine,
} from '../evidence/ima/index.ts'
import { pcrExtend, pcrRead } from '../tpm/keylime-client.ts'
import { Tpm } from '../tpm/tpm.ts'

const IMA_PCR = 10
/** The PCR banks swtpm_setup activates (SHA-1 and SHA-256); extending other banks would be refused. */
const EXTEND_BANKS = ['sha1', 'sha256'] as const
/** DER DigestInfo prefix of SHA-256 for RSA PKCS#1 v1.5 signatures over an existing digest. */
const SHA256_DIGEST_INFO = Buffer.from('3031300d060960864801650304020105000420', 'hex')

/**
 * `security.ima` signature v2 (type 3 = digital signature): `type ‖ version 2 ‖ hash id ‖ keyid (u32 BE) ‖ size (u16
 * BE) ‖ signature`, where the signature is RSA PKCS#1 v1.5 over the file's SHA-256 digest.
 */
export function imaSignatureV2(privateKey: KeyObject, fileDigest: Uint8Array): Buffer {
  if (privateKey.asymmetricKeyType !== 'rsa') throw new Error('imaSignatureV2 signs with RSA keys only')
  if (fileDigest.length !== 32) throw new Error('imaSignatureV2 expects a SHA-256 file digest')
  const signature = privateEncrypt(
    { key: privateKey, padding: cryptoConstants.RSA_PKCS1_PADDING },
    Buffer.concat([SHA256_DIGEST_INFO, fileDigest]),
  )
  return imaSignatureField(computeKeyId(privateKey), signature)
}

/** The `security.ima` v2 field around an existing signature over a SHA-256 file digest (RSA or DER ECDSA). */
export function imaSignatureField(keyId: number, signature: Uint8Array): Buffer {
  const header = Buffer.alloc(9)
  header[0] = IMA_XATTR_DIGSIG
  header[1] = 2
  header[2] = KERNEL_HASH_IDS.indexOf('sha256')
  header.writeUInt32BE(keyId, 3)
  header.writeUInt16BE(signature.length, 7)
  return Buffer.concat([header, signature])
}

/** An ima-sig entry for `path` with file digest `fileDigest` (sha256) and the `sig` field `signature`. */
export function formatImaSigEntry(
  path: string,
  fileDigest: Uint8Array,
  signature: Uint8Array,
): FormattedImaEntry {
  // Parse a draft line to get the template data exactly as the kernel packs it, then fill in the real hash.
  const draft = parseImaLine(
    `10 ${'f'.repeat(40)} ima-sig sha256:${Buffer.from(fileDigest).toString('hex')} ${path} ${Buffer.from(signature).toString('hex')}`,
  )
  const templateDigests = {} as Record<PcrBank, Buffer>
  for (const bank of ['sha1', 'sha256', 'sha384', 'sha512', 'sm3_256'] as const)
    templateDigests[bank] = digestWith(bank, draft.templateData)
  const line = formatImaLine({ ...draft, templateHash: templateDigests.sha1 })
  return { line, templateData: draft.templateData, templateDigests }
}

/** An ima-ng entry for `path` whose file digest is SHA-256 of `content`. */
export function imaNgEntryFor(path: string, content: string | Uint8Array): FormattedImaEntry {
  return formatImaNgEntry(path, createHash('sha256').update(content).digest(), 'sha256')
}

/** The `boot_aggregate` entry recent kernels log first: SHA-256 over PCRs 0-9 of the SHA-256 bank. */
export async function bootAggregateEntry(tpmTransport: string): Promise<FormattedImaEntry> {
  const tpm = await Tpm.open(tpmTransport)
  try {
    const pcrs = await pcrRead(tpm, 'sha256', [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    const h = createHash('sha256')
    for (let i = 0; i <= 9; i++) {
      const v = pcrs.get(i)
      if (!v) throw new Error(`PCR ${i} missing from the sha256 bank`)
      h.update(v)
    }
    return formatImaNgEntry('boot_aggregate', h.digest(), 'sha256')
  } finally {
    await tpm.close()
  }
}

/**
 * Appends `entries` to the list at `listPath` and extends PCR 10 of the TPM at `tpmTransport`, `burst` entries at a
 * time (lines first, then their extends). Returns the number of entries written.
 */
export async function appendImaEntries(
  listPath: string,
  tpmTransport: string,
  entries: readonly FormattedImaEntry[],
  burst = 100,
): Promise<number> {
  const tpm = await Tpm.open(tpmTransport)
  try {
    for (let i = 0; i < entries.length; i += burst) {
      const chunk = entries.slice(i, i + burst)
      appendFileSync(listPath, chunk.map((e) => `${e.line}\n`).join(''))
      for (const e of chunk) {
        const digests: Partial<Record<(typeof EXTEND_BANKS)[number], Uint8Array>> = {}
        for (const bank of EXTEND_BANKS) digests[bank] = e.templateDigests[bank]
        await pcrExtend(tpm, IMA_PCR, digests)
      }
    }
  } finally {
    await tpm.close()
  }
  return entries.length
}
