import { createHash, generateKeyPairSync, type KeyObject, sign } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import {
  type CompiledRuntimePolicy,
  compileRuntimePolicy,
  computeKeyId,
  digestWith,
  emptyRuntimePolicy,
  formatImaNgEntry,
  ImaIncrementVerification,
  type ImaReplayState,
  parseImaLine,
  parseRuntimePolicy,
  replayImaEntries,
  verifyImaIncrement,
} from '../../../src/evidence/ima/index.ts'

const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest()

/** A line with the correct sha1 template hash for any template and fields. */
function line(template: string, fields: string): string {
  const draft = parseImaLine(`10 ${'11'.repeat(20)} ${template} ${fields}`)
  return `10 ${digestWith('sha1', draft.templateData).toString('hex')} ${template} ${fields}`
}

function fileLine(path: string): string {
  return formatImaNgEntry(path, sha256(path), 'sha256').line
}

function pcrAfter(lines: string[], bank: 'sha1' | 'sha256' = 'sha256'): string {
  return replayImaEntries(
    lines.map((l) => parseImaLine(l)),
    bank,
  ).toString('hex')
}

function policyFor(
  paths: string[],
  extra: Partial<ReturnType<typeof emptyRuntimePolicy>> = {},
): CompiledRuntimePolicy {
  const p = emptyRuntimePolicy()
  for (const path of paths) p.digests[path] = [sha256(path).toString('hex')]
  return compileRuntimePolicy(parseRuntimePolicy(JSON.stringify({ ...p, ...extra })))
}

const text = (lines: string[]) => lines.map((l) => `${l}\n`).join('')

