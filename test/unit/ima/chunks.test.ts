/**
 * A long list checked with helper threads' chunks (`chunks.ts`) must give exactly the one-thread result: the same
 * verdict, events, state and running PCR 10, whether helpers took every chunk, some of them or none, and whatever
 * lines (refused, broken, empty, violations, signed) fall in a helper's chunk.
 */
import { createHash } from 'node:crypto'
import { Worker } from 'node:worker_threads'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  abandonImaChunks,
  compileRuntimePolicy,
  digestWith,
  emptyRuntimePolicy,
  formatImaNgEntry,
  helpWithImaChunks,
  ImaIncrementVerification,
  type PcrBank,
  parseImaLine,
  parseRuntimePolicy,
  planImaChunks,
  replayImaEntries,
  sharedListBytes,
  verifyImaIncrement,
} from '../../../src/evidence/ima/index.ts'

const sha256 = (data: string) => createHash('sha256').update(data).digest()

// some names beyond ASCII: the list is read as UTF-8 bytes, so their lines are longer in bytes than in characters
const paths = Array.from({ length: 400 }, (_, i) =>
  i % 40 === 0 ? `/opt/ünïcødé/файл-${i}` : `/usr/lib/chunked/file-${i}.so`,
)
const good = paths.map((p) => formatImaNgEntry(p, sha256(p), 'sha256').line)
const policyJson = emptyRuntimePolicy()
for (const p of paths) policyJson.digests[p] = [sha256(p).toString('hex')]
policyJson.excludes = ['/tmp/']
const policy = compileRuntimePolicy(parseRuntimePolicy(JSON.stringify(policyJson)))

/** Lines the fast path refuses, each for another reason. */
const odd = [
  formatImaNgEntry('/usr/bin/not-in-policy', sha256('x'), 'sha256').line,
  formatImaNgEntry('/tmp/excluded', sha256('y'), 'sha256').line,
  formatImaNgEntry('/opt/ünïcødé/not-in-policy', sha256('z'), 'sha256').line,
  `10 ${'0'.repeat(40)} ima-ng sha256:${'0'.repeat(64)} /violation`,
  'a broken line',
  '',
  good[3]?.replace(/ima-ng sha256:(.)/, 'ima-ng sha256:f') ?? '',
  `10 ${digestWith('sha1', parseImaLine(`10 ${'1'.repeat(40)} ima-ng sha256:${'a'.repeat(64)} boot_aggregate`).templateData).toString('hex')} ima-ng sha256:${'a'.repeat(64)} boot_aggregate`,
]

function pcrAfter(lines: string[], bank: PcrBank): string {
  const entries = lines.flatMap((l) => {
    try {
      return [parseImaLine(l)]
    } catch {
      return []
    }
  })
  return replayImaEntries(entries, bank).toString('hex')
}

