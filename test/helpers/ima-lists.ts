/**
 * IMA measurement lists made here (ima-ng and ima-sig with real RSA signatures, boot_aggregate), in the kernel's
 * ASCII form and in its binary form (`binary_runtime_measurements`), for tests that must not need the real corpus.
 */
import { createHash, generateKeyPairSync } from 'node:crypto'
import { formatImaSigEntry, imaNgEntryFor, imaSignatureV2 } from '../../src/devtools/ima-writer.ts'
import { type FormattedImaEntry, formatImaNgEntry } from '../../src/evidence/ima/index.ts'

const signingKey = generateKeyPairSync('rsa', { modulusLength: 2048 })

/** Public key (PEM) that verifies the ima-sig entries of `generatedImaEntries`. */
export const IMA_SIGNING_PUBLIC_PEM = signingKey.publicKey.export({ type: 'spki', format: 'pem' }).toString()

/** A boot_aggregate, `count` ima-ng entries and a few signed ima-sig entries, in kernel order. */
export function generatedImaEntries(count = 20): FormattedImaEntry[] {
  const entries: FormattedImaEntry[] = [
    formatImaNgEntry('boot_aggregate', createHash('sha256').update('boot').digest(), 'sha256'),
  ]
  for (let i = 0; i < count; i++) entries.push(imaNgEntryFor(`/usr/bin/tool-${i} with space`, `content ${i}`))
  for (let i = 0; i < 3; i++) {
    const digest = createHash('sha256').update(`signed ${i}`).digest()
    entries.push(
      formatImaSigEntry(`/usr/lib/signed-${i}.so`, digest, imaSignatureV2(signingKey.privateKey, digest)),
    )
  }
  return entries
}

export function asciiImaList(entries: readonly FormattedImaEntry[]): string {
  return entries.map((e) => `${e.line}\n`).join('')
}

/**
 * The binary list the kernel exports: per entry PCR (u32 LE), SHA-1 template hash, template name length (u32 LE) and
 * name, template data length (u32 LE) and data.
 */
export function binaryImaList(entries: readonly FormattedImaEntry[]): Buffer {
  const parts: Buffer[] = []
  for (const e of entries) {
    const name = Buffer.from(e.line.split(' ')[2] as string, 'latin1')
    const head = Buffer.alloc(4)
    head.writeUInt32LE(10)
    const nameLen = Buffer.alloc(4)
    nameLen.writeUInt32LE(name.length)
    const dataLen = Buffer.alloc(4)
    dataLen.writeUInt32LE(e.templateData.length)
    parts.push(head, e.templateDigests.sha1, nameLen, name, dataLen, e.templateData)
  }
  return Buffer.concat(parts)
}
