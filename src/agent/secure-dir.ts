/**
 * The agent's secure directory (`keylime_dir/secure`): K, the decrypted payload and what it unpacks live only in
 * memory. Started as root the agent mounts a tmpfs of `secure_size` there (as upstream); otherwise the directory
 * must already be a tmpfs mount (checked by filesystem magic), or start-up fails, unless the development-only
 * `secure_dir_allow_disk` says a disk-backed directory is acceptable.
 */
import { execFile } from 'node:child_process'
import {
  closeSync,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  rmSync,
  statfsSync,
  writeSync,
} from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { Logger } from '../common/log.ts'
import { parseSecureSize, SecureDirError } from './option-checks.ts'

export { parseSecureSize, SecureDirError }

const execFileAsync = promisify(execFile)

/** statfs f_type of tmpfs (linux/magic.h TMPFS_MAGIC). */
export const TMPFS_MAGIC = 0x01021994

export function isTmpfs(path: string): boolean {
  return Number(statfsSync(path).type) === TMPFS_MAGIC
}

export interface SecureDir {
  path: string
  /** `tmpfs-mounted` (this agent mounted it), `tmpfs-existing` (verified), `disk` (insecure opt-out). */
  kind: 'tmpfs-mounted' | 'tmpfs-existing' | 'disk'
  /** Overwrites and deletes everything inside; the mount itself stays. */
  wipe(): void
  /** Wipes, then unmounts when this agent mounted it and still may. */
  close(): Promise<void>
}

export interface PrepareSecureDirOptions {
  path: string
  secureSize: string
  allowDisk: boolean
  log: Logger
  /** Effective uid (tests pass a non-root uid to check the refusal path). */
  uid?: number
}

/** Mounts or verifies the tmpfs at `path`; throws `SecureDirError` when secrets would land on disk. */
export async function prepareSecureDir(o: PrepareSecureDirOptions): Promise<SecureDir> {
  const size = parseSecureSize(o.secureSize)
  mkdirSync(o.path, { recursive: true, mode: 0o700 })
  const uid = o.uid ?? process.geteuid?.() ?? -1
  let kind: SecureDir['kind']
  if (isTmpfs(o.path)) {
    kind = 'tmpfs-existing'
    o.log.info(`secure directory ${o.path} is on tmpfs`)
  } else if (uid === 0) {
    try {
      await execFileAsync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', o.path])
    } catch (err) {
      throw new SecureDirError(
        `cannot mount a tmpfs on the secure directory ${o.path}: ${(err as Error).message.trim()}`,
        { cause: err },
      )
    }
    if (!isTmpfs(o.path)) throw new SecureDirError(`mounting a tmpfs on ${o.path} did not take effect`)
    kind = 'tmpfs-mounted'
    o.log.info(`mounted a tmpfs of ${size} on the secure directory ${o.path}`)
  } else if (o.allowDisk) {
    kind = 'disk'
    o.log.warn(
      `INSECURE: secure directory ${o.path} is on a disk-backed filesystem (secure_dir_allow_disk = true); ` +
        'payload keys and decrypted payloads may persist on disk. For development only.',
    )
  } else {
    throw new SecureDirError(
      `the secure directory ${o.path} is not a tmpfs and this agent is not root, so it cannot mount one: ` +
        `start the agent as root, or mount a tmpfs there first (mount -t tmpfs -o size=${size},mode=0700 tmpfs ` +
        `${o.path}); secure_dir_allow_disk = true accepts a disk directory for development only`,
    )
  }
  let mounted = kind === 'tmpfs-mounted'
  const dir: SecureDir = {
    path: o.path,
    kind,
    wipe: () => wipeContents(o.path),
    async close() {
      wipeContents(o.path)
      if (!mounted) return
      if ((process.geteuid?.() ?? -1) !== 0) {
        o.log.info(`secure directory ${o.path} wiped; left mounted (no longer root to unmount it)`)
        return
      }
      try {
        await execFileAsync('umount', [o.path])
        mounted = false
        o.log.info(`secure directory ${o.path} wiped and unmounted`)
      } catch (err) {
        o.log.warn(`secure directory ${o.path} wiped but not unmounted: ${(err as Error).message.trim()}`)
      }
    },
  }
  return dir
}

/** Overwrites each regular file with zeros before unlinking it, then removes everything under `dir`. */
export function wipeContents(dir: string): void {
  let names: string[]
  try {
    names = readdirSync(dir)
  } catch {
    return
  }
  for (const name of names) {
    const p = join(dir, name)
    const st = lstatSync(p)
    if (st.isDirectory()) wipeContents(p)
    else if (st.isFile()) zeroFile(p)
    rmSync(p, { recursive: true, force: true })
  }
}

function zeroFile(path: string): void {
  let fd: number
  try {
    fd = openSync(path, 'r+')
  } catch {
    return
  }
  try {
    const size = fstatSync(fd).size
    const zeros = Buffer.alloc(Math.min(size, 1 << 16))
    for (let off = 0; off < size; off += zeros.length) {
      writeSync(fd, zeros, 0, Math.min(zeros.length, size - off), off)
    }
  } finally {
    closeSync(fd)
  }
}
