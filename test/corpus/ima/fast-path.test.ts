import { describe, expect, it } from 'vitest'
import { ImaNgFastPath } from '../../../src/evidence/ima/fast-path.ts'
import {
  compileRuntimePolicy,
  digestWith,
  emptyRuntimePolicy,
  type ImaEntry,
  ImaParseError,
  lookupDigest,
  type PcrBank,
  parseImaLine,
  parseRuntimePolicy,
} from '../../../src/evidence/ima/index.ts'
import { fixture } from '../fixture.ts'

/** What the general path decides: the measurement when the entry passes, null when it fails or does not parse. */
function generalVerdict(
  line: string,
  bank: PcrBank,
  columnAlg: PcrBank,
  policy: ReturnType<typeof compileRuntimePolicy>,
): Buffer | null {
  let entry: ImaEntry
  try {
    entry = parseImaLine(line)
  } catch (err) {
    if (err instanceof ImaParseError) return null
    throw err
  }
  if (entry.pcr !== 10 || entry.violation) return null
  // signed ima-sig entries are the general path's business (signature checks); unsigned ones check like ima-ng
  const unsignedImaSig = entry.templateName === 'ima-sig' && entry.signature === null
  if (entry.templateName !== 'ima-ng' && !unsignedImaSig) return null
  if (!digestWith(columnAlg, entry.templateData).equals(entry.templateHash)) return null
  if (
    !policy.excludes?.test(entry.name) &&
    lookupDigest(policy.digests, entry.name, entry.digestHex) !== 'ok'
  )
    return null
  return digestWith(bank, entry.templateData)
}

describe('ImaNgFastPath on the corpus', () => {
  it('accepts every passing ima-ng entry of the real lists and refuses the rest', () => {
    for (const file of ['ima/keylime-tests-pc-ima-log.ascii', 'ima/keylime-crp-ima-log-sha256.ascii']) {
      const lines = fixture(file).toString('utf8').split('\n').filter(Boolean)
      const policy = emptyRuntimePolicy()
      for (const line of lines) {
        const e = parseImaLine(line)
        if (e.templateName === 'ima-ng') policy.digests[e.name] = [e.digestHex]
      }
      const compiled = compileRuntimePolicy(parseRuntimePolicy(JSON.stringify(policy)))
      const fast = new ImaNgFastPath('sha256', 'sha1', compiled)
      let accepted = 0
      let passing = 0
      for (const line of lines) {
        const out = Buffer.alloc(64)
        const bytes = Buffer.from(line)
        const ok = fast.measureInto(bytes, 0, bytes.length, out, 32)
        const expected = generalVerdict(line, 'sha256', 'sha1', compiled)
        if (expected !== null && parseImaLine(line).name !== 'boot_aggregate') passing++
        if (ok) {
          accepted++
          expect(out.subarray(32).equals(expected ?? Buffer.alloc(0))).toBe(true)
        } else if (expected !== null) {
          // Only boot_aggregate is left to the general path among entries that pass.
          expect(parseImaLine(line).name).toBe('boot_aggregate')
        }
      }
      expect(passing, file).toBeGreaterThan(0)
      expect(accepted, file).toBe(passing)
    }
  })
})
