/**
 * The ima-ng fast path must never accept an entry that the general path (parse + template-hash check + policy) would
 * fail, and when it accepts, it must produce the same measurement. Checked on generated and mutated lines for every
 * bank / log-hash combination (the corpus run, `npm run test:corpus`, adds the real lists).
 */
import { createHash } from 'node:crypto'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { ImaNgFastPath } from '../../../src/evidence/ima/fast-path.ts'
import {
  BANK_SIZE,
  compileRuntimePolicy,
  digestWith,
  emptyRuntimePolicy,
  formatImaLine,
  type ImaEntry,
  ImaParseError,
  lookupDigest,
  type PcrBank,
  parseImaLine,
  parseRuntimePolicy,
} from '../../../src/evidence/ima/index.ts'

const BANKS: PcrBank[] = ['sha1', 'sha256', 'sha384', 'sha512']

function sha(alg: string, s: string): Buffer {
  return createHash(alg).update(s).digest()
}

type Template = 'ima-ng' | 'ima-sig unsigned' | 'ima-sig signed'

/** A line for `name` with its template-hash column in `logAlg` (a signed ima-sig gets a stand-in signature). */
function entryLine(
  template: Template,
  name: string,
  fileAlg: string,
  content: string,
  logAlg: PcrBank,
): string {
  const digest = sha(fileAlg, content).toString('hex')
  const text =
    template === 'ima-ng'
      ? `ima-ng ${fileAlg}:${digest} ${name}`
      : `ima-sig ${fileAlg}:${digest} ${name} ${template === 'ima-sig signed' ? `030204aabbccdd0002${'ee'.repeat(2)}` : ''}`
  try {
    const draft = parseImaLine(`10 ${'11'.repeat(20)} ${text}`)
    return formatImaLine({ ...draft, templateHash: digestWith(logAlg, draft.templateData) })
  } catch (err) {
    // e.g. an ima-sig name with spaces: not a valid line, which both paths must refuse
    if (err instanceof ImaParseError) return `10 ${'11'.repeat(20)} ${text}`
    throw err
  }
}

/**
 * What the general path decides: the measurement when the entry passes, null when it fails or does not parse.
 * `checkColumn: false`: as for a replay anchored to a quote, the logged template hash need not equal the computed
 * one when its algorithm is not the bank's, but it must still have that algorithm's width and must not be zeros.
 */
function generalVerdict(
  line: string,
  bank: PcrBank,
  columnAlg: PcrBank,
  policy: ReturnType<typeof compileRuntimePolicy>,
  checkColumn = true,
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
  if (entry.templateHash.length !== BANK_SIZE[columnAlg]) return null
  if (
    (checkColumn || columnAlg === bank) &&
    !digestWith(columnAlg, entry.templateData).equals(entry.templateHash)
  )
    return null
  if (
    !policy.excludes?.test(entry.name) &&
    lookupDigest(policy.digests, entry.name, entry.digestHex) !== 'ok'
  )
    return null
  return digestWith(bank, entry.templateData)
}

const names = ['/usr/bin/bash', '/usr/lib/libc.so.6', '/tmp/x y z', '/opt/ünïcødé/файл', '/var/log/app.log']
const contents = ['a', 'b', 'c']

function policyFor(logAlg: PcrBank) {
  const policy = emptyRuntimePolicy()
  for (const name of names.slice(0, 4)) policy.digests[name] = [sha('sha256', 'a').toString('hex')]
  policy.digests['/usr/bin/bash']?.push(sha('sha1', 'b').toString('hex'))
  policy.excludes = ['/var/log/']
  policy.ima.log_hash_alg = logAlg as typeof policy.ima.log_hash_alg
  return compileRuntimePolicy(parseRuntimePolicy(JSON.stringify(policy)))
}

const mutation = fc.tuple(
  fc.nat(),
  fc.constantFrom('replace', 'insert', 'delete', 'none'),
  fc.constantFrom(' ', ':', '0', 'A', 'f', 'g', '\0', 'é', '1'),
)

function mutate(line: string, [pos, op, ch]: [number, string, string]): string {
  const at = pos % (line.length + 1)
  if (op === 'insert') return line.slice(0, at) + ch + line.slice(at)
  if (op === 'delete') return line.slice(0, at) + line.slice(at + 1)
  if (op === 'replace') return line.slice(0, at) + ch + line.slice(at + 1)
  return line
}

describe('ImaNgFastPath', () => {
  for (const [bank, logAlg, checkColumn] of BANKS.flatMap((bank) =>
    (['sha1', 'sha256'] as PcrBank[]).flatMap((logAlg) =>
      [true, false].map((c) => [bank, logAlg, c] as const),
    ),
  )) {
    it(`agrees with the general path (${bank} bank, ${logAlg} template-hash column${checkColumn ? '' : ', column not compared'})`, () => {
      const policy = policyFor(logAlg)
      const fast = new ImaNgFastPath(bank, logAlg, policy, { checkColumn })
      const size = BANK_SIZE[bank]
      let accepted = 0
      let acceptedOtherColumn = 0
      const acceptedByTemplate = new Map<Template, number>()
      fc.assert(
        fc.property(
          fc.constantFrom<Template>('ima-ng', 'ima-sig unsigned', 'ima-sig signed'),
          fc.constantFrom(...names),
          fc.constantFrom('sha256', 'sha1', 'sha512', 'md5'),
          fc.constantFrom(...contents),
          fc.array(mutation, { maxLength: 2 }),
          fc.constantFrom('', '10 ab', 'x:y z'),
          fc.constantFrom('', ' ', ' :ff', '10 00 ima-ng sha256:00 /x'),
          fc.constantFrom('as computed', 'as computed', 'as computed', 'as computed', 'other', 'zeros'),
          (template, name, fileAlg, content, edits, before, after, column) => {
            let line = entryLine(template, name, fileAlg, content, logAlg)
            const width = BANK_SIZE[logAlg] * 2
            if (column !== 'as computed' && line.startsWith('10 ') && line[3 + width] === ' ')
              line = `10 ${(column === 'zeros' ? '0' : '7').repeat(width)}${line.slice(3 + width)}`
            for (const e of edits) line = mutate(line, e)
            const out = Buffer.alloc(size * 2, 0x5a)
            // read in place between other lines, as the verifier reads a list (its UTF-8 bytes)
            const list = Buffer.from(`${before}\n${line}\n${after}`)
            const start = Buffer.byteLength(before) + 1
            const ok = fast.measureInto(list, start, start + Buffer.byteLength(line), out, size)
            const expected = generalVerdict(line, bank, logAlg, policy, checkColumn)
            if (ok) {
              accepted++
              if (column === 'other') acceptedOtherColumn++
              acceptedByTemplate.set(template, (acceptedByTemplate.get(template) ?? 0) + 1)
              expect(expected, line).not.toBeNull()
              expect(out.subarray(size).toString('hex')).toBe(expected?.toString('hex'))
            } else {
              expect(out.subarray(size).every((b) => b === 0x5a)).toBe(true)
            }
          },
        ),
        { numRuns: 1800 },
      )
      // a column that is not the hash of the data passes only where it is not compared
      if (checkColumn || bank === logAlg) expect(acceptedOtherColumn).toBe(0)
      else expect(acceptedOtherColumn).toBeGreaterThan(5)
      // The fast path must actually take the common case, or it is pointless.
      expect(accepted).toBeGreaterThan(50)
      expect(acceptedByTemplate.get('ima-sig unsigned') ?? 0).toBeGreaterThan(10)
      expect(acceptedByTemplate.get('ima-sig signed') ?? 0).toBe(0)
    })
  }
})
