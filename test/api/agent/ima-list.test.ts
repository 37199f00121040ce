import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { IMA_INDEX_STRIDE, ImaMeasurementList } from '../../../src/agent/ima-list.ts'

const line = (i: number) =>
  `10 ${'ab'.repeat(20)} ima-ng sha256:${i.toString(16).padStart(64, '0')} /file/${i}\n`

describe('ImaMeasurementList', () => {
  let dir: string
  let path: string
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'ima-list-'))
    path = join(dir, 'ascii_runtime_measurements')
  })
  afterEach(() => rmSync(dir, { recursive: true, force: true }))

  it('returns null when the file does not exist', async () => {
    expect(await new ImaMeasurementList(path).read(0)).toBeNull()
  })

  it('serves from an entry offset and grows its index as the file grows', async () => {
    writeFileSync(path, line(0) + line(1) + line(2))
    const list = new ImaMeasurementList(path)
    expect(await list.read(0)).toEqual({ text: line(0) + line(1) + line(2), entry: 0 })
    expect(await list.read(2)).toEqual({ text: line(2), entry: 2 })
    expect(await list.read(3)).toEqual({ text: '', entry: 3 })
    appendFileSync(path, line(3) + line(4))
    expect(await list.read(3)).toEqual({ text: line(3) + line(4), entry: 3 })
    expect(list.indexedEntries).toBe(5)
  })

  it('answers the whole log and entry 0 when the entry is past the end', async () => {
    writeFileSync(path, line(0) + line(1))
    const list = new ImaMeasurementList(path)
    expect(await list.read(7)).toEqual({ text: line(0) + line(1), entry: 0 })
    expect(await list.read(-1)).toEqual({ text: line(0) + line(1), entry: 0 })
  })

  it('does not serve a partly written last line until it is complete', async () => {
    writeFileSync(path, line(0) + line(1).slice(0, 10))
    const list = new ImaMeasurementList(path)
    expect(await list.read(0)).toEqual({ text: line(0), entry: 0 })
    appendFileSync(path, line(1).slice(10))
    expect(await list.read(1)).toEqual({ text: line(1), entry: 1 })
  })

  it('restarts its index when the file is replaced by a shorter one', async () => {
    writeFileSync(path, line(0) + line(1) + line(2))
    const list = new ImaMeasurementList(path)
    await list.read(0)
    writeFileSync(path, line(9))
    expect(await list.read(0)).toEqual({ text: line(9), entry: 0 })
  })

  it('indexes a large list once, then serves a late entry without rescanning', async () => {
    const lines: string[] = []
    for (let i = 0; i < 20_000; i++) lines.push(line(i))
    writeFileSync(path, lines.join(''))
    const list = new ImaMeasurementList(path)
    await list.read(0)
    const t0 = performance.now()
    for (let i = 0; i < 200; i++) expect((await list.read(19_999))?.text).toBe(line(19_999))
    expect(performance.now() - t0).toBeLessThan(2_000)
  })

  it('serves every entry around the remembered offsets, also after appends that cross one', async () => {
    const n = IMA_INDEX_STRIDE * 3 + 5
    const lines = Array.from({ length: n }, (_, i) => line(i))
    writeFileSync(path, lines.slice(0, IMA_INDEX_STRIDE - 2).join(''))
    const list = new ImaMeasurementList(path)
    expect((await list.read(IMA_INDEX_STRIDE - 3))?.text).toBe(line(IMA_INDEX_STRIDE - 3))
    appendFileSync(path, lines.slice(IMA_INDEX_STRIDE - 2).join(''))
    const S = IMA_INDEX_STRIDE
    for (const e of [0, 1, S - 1, S, S + 1, 2 * S - 1, 2 * S, 3 * S, n - 1, n]) {
      expect(await list.read(e)).toEqual({ text: lines.slice(e).join(''), entry: e })
    }
    expect(list.indexedEntries).toBe(n)
  })
})