describe('verifyImaIncrement', () => {
  const paths = Array.from({ length: 3000 }, (_, i) => `/usr/bin/tool-${i}`)
  const all = paths.map(fileLine)
  const policy = policyFor(paths)

  it('continues from the stored state when the list grows by thousands of entries', () => {
    const first = all.slice(0, 1000)
    const r1 = verifyImaIncrement({
      listText: text(first),
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: 'sha256', value: pcrAfter(first) },
      policy,
    })
    expect(r1.verdict).toEqual({ ok: true })
    expect(r1.state.nextEntry).toBe(1000)
    // Persisted as JSON, restored by another verifier: only the new 2000 entries are sent.
    const stored = JSON.parse(JSON.stringify(r1.state)) as ImaReplayState
    const r2 = verifyImaIncrement({
      listText: text(all.slice(1000)),
      firstEntry: 1000,
      state: stored,
      quotedPcr10: { hashAlg: 'sha256', value: pcrAfter(all) },
      policy,
    })
    expect(r2.verdict).toEqual({ ok: true })
    expect(r2.state.nextEntry).toBe(3000)
    expect(r2.state.pcr10.sha256).toBe(pcrAfter(all))
  })

  it('stops at the quoted entry when the list runs ahead of the quote, and checks quote progress', () => {
    const r1 = verifyImaIncrement({
      listText: text(all.slice(0, 10)),
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: 'sha256', value: pcrAfter(all.slice(0, 5)) },
      policy,
    })
    expect(r1.verdict.ok).toBe(true)
    expect(r1.matchedAt).toBe(5)
    expect(r1.state.nextEntry).toBe(5)
    expect(r1.state.progress).toEqual({ matchLine: 5, logLength: 10 })
    // Next quote still lags: it matches 3 lines into the new list, fewer than the previous lag of 5.
    const lagging = verifyImaIncrement({
      listText: text(all.slice(5, 13)),
      firstEntry: 5,
      state: r1.state,
      quotedPcr10: { hashAlg: 'sha256', value: pcrAfter(all.slice(0, 8)) },
      policy,
    })
    expect(lagging.verdict.ok).toBe(false)
    expect(!lagging.verdict.ok && lagging.verdict.events.map((e) => e.eventId)).toEqual([
      'ima.quote_progress',
    ])
    expect(lagging.state.nextEntry).toBe(0)
    const caughtUp = verifyImaIncrement({
      listText: text(all.slice(5, 13)),
      firstEntry: 5,
      state: r1.state,
      quotedPcr10: { hashAlg: 'sha256', value: pcrAfter(all.slice(0, 13)) },
      policy,
    })
    expect(caughtUp.verdict.ok).toBe(true)
    expect(caughtUp.state.nextEntry).toBe(13)
  })

  it('fails (not recoverable) when the agent starts at another entry than requested, and resets', () => {
    const r1 = verifyImaIncrement({
      listText: text(all.slice(0, 4)),
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: 'sha256', value: pcrAfter(all.slice(0, 4)) },
      policy,
    })
    const r2 = verifyImaIncrement({
      listText: text(all.slice(6, 8)),
      firstEntry: 6,
      state: r1.state,
      quotedPcr10: { hashAlg: 'sha256', value: pcrAfter(all.slice(0, 8)) },
      policy,
    })
    expect(r2.verdict).toEqual({
      ok: false,
      events: [
        {
          eventId: 'qoute_validation.invalid_ima_entry_nb',
          context: { message: expect.any(String), got: 6, expected: 4 },
          recoverable: false,
        },
      ],
    })
    expect(r2.state.nextEntry).toBe(0)
  })

  it('replays from scratch after a reboot (agent restarts at entry 0)', () => {
    const stale: ImaReplayState = {
      version: 1,
      nextEntry: 900,
      pcr10: { sha256: 'ab'.repeat(32) },
      learnedKeyrings: {},
      progress: { matchLine: 900, logLength: 900 },
    }
    const r = verifyImaIncrement({
      listText: text(all.slice(0, 3)),
      firstEntry: 0,
      state: stale,
      quotedPcr10: { hashAlg: 'sha256', value: pcrAfter(all.slice(0, 3)) },
      policy,
    })
    expect(r.verdict.ok).toBe(true)
    expect(r.state.nextEntry).toBe(3)
  })

  it('names an unknown file, resets the state, and lets excluded paths pass', () => {
    const lines = [...all.slice(0, 2), fileLine('/tmp/evil'), fileLine('/var/cache/x')]
    const quoted = { hashAlg: 'sha256' as const, value: pcrAfter(lines) }
    const strict = verifyImaIncrement({
      listText: text(lines),
      firstEntry: 0,
      state: null,
      quotedPcr10: quoted,
      policy,
    })
    expect(strict.verdict.ok).toBe(false)
    expect(!strict.verdict.ok && strict.verdict.events.map((e) => e.context.message)).toEqual([
      'File not found in allowlist: /tmp/evil',
      'File not found in allowlist: /var/cache/x',
    ])
    expect(strict.state.nextEntry).toBe(0)
    const withExcludes = policyFor(paths, { excludes: ['/tmp/', '/var/cache'] })
    const r = verifyImaIncrement({
      listText: text(lines),
      firstEntry: 0,
      state: null,
      quotedPcr10: quoted,
      policy: withExcludes,
    })
    expect(r.verdict.ok).toBe(true)
  })

  it('reports a changed digest with the allowed ones', () => {
    const bad = formatImaNgEntry(paths[0] as string, sha256('tampered'), 'sha256').line
    const r = verifyImaIncrement({
      listText: text([bad]),
      firstEntry: 0,
      state: null,
      quotedPcr10: null,
      policy,
    })
    expect(!r.verdict.ok && r.verdict.events[0]).toEqual({
      eventId: 'ima.validation.ima-ng.runtime_policy_hash',
      context: {
        message: 'Hash not found in runtime policy',
        got: sha256('tampered').toString('hex'),
        expected: [sha256(paths[0] as string).toString('hex')],
      },
      recoverable: true,
    })
  })

  it('accepts boot_aggregate from measured-boot aggregates and reports a PCR mismatch', () => {
    const agg = sha256('pcrs 0-9')
    const lines = [formatImaNgEntry('boot_aggregate', agg, 'sha256').line, all[0] as string]
    const r = verifyImaIncrement({
      listText: text(lines),
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: 'sha1', value: pcrAfter(lines, 'sha1') },
      policy,
      bootAggregates: { sha256: [agg.toString('hex')] },
    })
    expect(r.verdict.ok).toBe(true)
    const wrong = verifyImaIncrement({
      listText: text(lines),
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: 'sha1', value: 'ff'.repeat(20) },
      policy,
      bootAggregates: { sha256: [agg.toString('hex')] },
    })
    expect(!wrong.verdict.ok && wrong.verdict.events.map((e) => e.eventId)).toEqual(['ima.pcr_mismatch'])
  })

  it('reports violations only when ToMToU errors are not ignored', () => {
    const violation = `10 ${'00'.repeat(20)} ima-ng sha256:${'00'.repeat(32)} /var/log/x`
    const p = policyFor([])
    const ignored = verifyImaIncrement({
      listText: violation,
      firstEntry: 0,
      state: null,
      quotedPcr10: null,
      policy: p,
    })
    expect(ignored.verdict.ok).toBe(true)
    const strict = verifyImaIncrement({
      listText: violation,
      firstEntry: 0,
      state: null,
      quotedPcr10: null,
      policy: p,
      ignoreTomtouErrors: false,
    })
    expect(!strict.verdict.ok && strict.verdict.events[0]?.eventId).toBe('ima.validation.tomtou')
  })

  describe('keys learned from keyring measurements verify later signed files', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
    const spki = publicKey.export({ type: 'spki', format: 'der' })
    const keyLine = line('ima-buf', `sha256:${sha256(spki).toString('hex')} .ima ${spki.toString('hex')}`)
    const signedLine = (path: string, content: string, key: KeyObject = privateKey) => {
      const sig = sign('sha256', Buffer.from(content), key)
      const header = Buffer.alloc(9)
      header[0] = 3
      header[1] = 2
      header[2] = 4
      header.writeUInt32BE(computeKeyId(publicKey), 3)
      header.writeUInt16BE(sig.length, 7)
      return line(
        'ima-sig',
        `sha256:${sha256(content).toString('hex')} ${path} ${Buffer.concat([header, sig]).toString('hex')}`,
      )
    }
    const base = emptyRuntimePolicy()

    it('passes without a digest once the .ima key is allowed, and keeps the key across increments', () => {
      const policy = compileRuntimePolicy(
        parseRuntimePolicy({ ...base, keyrings: { '.ima': [sha256(spki).toString('hex')] } }),
      )
      const lines = [keyLine, signedLine('/usr/bin/signed', 'signed program')]
      const r = verifyImaIncrement({
        listText: text(lines),
        firstEntry: 0,
        state: null,
        quotedPcr10: { hashAlg: 'sha256', value: pcrAfter(lines) },
        policy,
      })
      expect(r.verdict).toEqual({ ok: true })
      expect(Object.keys(r.state.learnedKeyrings)).toEqual(['.ima'])
      const more = [signedLine('/usr/bin/other', 'other program')]
      const r2 = verifyImaIncrement({
        listText: text(more),
        firstEntry: 2,
        state: JSON.parse(JSON.stringify(r.state)),
        quotedPcr10: { hashAlg: 'sha256', value: pcrAfter([...lines, ...more]) },
        policy,
      })
      expect(r2.verdict).toEqual({ ok: true })
    })

    it('does not learn a key whose measurement the policy does not allow, or from an ignored keyring', () => {
      const lines = [keyLine, signedLine('/usr/bin/signed', 'signed program')]
      const none = compileRuntimePolicy(parseRuntimePolicy(base))
      const r = verifyImaIncrement({
        listText: text(lines),
        firstEntry: 0,
        state: null,
        quotedPcr10: null,
        policy: none,
      })
      expect(!r.verdict.ok && r.verdict.events.map((e) => e.context.message)).toEqual([
        'File not found in allowlist: .ima',
        'File not found in allowlist: /usr/bin/signed',
      ])
      const ignored = compileRuntimePolicy(
        parseRuntimePolicy({
          ...base,
          ima: { ...base.ima, ignored_keyrings: ['*'] },
          keyrings: { '.ima': [sha256(spki).toString('hex')] },
        }),
      )
      const r2 = verifyImaIncrement({
        listText: text(lines),
        firstEntry: 0,
        state: null,
        quotedPcr10: null,
        policy: ignored,
      })
      expect(!r2.verdict.ok && r2.verdict.events.map((e) => e.context.message)).toEqual([
        'File not found in allowlist: /usr/bin/signed',
      ])
    })

    it('rejects a signature by another key', () => {
      const other = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey
      const policy = compileRuntimePolicy(
        parseRuntimePolicy({ ...base, keyrings: { '.ima': [sha256(spki).toString('hex')] } }),
      )
      const r = verifyImaIncrement({
        listText: text([keyLine, signedLine('/x', 'x', other)]),
        firstEntry: 0,
        state: null,
        quotedPcr10: null,
        policy,
      })
      expect(!r.verdict.ok && r.verdict.events.map((e) => e.context.message)).toEqual([
        'File not found in allowlist: /x',
      ])
    })
  })

  it('reports unparsable lines without replaying them and keeps checking the rest', () => {
    const lines = [all[0] as string, 'garbage line here', all[1] as string]
    const r = verifyImaIncrement({
      listText: text(lines),
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: 'sha256', value: pcrAfter([all[0] as string, all[1] as string]) },
      policy,
    })
    expect(!r.verdict.ok && r.verdict.events.map((e) => e.eventId)).toEqual(['ima.parser.entry'])
  })
})

