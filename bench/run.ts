/**
 * `npm run bench`: runs every benchmark in its own process, one after another (so they do not compete for the
 * two cores), and prints their output. `npm run bench -- quote ima` runs only the named ones.
 */
import { spawnSync } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const BENCHES: Record<string, string[]> = {
  'tpm-structures': ['tpm-structures.ts', '2'],
  quote: ['quote.ts', '2'],
  crypto: ['crypto.ts', '1'],
  ima: ['ima.ts'],
  'evidence-pool': ['evidence-pool.ts'],
  mb: ['mb.ts'],
  registrar: ['registrar.ts', '3'],
  agent: ['agent.ts', '10000'],
  'agent-idle': ['agent-idle.ts', '2'],
  fleet: ['fleet.ts', '--agents', '1000'],
  'push-fleet': ['push-fleet.ts', '--agents', '1000'],
  'agent-connections': ['agent-connections.ts', '--agents', '2000'],
  'fleet-db': ['fleet-db.ts', '--agents', '10000', '--rate', '2500', '--seconds', '60'],
  cli: ['cli.ts', '10'],
  metrics: ['metrics.ts'],
  policy: ['policy.ts', '100000'],
}

const wanted = process.argv.slice(2)
const names = wanted.length > 0 ? wanted : Object.keys(BENCHES)
let failed = 0
for (const name of names) {
  const spec = BENCHES[name]
  if (!spec) {
    process.stderr.write(`unknown benchmark ${name} (one of ${Object.keys(BENCHES).join(', ')})\n`)
    failed++
    continue
  }
  const [file, ...args] = spec as [string, ...string[]]
  process.stdout.write(`\n=== ${name} ===\n`)
  const run = spawnSync(process.execPath, ['--import', 'tsx', join(here, file), ...args], {
    stdio: 'inherit',
  })
  if (run.status !== 0) failed++
}
process.exitCode = failed === 0 ? 0 : 1
