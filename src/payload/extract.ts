/**
 * Safe extraction of a payload zip into the agent's secure directory. Everything is checked against the
 * central directory before the first byte is written (names, types, sizes, counts, compression ratio), then
 * the data is streamed with byte counting (headers can lie), files are created exclusively without following
 * links, and on any failure everything this call created is removed again.
 */
import { constants } from 'node:fs'
import { type FileHandle, mkdir, open, realpath, rm } from 'node:fs/promises'
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path'
import yauzl from 'yauzl'
import { PayloadArchiveError } from './errors.ts'

export interface ExtractLimits {
  /** most entries (files + directories); default 1000 */
  maxEntries?: number
  /** most bytes written in total; default 16 MiB */
  maxTotalBytes?: number
  /** most bytes for one file; default maxTotalBytes */
  maxEntryBytes?: number
  /** highest uncompressed/compressed ratio for an entry larger than 64 KiB; default 200 */
  maxRatio?: number
}

export interface ExtractResult {
  /** relative paths of the files written, in archive order */
  files: string[]
  totalBytes: number
}

const S_IFMT = 0o170000
const S_IFREG = 0o100000
const S_IFDIR = 0o040000
const S_IFLNK = 0o120000
const RATIO_MIN_SIZE = 64 * 1024

function kindOf(entry: yauzl.Entry): 'file' | 'dir' | 'link' | 'special' {
  const mode = (entry.externalFileAttributes >>> 16) & 0xffff
  const type = mode & S_IFMT
  const isDirName = entry.fileName.endsWith('/')
  if (type === 0) return isDirName ? 'dir' : 'file'
  if (type === S_IFLNK) return 'link'
  if (type === S_IFDIR) return 'dir'
  if (type === S_IFREG) return isDirName ? 'special' : 'file'
  return 'special'
}

function checkName(name: string): string {
  if (name.includes('\0')) throw new PayloadArchiveError('archive entry name contains a NUL byte')
  if (name.includes('\\'))
    throw new PayloadArchiveError(`archive entry ${JSON.stringify(name)} contains a backslash`)
  if (isAbsolute(name) || /^[A-Za-z]:/.test(name)) {
    throw new PayloadArchiveError(`archive entry ${JSON.stringify(name)} has an absolute path`)
  }
  const parts = name.split('/').filter((p) => p !== '' && p !== '.')
  if (parts.some((p) => p === '..')) {
    throw new PayloadArchiveError(`archive entry ${JSON.stringify(name)} escapes the destination (..)`)
  }
  if (parts.length === 0)
    throw new PayloadArchiveError(`archive entry ${JSON.stringify(name)} has an empty path`)
  return parts.join('/')
}

function openZip(bytes: Buffer): Promise<yauzl.ZipFile> {
  return new Promise((resolvePromise, reject) => {
    // yauzl's own name checks stay on; ours run too and give the clearer message first where they overlap
    yauzl.fromBuffer(
      bytes,
      { lazyEntries: true, autoClose: false, validateEntrySizes: true, strictFileNames: true },
      (err, zip) =>
        err
          ? reject(new PayloadArchiveError(`not a readable zip archive: ${err.message}`, { cause: err }))
          : resolvePromise(zip),
    )
  })
}

function readAllEntries(zip: yauzl.ZipFile, maxEntries: number): Promise<yauzl.Entry[]> {
  return new Promise((resolvePromise, reject) => {
    if (zip.entryCount > maxEntries) {
      reject(
        new PayloadArchiveError(
          `archive has ${zip.entryCount} entries, more than the limit of ${maxEntries}`,
        ),
      )
      return
    }
    const entries: yauzl.Entry[] = []
    zip.on('entry', (entry: yauzl.Entry) => {
      entries.push(entry)
      zip.readEntry()
    })
    zip.on('end', () => resolvePromise(entries))
    zip.on('error', (err: Error) =>
      reject(new PayloadArchiveError(`archive rejected: ${err.message}`, { cause: err })),
    )
    zip.readEntry()
  })
}

function openEntryStream(zip: yauzl.ZipFile, entry: yauzl.Entry): Promise<NodeJS.ReadableStream> {
  return new Promise((resolvePromise, reject) => {
    zip.openReadStream(entry, (err, stream) =>
      err
        ? reject(new PayloadArchiveError(`cannot read ${entry.fileName}: ${err.message}`, { cause: err }))
        : resolvePromise(stream),
    )
  })
}

