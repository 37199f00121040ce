import { existsSync, lstatSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import { afterAll, describe, expect, it } from 'vitest'
import { buildPayloadZip, extractPayloadZipSafely, PayloadArchiveError } from '../../../src/payload/index.ts'

const root = mkdtempSync(join(tmpdir(), 'kl-zipfuzz-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))

describe('extractPayloadZipSafely on corrupted archives', () => {
  it('either extracts inside the destination or throws PayloadArchiveError, never anything else', async () => {
    const good = await buildPayloadZip(
      [
        { name: 'autorun.sh', data: '#!/bin/sh\necho ok\n' },
        { name: 'dir/data.bin', data: Buffer.alloc(3000, 0x41) },
      ],
      { compress: true },
    )
    let run = 0
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.nat(good.length - 1), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 6,
        }),
        async (flips) => {
          const bytes = Buffer.from(good)
          for (const [at, value] of flips) bytes[at] = value
          const dest = join(root, `r${run++}`, 'out')
          try {
            const result = await extractPayloadZipSafely(bytes, dest)
            for (const f of result.files) expect(f.startsWith('/') || f.split('/').includes('..')).toBe(false)
          } catch (err) {
            expect(err).toBeInstanceOf(PayloadArchiveError)
            // a refused archive leaves no file behind (the destination directory itself may remain)
            const parent = join(dest, '..')
            const left = existsSync(parent)
              ? readdirSync(parent, { recursive: true })
                  .map((p) => join(parent, String(p)))
                  .filter((p) => !lstatSync(p).isDirectory())
              : []
            expect(left).toEqual([])
          }
        },
      ),
      { numRuns: 300 },
    )
  })
})
