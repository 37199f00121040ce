/** The IMA emulator's line formatter: team IMA's `formatImaNgEntry`, restricted to the banks a TPM extends. */
import { formatImaNgEntry } from '../evidence/ima/entry.ts'
import type { HashAlgName } from './agent-tpm.ts'
import type { ImaNgFormatter } from './ima-emulator.ts'

export const imaNgFormatter: ImaNgFormatter = (path, fileDigest, hashAlg) => {
  const f = formatImaNgEntry(path, fileDigest, hashAlg)
  const banks: HashAlgName[] = ['sha1', 'sha256', 'sha384', 'sha512']
  const pcrDigests: Partial<Record<HashAlgName, Uint8Array>> = {}
  for (const b of banks) pcrDigests[b] = f.templateDigests[b]
  return { line: `${f.line}\n`, pcrDigests }
}
