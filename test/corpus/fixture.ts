import { readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * Root of the real-world test corpus (event logs, IMA lists, policies and certificates from real machines and from
 * upstream's tests), read in place and never copied into the project. `npm run test:corpus` checks that it exists.
 */
export const TESTDATA_DIR = resolve(
  process.env.KEYLIME_TESTDATA ?? join(dirname(fileURLToPath(import.meta.url)), '../../../shared/testdata'),
)

export function fixturePath(relative: string): string {
  return join(TESTDATA_DIR, relative)
}

export function fixture(relative: string): Buffer {
  return readFileSync(fixturePath(relative))
}

export function fixtureJson<T = unknown>(relative: string): T {
  return JSON.parse(readFileSync(fixturePath(relative), 'utf8')) as T
}
