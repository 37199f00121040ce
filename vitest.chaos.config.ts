import { defineConfig } from 'vitest/config'

// The chaos suite (`npm run test:chaos`): real verifier processes under SIGKILL and database faults. Kept out of
// `npm test` because each file runs for a minute or more; CI runs it after the main suite.
export default defineConfig({
  test: {
    include: ['test/chaos/**/*.chaos.ts'],
    testTimeout: 180_000,
    hookTimeout: 60_000,
    pool: 'forks',
    poolOptions: { forks: { maxForks: 1, minForks: 1 } },
    reporters: ['default'],
  },
})