/** Extracts `zipBytes` into `destDir` (created 0700 if missing) or throws PayloadArchiveError without leaving files. */
export async function extractPayloadZipSafely(
  zipBytes: Uint8Array,
  destDir: string,
  limits: ExtractLimits = {},
): Promise<ExtractResult> {
  const maxEntries = limits.maxEntries ?? 1000
  const maxTotalBytes = limits.maxTotalBytes ?? 16 * 1024 * 1024
  const maxEntryBytes = limits.maxEntryBytes ?? maxTotalBytes
  const maxRatio = limits.maxRatio ?? 200

  const zip = await openZip(Buffer.from(zipBytes.buffer, zipBytes.byteOffset, zipBytes.byteLength))
  const created: string[] = []
  try {
    const entries = await readAllEntries(zip, maxEntries)

    // Pass 1: decide everything from the central directory.
    const plan: Array<{ entry: yauzl.Entry; path: string; kind: 'file' | 'dir' }> = []
    const seen = new Set<string>()
    let declaredTotal = 0
    for (const entry of entries) {
      const path = checkName(entry.fileName)
      const kind = kindOf(entry)
      if (kind === 'link') throw new PayloadArchiveError(`archive entry ${entry.fileName} is a symbolic link`)
      if (kind === 'special')
        throw new PayloadArchiveError(`archive entry ${entry.fileName} is a device, fifo or socket`)
      if (entry.isEncrypted()) throw new PayloadArchiveError(`archive entry ${entry.fileName} is encrypted`)
      if (seen.has(path)) throw new PayloadArchiveError(`archive has a duplicate entry ${path}`)
      seen.add(path)
      if (kind === 'file') {
        if (entry.uncompressedSize > maxEntryBytes) {
          throw new PayloadArchiveError(
            `archive entry ${path} is ${entry.uncompressedSize} bytes, over the limit of ${maxEntryBytes}`,
          )
        }
        declaredTotal += entry.uncompressedSize
        if (declaredTotal > maxTotalBytes) {
          throw new PayloadArchiveError(`archive expands to more than the limit of ${maxTotalBytes} bytes`)
        }
        const ratio = entry.uncompressedSize / Math.max(1, entry.compressedSize)
        if (entry.uncompressedSize > RATIO_MIN_SIZE && ratio > maxRatio) {
          throw new PayloadArchiveError(
            `archive entry ${path} is over-compressed (ratio ${Math.round(ratio)} > ${maxRatio}): possible zip bomb`,
          )
        }
      }
      plan.push({ entry, path, kind })
    }
    for (const p of plan) {
      // a file may not be used as a directory by another entry (and vice versa)
      const parts = p.path.split('/')
      for (let i = 1; i < parts.length; i++) {
        const prefix = parts.slice(0, i).join('/')
        if (plan.some((q) => q.kind === 'file' && q.path === prefix)) {
          throw new PayloadArchiveError(`archive entry ${p.path} lies below the file ${prefix}`)
        }
      }
    }

    // Pass 2: write, never outside the real destination.
    await mkdir(destDir, { recursive: true, mode: 0o700 })
    const root = await realpath(destDir)
    const inside = async (target: string): Promise<void> => {
      const real = await realpath(target)
      if (real !== root && !real.startsWith(root + sep)) {
        throw new PayloadArchiveError(
          `refusing to write through ${relative(root, target)}: it resolves outside the destination`,
        )
      }
    }
    const ensureDir = async (relDir: string): Promise<void> => {
      let current = root
      for (const part of relDir.split('/').filter(Boolean)) {
        current = join(current, part)
        try {
          await mkdir(current, { mode: 0o700 })
          created.push(current)
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
        }
        await inside(current)
      }
    }
    const files: string[] = []
    let written = 0
    for (const { entry, path, kind } of plan) {
      if (kind === 'dir') {
        await ensureDir(path)
        continue
      }
      const parent = dirname(path)
      if (parent !== '.') await ensureDir(parent)
      const target = resolve(root, path)
      let handle: FileHandle
      try {
        handle = await open(
          target,
          constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
          0o600,
        )
      } catch (cause) {
        throw new PayloadArchiveError(
          `cannot create ${path} in the destination (already exists or not a plain path)`,
          { cause },
        )
      }
      created.push(target)
      try {
        const stream = await openEntryStream(zip, entry)
        let entryBytes = 0
        for await (const chunk of stream as AsyncIterable<Buffer>) {
          entryBytes += chunk.length
          written += chunk.length
          if (entryBytes > maxEntryBytes || written > maxTotalBytes) {
            ;(stream as unknown as { destroy(): void }).destroy()
            throw new PayloadArchiveError(
              `archive entry ${path} expands beyond the size limits: possible zip bomb`,
            )
          }
          await handle.write(chunk)
        }
      } catch (err) {
        if (err instanceof PayloadArchiveError) throw err
        throw new PayloadArchiveError(`archive entry ${path} is corrupt: ${(err as Error).message}`, {
          cause: err,
        })
      } finally {
        await handle.close()
      }
      files.push(path)
    }
    return { files, totalBytes: written }
  } catch (err) {
    for (const path of created.reverse())
      await rm(path, { recursive: true, force: true }).catch(() => undefined)
    throw err
  } finally {
    zip.close()
  }
}
