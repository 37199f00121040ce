/**
 * Vitest global set-up: every test run gets its own temporary folder (TMPDIR, inherited by the test workers and
 * every process they start: keylime, swtpm, openssl), removed at the end, so no run leaves folders in /tmp even
 * when a test fails before its own clean-up.
 */
import { chmodSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export default function setup(): () => void {
  const root = mkdtempSync(join(tmpdir(), 'keylime-ts-tests-'))
  // Like /tmp itself: tests that drop privileges (agent run_as nobody) must reach their folders below it.
  chmodSync(root, 0o1777)
  process.env.TMPDIR = root
  return () => rmSync(root, { recursive: true, force: true })
}
