import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { cruise, type ICruiseResult } from 'dependency-cruiser'
import extractDepcruiseOptions from 'dependency-cruiser/config-utl/extract-depcruise-options'
import { describe, expect, it } from 'vitest'

const ROOT = join(import.meta.dirname, '../..')

/** TypeScript files under `dir` (relative to the repository), this file excepted (it names what it looks for). */
function testFiles(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts'))
    .map((f) => join(dir, f))
    .filter((f) => f !== 'test/unit/architecture.test.ts')
}

describe('architecture', () => {
  it('keeps imports one-way (tpm and evidence import no service)', async () => {
    const options = await extractDepcruiseOptions(join(ROOT, '.dependency-cruiser.cjs'))
    const { output } = await cruise([join(ROOT, 'src')], { ...options, baseDir: ROOT })
    const result = output as ICruiseResult
    expect(result.summary.totalCruised).toBeGreaterThan(0)
    expect(result.summary.violations).toEqual([])
  })

  it('test/unit starts no process, TPM or database server (those tests live in e2e, tpm, db or api)', () => {
    const starters =
      /node:child_process|helpers\/swtpm\.ts|devtools\/swtpm\.ts|devtools\/local-cluster\.ts|KEYLIME_TEST_PG_URL|from 'pg'|KEYLIME_TEST_MYSQL_URL|from 'mysql2|helpers\/(mysql|db-servers)\.ts/
    const offenders = testFiles('test/unit').filter((f) => starters.test(readFileSync(join(ROOT, f), 'utf8')))
    expect(offenders).toEqual([])
  })

  it('only test/corpus reads the shared corpus (npm test runs without it)', () => {
    const readers = ['test', 'bench']
      .flatMap(testFiles)
      .filter((f) => !f.startsWith('test/corpus/') && !f.startsWith('bench/'))
      .filter((f) =>
        /corpus\/fixture\.ts|shared\/testdata|KEYLIME_TESTDATA/.test(readFileSync(join(ROOT, f), 'utf8')),
      )
    expect(readers).toEqual([])
  })
})