describe('IMA lists checked in chunks', () => {
  it('gives the one-thread result whatever the helpers did', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(good.length - 1), fc.option(fc.nat(odd.length - 1), { freq: 8 })), {
          minLength: 50,
          maxLength: 400,
        }),
        fc.constantFrom<PcrBank>('sha256', 'sha1'),
        fc.nat(400),
        fc.integer({ min: 200, max: 3000 }),
        fc.boolean(),
        fc.integer({ min: 1, max: 500 }),
        (picks, bank, quoteAt, chunkChars, helpFirst, slice) => {
          const lines = picks.map(([g, o]) => (o === null ? (good[g] as string) : (odd[o] as string)))
          const listText = `${lines.join('\n')}\n`
          const input = {
            listText,
            firstEntry: 0,
            state: null,
            quotedPcr10: {
              hashAlg: bank,
              value: pcrAfter(lines.slice(0, quoteAt % (lines.length + 1)), bank),
            },
            policy,
          }
          const alone = verifyImaIncrement(input)
          const list = sharedListBytes(listText)
          const plan = planImaChunks(list, bank, 'sha1', chunkChars)
          if (plan === null) return
          const verification = new ImaIncrementVerification({ ...input, listText: list, chunks: plan })
          if (helpFirst) helpWithImaChunks(plan, policy)
          else {
            // the verifying thread gets ahead first: the helper takes only the chunks after it
            verification.step(Math.floor(lines.length / 3))
            helpWithImaChunks(plan, policy)
          }
          // in slices of any size, as the event loop would run it
          while (!verification.step(slice)) {}
          expect(verification.finish()).toEqual(alone)
        },
      ),
      { numRuns: 150 },
    )
  })

  it('lets a helper take every chunk but the first, and the verification use or ignore its results', () => {
    const lines = Array.from({ length: 2000 }, (_, i) => good[i % good.length] as string)
    const listText = `${lines.join('\n')}\n`
    const list = sharedListBytes(listText)
    const plan = planImaChunks(list, 'sha256', 'sha1', 10_000)
    expect(plan).not.toBeNull()
    if (plan === null) return
    expect(plan.starts.length).toBeGreaterThan(10)
    for (const start of plan.starts.slice(1)) expect(list[start - 1]).toBe(10)
    const verification = new ImaIncrementVerification({
      listText: list,
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: 'sha256', value: pcrAfter(lines, 'sha256') },
      policy,
    })
    // not handed the plan: a plan is only an offer, the verification works without it
    expect(helpWithImaChunks(plan, policy)).toBe(plan.starts.length - 1)
    expect(helpWithImaChunks(plan, policy)).toBe(0)
    expect(verification.finish().verdict).toEqual({ ok: true })
    const helped = new ImaIncrementVerification({
      listText: list,
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: 'sha256', value: pcrAfter(lines, 'sha256') },
      policy,
      chunks: plan,
    })
    expect(helped.finish().verdict).toEqual({ ok: true })
  })

  it('checks the chunks nobody took while a helper is still on the next one, instead of waiting', async () => {
    const lines = Array.from({ length: 2000 }, (_, i) => good[(i * 7) % good.length] as string)
    const listText = `${lines.join('\n')}\n`
    const list = sharedListBytes(listText)
    const plan = planImaChunks(list, 'sha256', 'sha1', 10_000)
    if (plan === null) throw new Error('no plan')
    const chunks = plan.starts.length
    expect(chunks).toBeGreaterThan(10)
    const header = new Int32Array(plan.shared)
    const state = (k: number) => 1 + 3 * k
    // a helper on another thread has taken chunk 2 (the cursor moved past it) and is slow to finish it
    const helper = new Worker(
      `const { workerData: { plan } } = require('node:worker_threads')
       const header = new Int32Array(plan.shared)
       Atomics.store(header, 0, 3)
       Atomics.store(header, ${1 + 3 * 2}, 1)
       Atomics.wait(header, ${1 + 3 * 2}, 1, 300)
       // then it gives the chunk up, as the pool does for a helper that died
       Atomics.store(header, ${1 + 3 * 2}, 4)
       Atomics.notify(header, ${1 + 3 * 2})`,
      { eval: true, workerData: { plan } },
    )
    while (Atomics.load(header, state(2)) !== 1) await new Promise((r) => setTimeout(r, 5))
    const quotedPcr10 = { hashAlg: 'sha256' as const, value: pcrAfter(lines, 'sha256') }
    const input = { listText: list, firstEntry: 0, state: null, quotedPcr10, policy }
    const chunked = verifyImaIncrement({ ...input, chunks: plan })
    await helper.terminate()
    expect(chunked).toEqual(verifyImaIncrement({ ...input, listText }))
    expect(chunked.verdict).toEqual({ ok: true })
    // waiting for chunk 2, the verifying thread checked every later chunk as a helper (done, lines counted)
    for (let k = 3; k < chunks; k++) {
      expect(Atomics.load(header, state(k))).toBe(3)
      expect(Atomics.load(header, 3 + 3 * k)).toBeGreaterThan(0)
    }
    expect(Atomics.load(header, state(2))).toBe(4)
  })

  it('checks a chunk itself when its helper died mid-chunk (abandoned), instead of waiting for it', () => {
    const lines = Array.from({ length: 1000 }, (_, i) => good[i % good.length] as string)
    const list = sharedListBytes(`${lines.join('\n')}\n`)
    const plan = planImaChunks(list, 'sha256', 'sha1', 5000)
    if (plan === null) throw new Error('no plan')
    // a helper claimed the last chunk and died: its state stays "helping" (header: cursor, then per chunk its
    // state, accepted lines and lines)
    const header = new Int32Array(plan.shared)
    const last = plan.starts.length - 1
    expect(Atomics.compareExchange(header, 1 + 3 * last, 0, 1)).toBe(0)
    abandonImaChunks(plan)
    // without the abandon the verification would wait for that chunk forever (the test would time out)
    const r = verifyImaIncrement({
      listText: list,
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: 'sha256', value: pcrAfter(lines, 'sha256') },
      policy,
      chunks: plan,
    })
    expect(r.verdict).toEqual({ ok: true })
  })

  it('ignores a plan made for another text, bank or template-hash column', () => {
    const lines = Array.from({ length: 500 }, (_, i) => good[i % good.length] as string)
    const listText = `${lines.join('\n')}\n`
    const quotedPcr10 = { hashAlg: 'sha256' as const, value: pcrAfter(lines, 'sha256') }
    const list = sharedListBytes(listText)
    const base = { listText: list, firstEntry: 0, state: null, quotedPcr10, policy }
    for (const plan of [
      planImaChunks(sharedListBytes(`${listText}\n`), 'sha256', 'sha1', 5000),
      // the same bytes, but another copy of them
      planImaChunks(sharedListBytes(listText), 'sha256', 'sha1', 5000),
      planImaChunks(list, 'sha1', 'sha1', 5000),
      planImaChunks(list, 'sha256', 'sha256', 5000),
    ]) {
      if (plan === null) throw new Error('no plan')
      helpWithImaChunks(plan, policy)
      expect(verifyImaIncrement({ ...base, chunks: plan }).verdict).toEqual({ ok: true })
      expect(verifyImaIncrement({ ...base, listText, chunks: plan }).verdict).toEqual({ ok: true })
    }
  })

  it('uses helpers that did not compare template-hash columns only for a replay anchored to a quote', () => {
    const lines = Array.from({ length: 500 }, (_, i) => good[i % good.length] as string)
    // line 250's column is not the sha1 of its data: only a verification that compares columns reports it
    lines[250] = `10 ${'7'.repeat(40)}${(lines[250] as string).slice(43)}`
    const list = sharedListBytes(`${lines.join('\n')}\n`)
    const base = { listText: list, firstEntry: 0, state: null, policy }
    for (const checkColumn of [false, true]) {
      const plan = planImaChunks(list, 'sha256', 'sha1', 5000, { checkColumn })
      if (plan === null) throw new Error('no plan')
      expect(helpWithImaChunks(plan, policy)).toBe(plan.starts.length - 1)
      const unanchored = verifyImaIncrement({
        ...base,
        quotedPcr10: { hashAlg: 'sha256', value: null },
        chunks: plan,
      })
      expect(!unanchored.verdict.ok && unanchored.verdict.events.map((e) => e.eventId)).toEqual([
        'ima.validation.ima_hash',
      ])
    }
    const plan = planImaChunks(list, 'sha256', 'sha1', 5000)
    if (plan === null) throw new Error('no plan')
    helpWithImaChunks(plan, policy)
    const quotedPcr10 = { hashAlg: 'sha256' as const, value: pcrAfter(lines, 'sha256') }
    expect(verifyImaIncrement({ ...base, quotedPcr10, chunks: plan }).verdict).toEqual({ ok: true })
  })

  it('makes no plan for bytes that are not shared (helpers could not read them)', () => {
    const lines = Array.from({ length: 500 }, (_, i) => good[i % good.length] as string)
    const listText = `${lines.join('\n')}\n`
    expect(planImaChunks(Buffer.from(listText), 'sha256', 'sha1', 5000)).toBeNull()
    expect(planImaChunks(sharedListBytes(listText), 'sha256', 'sha1', 5000)).not.toBeNull()
  })

  it('reads a long list given as text in segments, with the result of its bytes', () => {
    // longer than a segment (256 Ki characters) several times over, odd and non-ASCII lines throughout
    const lines = Array.from({ length: 12_000 }, (_, i) =>
      i % 97 === 0 ? (odd[i % odd.length] as string) : (good[(i * 7) % good.length] as string),
    )
    const listText = `${lines.join('\n')}\n`
    expect(listText.length).toBeGreaterThan(4 * 2 ** 18)
    for (const quoteAt of [lines.length, 7_001]) {
      const input = {
        listText,
        firstEntry: 0,
        state: null,
        quotedPcr10: { hashAlg: 'sha256' as const, value: pcrAfter(lines.slice(0, quoteAt), 'sha256') },
        policy,
      }
      const fromBytes = verifyImaIncrement({ ...input, listText: Buffer.from(listText) })
      expect(fromBytes.verdict.ok).toBe(false) // the odd lines fail, after the replay found the quote
      expect(fromBytes.lines).toBe(lines.length)
      const sliced = new ImaIncrementVerification(input)
      while (!sliced.step(1_234)) {}
      expect(sliced.finish()).toEqual(fromBytes)
      expect(verifyImaIncrement(input)).toEqual(fromBytes)
    }
  })
})
