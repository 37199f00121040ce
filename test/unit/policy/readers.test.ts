/**
 * The archive and package readers on hostile input: every malformed buffer is a named error, never an exception of
 * another kind, a hang or an allocation the input asked for. Archives and headers are built here byte by byte.
 */

import { gzipSync } from 'node:zlib'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { CpioError, parseCpioArchive, parseCpioArchives } from '../../../src/policy/cpio.ts'
import { InitrdError, initrdEntries } from '../../../src/policy/initrd.ts'
import { parseRpmFiles, RpmError, RpmTruncatedError } from '../../../src/policy/rpm-header.ts'

const hex8 = (n: number) => n.toString(16).padStart(8, '0')
const pad4 = (b: Buffer, at: number) => Buffer.alloc((4 - ((at + b.length) % 4)) % 4)

/** A newc archive of [name, mode, data, ino?, nlink?] entries, trailer included. */
function newc(entries: [string, number, Buffer, number?, number?][]): Buffer {
  const parts: Buffer[] = []
  let at = 0
  const push = (b: Buffer) => {
    parts.push(b)
    at += b.length
  }
  for (const [name, mode, data, ino = 1, nlink = 1] of [
    ...entries,
    ['TRAILER!!!', 0, Buffer.alloc(0)] as const,
  ]) {
    const nameBuf = Buffer.from(`${name}\0`)
    const fields = [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, 0, 0, nameBuf.length, 0]
    push(Buffer.from(`070701${fields.map(hex8).join('')}`))
    push(nameBuf)
    push(pad4(Buffer.alloc(0), at))
    push(data)
    push(pad4(Buffer.alloc(0), at))
  }
  return Buffer.concat(parts)
}

const REG = 0o100644

describe('cpio newc', () => {
  it('reads names, modes and data; strips ./ ; resolves hard links to the entry holding the data', () => {
    const archive = newc([
      ['.', 0o40755, Buffer.alloc(0)],
      ['./bin/a', REG, Buffer.from('abc'), 7, 2],
      ['bin/b', REG, Buffer.from('hello world'), 7, 2],
    ])
    const { entries, end } = parseCpioArchive(archive)
    expect(end).toBe(archive.length)
    expect(entries.map((e) => [e.name, e.data.toString()])).toEqual([
      ['.', ''],
      ['bin/a', 'abc'],
      ['bin/b', 'hello world'],
    ])
    const linked = newc([
      ['bin/a', REG, Buffer.alloc(0), 9, 2],
      ['bin/b', REG, Buffer.from('shared'), 9, 2],
    ])
    expect(parseCpioArchive(linked).entries.map((e) => e.data.toString())).toEqual(['shared', 'shared'])
  })

  it('names what is wrong with a truncated or corrupt archive', () => {
    const archive = newc([['f', REG, Buffer.from('0123456789')]])
    expect(() => parseCpioArchive(archive.subarray(0, 50))).toThrow(/truncated cpio header/)
    expect(() => parseCpioArchive(archive.subarray(0, 111))).toThrow(/truncated cpio name/)
    expect(() => parseCpioArchive(archive.subarray(0, 118))).toThrow(/truncated data of "f"/)
    const badField = Buffer.from(archive)
    badField.write('zzzzzzzz', 6 + 8 * 6)
    expect(() => parseCpioArchive(badField)).toThrow(/bad filesize field/)
    expect(() => parseCpioArchive(Buffer.from('not an archive at all'))).toThrow(/no cpio header at offset 0/)
    const noTrailer = newc([['f', REG, Buffer.from('x')]]).subarray(0, 124)
    expect(() => parseCpioArchive(noTrailer)).toThrow(CpioError)
  })

  it('never throws anything but CpioError on arbitrary bytes after a valid magic', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), (tail) => {
        try {
          parseCpioArchives(Buffer.concat([Buffer.from('070701'), Buffer.from(tail)]))
        } catch (e) {
          expect(e).toBeInstanceOf(CpioError)
        }
      }),
      { numRuns: 500 },
    )
  })

  it('initrd: early archive skipped before a compressed main one; an uncompressed lone archive is the main one', () => {
    const early = newc([['kernel/x86/microcode/GenuineIntel.bin', REG, Buffer.from('ucode')]])
    const main = newc([['init', REG, Buffer.from('#!/bin/sh')]])
    const padded = Buffer.concat([early, Buffer.alloc(512 - (early.length % 512))])
    expect(initrdEntries(Buffer.concat([padded, gzipSync(main)])).map((e) => e.name)).toEqual(['init'])
    expect(initrdEntries(early).map((e) => e.name)).toEqual(['kernel/x86/microcode/GenuineIntel.bin'])
    expect(() => initrdEntries(Buffer.concat([padded, Buffer.from('garbage')]), 'x.img')).toThrow(InitrdError)
    expect(() => initrdEntries(gzipSync(Buffer.from('not cpio')), 'y.img')).toThrow(
      /the gzip stream is not a cpio archive/,
    )
  })
})

