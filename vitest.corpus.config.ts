import { existsSync } from 'node:fs'
import { defineConfig } from 'vitest/config'
import { TESTDATA_DIR } from './test/corpus/fixture.ts'

/** `npm run test:corpus`: checks against real machines' logs and upstream's vectors, read in place. */
if (!existsSync(TESTDATA_DIR)) {
  console.error(
    `test:corpus: no test data at ${TESTDATA_DIR} (set KEYLIME_TESTDATA to the folder of the shared test corpus)`,
  )
  process.exit(2)
}

export default defineConfig({
  test: {
    include: ['test/corpus/**/*.test.ts'],
    globalSetup: ['test/global-tmpdir.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    reporters: ['default'],
    // `keylime` processes the tests start run src/ through tsx, never a possibly stale dist/.
    env: { KEYLIME_FROM_SOURCE: '1' },
  },
})
