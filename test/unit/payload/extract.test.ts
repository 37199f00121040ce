import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { buildPayloadZip, extractPayloadZipSafely, PayloadArchiveError } from '../../../src/payload/index.ts'
import { craftZip } from './zip-craft.ts'

const root = mkdtempSync(join(tmpdir(), 'kl-zip-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))
let n = 0
/** A fresh sandbox: `dest` to extract into, with a sibling `outside` that must stay empty. */
function sandbox(): { dest: string; outside: string; base: string } {
  const base = join(root, `case-${n++}`)
  const dest = join(base, 'secure', 'unzipped')
  const outside = join(base, 'outside')
  mkdirSync(outside, { recursive: true })
  return { dest, outside, base }
}

async function rejects(p: Promise<unknown>, pattern: RegExp): Promise<void> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  )
  expect(err).toBeInstanceOf(PayloadArchiveError)
  expect((err as PayloadArchiveError).code).toBe('ERR_PAYLOAD_ARCHIVE')
  expect((err as Error).message).toMatch(pattern)
}

function allFiles(dir: string): string[] {
  if (!existsSync(dir)) return []
  return readdirSync(dir, { recursive: true }).map(String).sort()
}

describe('buildPayloadZip + extractPayloadZipSafely', () => {
  it('round-trips files and sub-directories with private modes', async () => {
    const zip = await buildPayloadZip([
      { name: 'autorun.sh', data: '#!/bin/sh\necho hi > marker\n', mode: 0o755 },
      { name: 'conf/app.json', data: '{"a":1}' },
      { name: 'big.bin', data: Buffer.alloc(200_000, 7) },
    ])
    const { dest } = sandbox()
    const result = await extractPayloadZipSafely(zip, dest)
    expect(result.files).toEqual(['autorun.sh', 'conf/app.json', 'big.bin'])
    expect(result.totalBytes).toBe(27 + 7 + 200_000)
    expect(readFileSync(join(dest, 'conf/app.json'), 'utf8')).toBe('{"a":1}')
    expect(statSync(join(dest, 'autorun.sh')).mode & 0o777).toBe(0o600)
    expect(statSync(dest).mode & 0o777).toBe(0o700)
  })

  it('refuses unsafe names when building', async () => {
    await rejects(buildPayloadZip([{ name: '../x', data: '' }]), /unsafe/)
    await rejects(buildPayloadZip([{ name: '/etc/x', data: '' }]), /unsafe/)
    await rejects(
      buildPayloadZip([
        { name: 'a', data: '' },
        { name: 'a', data: '' },
      ]),
      /duplicate/,
    )
  })
})

describe('hostile archives are refused and nothing lands outside', () => {
  const cases: Array<[string, Buffer, RegExp]> = [
    [
      'zip-slip',
      craftZip([
        { name: 'ok.txt', data: Buffer.from('x') },
        { name: '../outside/evil.sh', data: Buffer.from('pwn') },
      ]),
      /\.\.|relative path/,
    ],
    [
      'nested zip-slip',
      craftZip([{ name: 'a/../../outside/evil', data: Buffer.from('pwn') }]),
      /\.\.|relative path/,
    ],
    ['absolute path', craftZip([{ name: '/tmp/evil-absolute', data: Buffer.from('pwn') }]), /absolute/],
    [
      'symlink',
      craftZip([
        { name: 'link', data: Buffer.from('../outside'), mode: 0o120777 },
        { name: 'link/evil', data: Buffer.from('pwn') },
      ]),
      /symbolic link/,
    ],
    ['device', craftZip([{ name: 'dev', data: Buffer.alloc(0), mode: 0o020666 }]), /device/],
    ['fifo', craftZip([{ name: 'fifo', data: Buffer.alloc(0), mode: 0o010666 }]), /device, fifo/],
    [
      'zip bomb (ratio)',
      craftZip([{ name: 'zeros', data: Buffer.alloc(8 * 1024 * 1024), deflate: true }]),
      /over-compressed/,
    ],
    [
      'oversized entry',
      craftZip([{ name: 'big', data: Buffer.alloc(20 * 1024 * 1024, 1) }]),
      /over the limit|more than the limit/,
    ],
    [
      'too many entries',
      craftZip(Array.from({ length: 1001 }, (_, i) => ({ name: `f${i}`, data: Buffer.from('') }))),
      /1001 entries/,
    ],
    [
      'duplicate names',
      craftZip([
        { name: 'a', data: Buffer.from('1') },
        { name: './a', data: Buffer.from('2') },
      ]),
      /duplicate/,
    ],
    [
      'file used as dir',
      craftZip([
        { name: 'a', data: Buffer.from('1') },
        { name: 'a/b', data: Buffer.from('2') },
      ]),
      /below the file/,
    ],
    [
      'lying size header (bomb)',
      craftZip([{ name: 'liar', data: Buffer.alloc(4 * 1024 * 1024), deflate: true, declaredSize: 100 }]),
      /too many bytes/,
    ],
    ['garbage', Buffer.from('PK\x03\x04 this is not a zip'), /not a readable zip/],
  ]
  for (const [title, zip, pattern] of cases) {
    it(title, async () => {
      const { dest, outside } = sandbox()
      await rejects(extractPayloadZipSafely(zip, dest), pattern)
      expect(allFiles(outside)).toEqual([])
      expect(allFiles(dest)).toEqual([])
      expect(existsSync('/tmp/evil-absolute')).toBe(false)
    })
  }

  it('does not follow a symlink planted in the destination beforehand', async () => {
    const { dest, outside } = sandbox()
    mkdirSync(dest, { recursive: true })
    symlinkSync(outside, join(dest, 'sub'))
    symlinkSync(join(outside, 'target'), join(dest, 'file'))
    await rejects(
      extractPayloadZipSafely(craftZip([{ name: 'sub/evil', data: Buffer.from('pwn') }]), dest),
      /outside the destination/,
    )
    await rejects(
      extractPayloadZipSafely(craftZip([{ name: 'file', data: Buffer.from('pwn') }]), dest),
      /cannot create file/,
    )
    expect(allFiles(outside)).toEqual([])
  })

  it('respects caller limits', async () => {
    const zip = await buildPayloadZip([
      { name: 'a', data: Buffer.alloc(600) },
      { name: 'b', data: Buffer.alloc(600) },
    ])
    await rejects(
      extractPayloadZipSafely(zip, sandbox().dest, { maxTotalBytes: 1000 }),
      /more than the limit of 1000/,
    )
    await rejects(extractPayloadZipSafely(zip, sandbox().dest, { maxEntries: 1 }), /2 entries/)
    expect((await extractPayloadZipSafely(zip, sandbox().dest, { maxTotalBytes: 1200 })).files).toEqual([
      'a',
      'b',
    ])
  })
})
