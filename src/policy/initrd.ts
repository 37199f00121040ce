/**
 * Files of initrds (`policy create runtime --ramdisk-dir /boot`). An initrd is an optional uncompressed "early" cpio
 * archive (CPU microcode) followed by the main archive, usually compressed. As upstream, the early archive is left out
 * when a main one follows, and every regular file of the main archive is hashed under its absolute path.
 */
import { createHash } from 'node:crypto'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import {
  type CpioEntry,
  isCpioAt,
  isRegularFile,
  parseCpioArchive,
  parseCpioArchives,
  skipZeros,
} from './cpio.ts'
import { DecompressError, decompress, detectCompression } from './decompress.ts'
import { FILE_HASHES, type FileHashAlg } from './hash-pool.ts'

export class InitrdError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'InitrdError'
  }
}

/** Entries of the main archive of an initrd image. */
export function initrdEntries(image: Buffer, file = 'initrd'): CpioEntry[] {
  let pos = 0
  // Early uncompressed archives are skipped while something follows them; the last archive is the main one.
  while (isCpioAt(image, pos)) {
    const { entries, end } = parseCpioArchive(image, pos)
    const next = skipZeros(image, end)
    if (next >= image.length) return entries
    pos = next
  }
  const kind = detectCompression(image, pos)
  if (kind === undefined)
    throw new InitrdError(`${file}: neither a cpio archive nor a known compression at offset ${pos}`)
  let main: Buffer
  try {
    main = decompress(image.subarray(pos), kind, file)
  } catch (e) {
    if (e instanceof DecompressError) throw new InitrdError(e.message)
    throw e
  }
  if (!isCpioAt(main, skipZeros(main, 0)))
    throw new InitrdError(`${file}: the ${kind} stream is not a cpio archive`)
  return parseCpioArchives(main)
}

/** Initrds in `dir`: regular files whose name starts with "initr" (initrd-*, initramfs-*), as upstream. */
export function listInitrds(dir: string): string[] {
  return readdirSync(dir)
    .filter((n) => n.startsWith('initr'))
    .map((n) => join(dir, n))
    .filter((p) => statSync(p, { throwIfNoEntry: false })?.isFile() === true)
    .sort()
}

/** `[absolute path in the initrd, hex digest]` of the regular files of every initrd in `dir`. */
export function ramdiskDigests(
  dir: string,
  alg: FileHashAlg,
  onInitrd?: (file: string, files: number) => void,
): [string, string][] {
  const out: [string, string][] = []
  for (const file of listInitrds(dir)) {
    const entries = initrdEntries(readFileSync(file), file).filter(isRegularFile)
    for (const e of entries) {
      out.push([`/${e.name}`.replaceAll(' ', '_'), createHash(FILE_HASHES[alg]).update(e.data).digest('hex')])
    }
    onInitrd?.(file, entries.length)
  }
  return out
}
