import { configDefaults, defineConfig } from 'vitest/config'

/** `npm test`: everything the project can check on its own (the real-world corpus runs in `npm run test:corpus`). */
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: [...configDefaults.exclude, 'test/corpus/**'],
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
