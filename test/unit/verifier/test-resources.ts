/** Simulated fleets and started verifiers for the loop tests, each closed after the test that made it. */
import { afterEach } from 'vitest'
import { type SimFleet, startSimFleet } from '../../../bench/fleet-agents.ts'
import { makeVerifier, type TestVerifier } from './harness.ts'

/**
 * Registers an `afterEach` that runs, newest first, the cleanups of what the returned functions made and whatever
 * else a test pushes to `cleanups`.
 */
export function testResources() {
  const cleanups: (() => Promise<void>)[] = []
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c()
  })

  /** `http`: the simulated agents' HTTP server (node:http, or the fleet benchmark's lean one). */
  async function fleet(count: number, http: 'node' | 'lean' = 'node'): Promise<SimFleet> {
    const f = await startSimFleet({ count, http })
    cleanups.push(() => f.close())
    return f
  }

  /** A verifier whose attestation loop is running. */
  async function startVerifier(...args: Parameters<typeof makeVerifier>): Promise<TestVerifier> {
    const v = await makeVerifier(...args)
    await v.service.start()
    cleanups.push(async () => {
      await v.service.stop()
      await v.app.close()
    })
    return v
  }

  return { cleanups, fleet, startVerifier }
}
