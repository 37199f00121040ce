import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  ImaParseError,
  parseBinaryImaList,
  parseImaLine,
  parseRuntimePolicy,
  RuntimePolicyError,
  verifyImaIncrement,
} from '../../../src/evidence/ima/index.ts'
import { compilePythonRegex, PythonRegexError } from '../../../src/evidence/python-regex.ts'
import { fixture } from '../../helpers/fixture.ts'

const corpusLines = [
  'ima/keylime-testsuite-signatures.ascii',
  'ima/keylime-tests-pc-ima-log.ascii',
  'ima/keylime-tests-static-test2-arm2.ascii',
  'ima/tpm2-tss-sml-ima-sha1.bin.ascii',
].flatMap((f) => fixture(f).toString('utf8').split('\n').filter(Boolean))

/** A corpus line with a few characters replaced, inserted or deleted. */
const mutatedLine = fc
  .tuple(
    fc.constantFrom(...corpusLines),
    fc.array(
      fc.tuple(
        fc.nat(),
        fc.constantFrom('replace', 'insert', 'delete'),
        fc.constantFrom(' ', ':', '0', 'g', '\0', 'é', 'ima-ng', '10'),
      ),
      { maxLength: 4 },
    ),
  )
  .map(([line, edits]) => {
    let s = line
    for (const [pos, op, ch] of edits) {
      const at = pos % (s.length + 1)
      s =
        op === 'insert'
          ? s.slice(0, at) + ch + s.slice(at)
          : op === 'delete'
            ? s.slice(0, at) + s.slice(at + 1)
            : s.slice(0, at) + ch + s.slice(at + 1)
    }
    return s
  })

describe('IMA parser fuzzing', () => {
  it('parseImaLine only ever throws ImaParseError (random and mutated lines)', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 300 }), mutatedLine), (line) => {
        try {
          parseImaLine(line)
        } catch (err) {
          expect(err).toBeInstanceOf(ImaParseError)
        }
      }),
      { numRuns: 3000 },
    )
  })

  it('verifyImaIncrement turns any text into a verdict (never throws)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.string({ maxLength: 120 }), mutatedLine), { maxLength: 20 }),
        (lines) => {
          const r = verifyImaIncrement({
            listText: lines.join('\n'),
            firstEntry: 0,
            state: null,
            quotedPcr10: { hashAlg: 'sha256', value: 'aa'.repeat(32) },
            policy: null,
          })
          expect(typeof r.verdict.ok).toBe('boolean')
        },
      ),
      { numRuns: 500 },
    )
  })

  it('parseBinaryImaList never throws on random or truncated/mutated binary lists', () => {
    const bin = fixture('ima/tpm2-tss-sml-ima-ng-sha1.bin')
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 600 }).map((b) => Buffer.concat([Buffer.from([10, 0, 0, 0]), b])),
          fc
            .tuple(fc.nat(bin.length), fc.nat(bin.length), fc.integer({ min: 0, max: 255 }))
            .map(([cut, pos, v]) => {
              const copy = Buffer.from(bin.subarray(0, Math.max(cut, 4)))
              if (pos < copy.length) copy[pos] = v
              return copy
            }),
        ),
        (bytes) => {
          const r = parseBinaryImaList(bytes)
          expect(Array.isArray(r.entries)).toBe(true)
        },
      ),
      { numRuns: 2000 },
    )
  })

  it('parseRuntimePolicy only throws RuntimePolicyError on arbitrary JSON', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 4 }), (json) => {
        try {
          parseRuntimePolicy(json, { strict: false })
        } catch (err) {
          expect(err).toBeInstanceOf(RuntimePolicyError)
        }
      }),
      { numRuns: 1000 },
    )
  })

  it('compilePythonRegex only throws PythonRegexError', () => {
    fc.assert(
      fc.property(
        fc
          .array(
            fc.constantFrom(
              '(',
              ')',
              '?',
              'P',
              '<',
              '>',
              '=',
              '[',
              ']',
              '\\',
              'A',
              'Z',
              '*',
              '+',
              '{',
              '}',
              'a',
              '1',
              '^',
              '$',
              '#',
              ':',
            ),
            { maxLength: 20 },
          )
          .map((a) => a.join('')),
        (p) => {
          try {
            compilePythonRegex([p], 'match').test('aaaa')
          } catch (err) {
            expect(err).toBeInstanceOf(PythonRegexError)
          }
        },
      ),
      { numRuns: 3000 },
    )
  })
})
