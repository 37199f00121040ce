/**
 * Removing a development work directory: an agent started as root mounts a tmpfs on its secure directory, and one
 * that was killed (SIGKILL) or had dropped root cannot unmount it, so the mounts below the directory go first.
 */
import { spawnSync } from 'node:child_process'
import { readFileSync, rmSync } from 'node:fs'
import { resolve, sep } from 'node:path'

/** Mount points at or below `dir` (from /proc/self/mountinfo), deepest first. */
export function mountsUnder(dir: string): string[] {
  const root = resolve(dir)
  let info: string
  try {
    info = readFileSync('/proc/self/mountinfo', 'utf8')
  } catch {
    return []
  }
  const points = info
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => p !== undefined)
    // mountinfo escapes space, tab, newline and backslash as octal
    .map((p) => p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8))))
    .filter((p) => p === root || p.startsWith(root + sep))
  return [...new Set(points)].sort((a, b) => b.length - a.length)
}

/** Unmounts what is mounted below `dir` (best effort: needs root), then deletes it. */
export function removeWorkDir(dir: string): void {
  for (const point of mountsUnder(dir)) spawnSync('umount', [point], { stdio: 'ignore' })
  rmSync(dir, { recursive: true, force: true })
}
