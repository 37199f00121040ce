import { describe, expect, it } from 'vitest'
import { formatImaLine, parseImaList, replayImaEntries } from '../../../src/evidence/ima/index.ts'
import { asciiImaList, binaryImaList, generatedImaEntries } from '../../helpers/ima-lists.ts'

describe('binary IMA lists (generated)', () => {
  const entries = generatedImaEntries()
  const ascii = asciiImaList(entries)
  const binary = binaryImaList(entries)

  it('decode to the same entries as their ASCII rendering and replay to the same PCR 10', () => {
    const fromBinary = parseImaList(binary)
    const fromAscii = parseImaList(ascii)
    expect(fromBinary.format).toBe('binary')
    expect(fromBinary.remainder).toBeNull()
    expect(fromBinary.entries.map(formatImaLine)).toEqual(ascii.split('\n').filter(Boolean))
    expect(fromBinary.entries.map((e) => e.templateData.toString('hex'))).toEqual(
      fromAscii.entries.map((e) => e.templateData.toString('hex')),
    )
    for (const bank of ['sha1', 'sha256'] as const) {
      expect(replayImaEntries(fromBinary.entries, bank)).toEqual(replayImaEntries(fromAscii.entries, bank))
    }
  })

  it('keep the complete entries of a truncated list and report the rest', () => {
    const cut = binary.subarray(0, binary.length - 10)
    const parsed = parseImaList(cut)
    expect(parsed.entries).toHaveLength(entries.length - 1)
    expect(parsed.remainder?.reason).toBe('template data overruns the list')
  })
})
