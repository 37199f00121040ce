/** Digests of the regular files of a root filesystem (`policy create runtime --rootfs`). */
import { lstatSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { type FileHashAlg, FileHashPool } from './hash-pool.ts'

/** Upstream's default `--skip-path`: pseudo filesystems, mounts and variable data are never in a policy. */
export const DEFAULT_ROOTFS_SKIP = [
  '/sys',
  '/run',
  '/proc',
  '/lost+found',
  '/dev',
  '/media',
  '/snap',
  '/mnt',
  '/var',
  '/tmp',
] as const

export interface RootfsOptions {
  alg: FileHashAlg
  /** Paths inside the root to leave out, with everything under them. */
  skip?: readonly string[]
  workers?: number
  /** Called as files are hashed (for a progress line). */
  onProgress?: (hashed: number, lastPath: string) => void
}

/** Regular files under `root` as [absolute host path, path inside the root]; unreadable directories are skipped. */
function* regularFiles(root: string, skip: readonly string[]): Generator<[string, string]> {
  const stack: [string, string][] = [[root, '']]
  while (stack.length > 0) {
    const [dir, inRoot] = stack.pop() as [string, string]
    let names: string[]
    try {
      names = readdirSync(dir)
    } catch {
      continue // unreadable directory: skipped, as upstream does
    }
    for (const name of names) {
      const full = join(dir, name)
      const rel = `${inRoot}/${name}`
      if (skip.some((s) => rel === s || rel.startsWith(`${s}/`))) continue
      const st = lstatSync(full, { throwIfNoEntry: false })
      if (!st) continue
      if (st.isDirectory()) stack.push([full, rel])
      else if (st.isFile()) yield [full, rel]
    }
  }
}

/**
 * `[path inside the root, hex digest]` of every readable regular file under `root`, sorted by path. Spaces in paths
 * become `_`, as the IMA list writes them.
 */
export async function rootfsDigests(root: string, options: RootfsOptions): Promise<[string, string][]> {
  const skip = (options.skip ?? DEFAULT_ROOTFS_SKIP).map((s) => s.replace(/\/+$/, ''))
  const inRoot = new Map<string, string>()
  const hostPaths = (function* () {
    for (const [full, rel] of regularFiles(root, skip)) {
      inRoot.set(full, rel)
      yield full
    }
  })()
  const out: [string, string][] = []
  const pool = new FileHashPool({ workers: options.workers })
  try {
    await pool.hashAll(hostPaths, options.alg, (full, digest) => {
      const rel = inRoot.get(full) as string
      inRoot.delete(full)
      if (digest === null) return // unreadable file: skipped
      out.push([rel.replaceAll(' ', '_'), digest])
      options.onProgress?.(out.length, rel)
    })
  } finally {
    await pool.close()
  }
  return out.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
}
