/**
 * Decompression of initrds and repository metadata: gzip in-process, the other formats by the system's own
 * decompressor (Node 20 has no xz, zstd or lz4), fed through a pipe.
 */
import { spawnSync } from 'node:child_process'
import { gunzipSync } from 'node:zlib'

export class DecompressError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'DecompressError'
  }
}

export type Compression = 'gzip' | 'bzip2' | 'xz' | 'zstd' | 'lz4' | 'lzo' | 'lzma'

const MAGICS: readonly [Buffer, Compression][] = [
  [Buffer.from([0x1f, 0x8b]), 'gzip'],
  [Buffer.from('BZh'), 'bzip2'],
  [Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), 'xz'],
  [Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), 'zstd'],
  [Buffer.from([0x04, 0x22, 0x4d, 0x18]), 'lz4'],
  [Buffer.from([0x02, 0x21, 0x4c, 0x18]), 'lz4'], // legacy frame, as the kernel's own lz4 initramfs
  [Buffer.from([0x89, 0x4c, 0x5a, 0x4f, 0x00, 0x0d]), 'lzo'],
  [Buffer.from([0x5d, 0x00, 0x00]), 'lzma'],
]

/** The command that writes the decompressed stream of stdin to stdout, and its Debian package. */
const DECOMPRESSORS: Record<Exclude<Compression, 'gzip'>, [string, string[], string]> = {
  bzip2: ['bzip2', ['-dc'], 'bzip2'],
  xz: ['xz', ['-dc'], 'xz-utils'],
  lzma: ['xz', ['--format=lzma', '-dc'], 'xz-utils'],
  zstd: ['zstd', ['-dcq'], 'zstd'],
  lz4: ['lz4', ['-dc'], 'lz4'],
  lzo: ['lzop', ['-dc'], 'lzop'],
}

export function detectCompression(buf: Buffer, at: number): Compression | undefined {
  for (const [magic, kind] of MAGICS) if (buf.subarray(at, at + magic.length).equals(magic)) return kind
  return undefined
}

export function decompress(data: Buffer, kind: Compression, file: string): Buffer {
  if (kind === 'gzip') {
    try {
      return gunzipSync(data)
    } catch (e) {
      throw new DecompressError(`${file}: gzip data is corrupt (${(e as Error).message})`)
    }
  }
  const [cmd, args, pkg] = DECOMPRESSORS[kind]
  const r = spawnSync(cmd, args, { input: data, maxBuffer: 4 * 1024 * 1024 * 1024 })
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT')
    throw new DecompressError(
      `${file} is ${kind}-compressed and "${cmd}" is not installed (Debian package ${pkg})`,
    )
  if (r.error) throw new DecompressError(`${file}: ${cmd} failed: ${r.error.message}`)
  if (r.status !== 0)
    throw new DecompressError(
      `${file}: ${kind} data is corrupt (${r.stderr.toString('utf8').trim() || `exit ${r.status}`})`,
    )
  return r.stdout
}