/** An RPM header structure of [tag, type, value] entries. */
function header(entries: [number, number, Buffer, number][]): Buffer {
  const index: Buffer[] = []
  const store: Buffer[] = []
  let size = 0
  for (const [tag, type, data, count] of entries) {
    const align = type === 4 ? 4 : type === 3 ? 2 : 1
    const pad = (align - (size % align)) % align
    store.push(Buffer.alloc(pad))
    size += pad
    const e = Buffer.alloc(16)
    e.writeUInt32BE(tag, 0)
    e.writeUInt32BE(type, 4)
    e.writeUInt32BE(size, 8)
    e.writeUInt32BE(count, 12)
    index.push(e)
    store.push(data)
    size += data.length
  }
  const intro = Buffer.alloc(16)
  Buffer.from([0x8e, 0xad, 0xe8, 0x01]).copy(intro)
  intro.writeUInt32BE(entries.length, 8)
  intro.writeUInt32BE(size, 12)
  return Buffer.concat([intro, ...index, ...store])
}

const strs = (...s: string[]) => Buffer.concat(s.map((x) => Buffer.from(`${x}\0`)))
const int32s = (...n: number[]) =>
  Buffer.concat(n.map((x) => Buffer.from([x >>> 24, (x >> 16) & 255, (x >> 8) & 255, x & 255])))
const int16s = (...n: number[]) => Buffer.concat(n.map((x) => Buffer.from([x >> 8, x & 255])))

function rpm(main: Buffer): Buffer {
  const lead = Buffer.alloc(96)
  lead.writeUInt32BE(0xedabeedb, 0)
  const sig = header([[1000, 4, int32s(1234), 1]])
  return Buffer.concat([lead, sig, Buffer.alloc((8 - (sig.length % 8)) % 8), main])
}

describe('RPM headers', () => {
  const digest = 'ab'.repeat(32)
  const main = header([
    [1030, 3, int16s(0o100755, 0o40755, 0o120777), 3],
    [1035, 8, strs(digest.toUpperCase(), '', ''), 3],
    [1116, 4, int32s(0, 1, 0), 3],
    [1117, 8, strs('tool', 'share', 'link'), 3],
    [1118, 8, strs('/usr/bin/', '/usr/'), 2],
    [5011, 4, int32s(8), 1],
    [5090, 8, strs('0302AA', '', ''), 3],
  ])

  it('reads paths, modes, digests (lowercased), the digest algorithm and IMA signatures', () => {
    expect(parseRpmFiles(rpm(main))).toEqual([
      { path: '/usr/bin/tool', digest, alg: 'sha256', regular: true, imaSignature: '0302aa' },
      { path: '/usr/share', digest: '', alg: 'sha256', regular: false },
      { path: '/usr/bin/link', digest: '', alg: 'sha256', regular: false },
    ])
  })

  it('a short buffer says how many bytes the headers need; reading that many succeeds', () => {
    const full = rpm(main)
    let buf = full.subarray(0, 100)
    for (let i = 0; i < 5; i++) {
      try {
        parseRpmFiles(buf)
        break
      } catch (e) {
        expect(e).toBeInstanceOf(RpmTruncatedError)
        buf = full.subarray(0, (e as RpmTruncatedError).needed)
      }
    }
    expect(parseRpmFiles(buf)).toHaveLength(3)
  })

  it('refuses bad magic, absurd sizes, out-of-range offsets and unknown digest algorithms', () => {
    expect(() => parseRpmFiles(Buffer.alloc(200))).toThrow(/bad lead magic/)
    const huge = rpm(main)
    huge.writeUInt32BE(0x7fffffff, 96 + 12) // signature header data size
    expect(() => parseRpmFiles(huge)).toThrow(/claims/)
    const badAlg = rpm(header([[5011, 4, int32s(77), 1]]))
    expect(() => parseRpmFiles(badAlg)).toThrow(/unknown RPM file digest algorithm 77/)
    const outOfRange = rpm(header([[1117, 8, strs('a'), 1]]))
    outOfRange.writeInt32BE(9999, outOfRange.length - 2 - 16 + 8)
    expect(() => parseRpmFiles(outOfRange)).toThrow(RpmError)
  })

  it('never throws anything but RpmError on corrupted headers', () => {
    const good = rpm(main)
    fc.assert(
      fc.property(fc.nat(good.length - 1), fc.integer({ min: 0, max: 255 }), (at, value) => {
        const bad = Buffer.from(good)
        bad[at] = value
        try {
          parseRpmFiles(bad)
        } catch (e) {
          expect(e).toBeInstanceOf(RpmError)
        }
      }),
      { numRuns: 1000 },
    )
  })
})