describe('the logged template-hash column', () => {
  const paths = Array.from({ length: 40 }, (_, i) => `/usr/lib/col-${i}`)
  const lines = paths.map(fileLine)
  const policy = policyFor(paths)
  /** Line 7 with its column (sha1, 40 hex) replaced by a value that is not the hash of its data. */
  const wrongColumn = lines.map((l, i) => (i === 7 ? `10 ${'7'.repeat(40)}${l.slice(43)}` : l))
  /**
   * Line 7 given the fields of line 8 (another file the policy allows), its column left as logged: the fast path
   * accepts the entry, and only the comparison of the column names it.
   */
  const editedData = lines.map((l, i) => (i === 7 ? `${l.slice(0, 43)}${(lines[8] as string).slice(43)}` : l))
  const run = (list: string[], bank: 'sha1' | 'sha256', value: string | null, slice = 1e9) => {
    const v = new ImaIncrementVerification({
      listText: text(list),
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: bank, value },
      policy,
    })
    while (!v.step(slice)) {}
    const r = v.finish()
    return r.verdict.ok ? [] : r.verdict.events.map((e) => e.eventId)
  }

  it('is not compared when a quote anchors the replay and its algorithm is not the bank one', () => {
    // the data is what the TPM measured (the quote is over it); the column is a value anyone can recompute
    expect(run(wrongColumn, 'sha256', pcrAfter(lines))).toEqual([])
  })

  it('is compared where it is free (sha1 bank), and when nothing anchors the replay', () => {
    expect(run(wrongColumn, 'sha1', pcrAfter(lines, 'sha1'))).toEqual(['ima.validation.ima_hash'])
    expect(run(wrongColumn, 'sha256', null)).toEqual(['ima.validation.ima_hash'])
  })

  it('still names an edited entry when the replay misses the quote, in slices as in one go', () => {
    for (const slice of [3, 1e9]) {
      expect(run(editedData, 'sha256', pcrAfter(lines), slice)).toEqual([
        'ima.validation.ima_hash',
        'ima.pcr_mismatch',
      ])
    }
  })

  it('marks a violation with zeros, which a quote over the real entry does not accept', () => {
    const zeroed = lines.map((l, i) => (i === 7 ? `10 ${'0'.repeat(40)}${l.slice(43)}` : l))
    // replayed as a violation (all 0xFF extended), so the quote over the real entry is not reached
    expect(run(zeroed, 'sha256', pcrAfter(lines))).toEqual(['ima.pcr_mismatch'])
    // and a quote over the violation is reached, without checking that entry against the policy
    expect(run(zeroed, 'sha256', pcrAfter(zeroed))).toEqual([])
  })
})

describe('ImaIncrementVerification (sliced)', () => {
  it('gives the same result as the one-shot call, in slices of any size', () => {
    const paths = Array.from({ length: 50 }, (_, i) => `/opt/x-${i}`)
    const lines = [...paths.map(fileLine), fileLine('/not/allowed'), 'broken line']
    const input = {
      listText: text(lines),
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: 'sha256' as const, value: pcrAfter(lines.slice(0, 30)) },
      policy: policyFor(paths),
    }
    const oneShot = verifyImaIncrement(input)
    expect(oneShot.verdict.ok).toBe(false)
    for (const slice of [1, 7, 1000]) {
      const v = new ImaIncrementVerification(input)
      let steps = 0
      while (!v.step(slice)) steps++
      expect(steps).toBe(Math.ceil(lines.length / slice) - 1)
      expect(v.finish()).toEqual(oneShot)
    }
  })
})

describe('formatImaNgEntry', () => {
  it('produces a kernel line whose per-bank digests replay like the parsed line', () => {
    const e = formatImaNgEntry('/usr/bin/with space', sha256('x'), 'sha256')
    expect(e.line).toMatch(/ \/usr\/bin\/with_space$/)
    const parsed = parseImaLine(e.line)
    expect(parsed.templateData.equals(e.templateData)).toBe(true)
    expect(e.templateDigests.sha256.equals(digestWith('sha256', parsed.templateData))).toBe(true)
    expect(e.templateDigests.sha1.equals(parsed.templateHash)).toBe(true)
    expect(() => formatImaNgEntry('/x', Buffer.alloc(20), 'sha256')).toThrow(/sha256/)
  })

  it('matches the spec check vector (sha1 d-ng keeps its prefix)', () => {
    const e = formatImaNgEntry(
      '/usr/lib/systemd/systemd',
      Buffer.from('bc026ae66d81713e4e852465e980784dc96651f8', 'hex'),
      'sha1',
    )
    expect(e.line.split(' ')[1]).toBe('7936eb315fb4e74b99e7d461bc5c96049e1ee092')
  })
})
