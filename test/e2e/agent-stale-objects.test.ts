/**
 * An agent starting on a swtpm whose 3 object slots are still held by a killed predecessor (swtpm has no resource
 * manager, so nothing flushes them): the start-up flush frees them, the agent creates its EK and AK, quotes with a
 * signature that verifies, and logs how many objects it flushed.
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadAgentConfig } from '../../src/agent/config.ts'
import { defaultAgentDeps, type RunningAgent, startAgent } from '../../src/agent/runtime.ts'
import { ensureTlsDir } from '../../src/crypto/ca.ts'
import { verifyQuote } from '../../src/evidence/quote/index.ts'
import { createEk, getHandleCounts } from '../../src/tpm/keylime-client.ts'
import { TpmRc, TpmResponseError } from '../../src/tpm/rc.ts'
import { Tpm } from '../../src/tpm/tpm.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

let swtpm: SwtpmInstance
let dir: string
const agents: RunningAgent[] = []

/** A logger whose messages the test can read. */
function capturingLogger() {
  const messages: string[] = []
  const sink = new Writable({
    write(chunk, _enc, done) {
      for (const line of String(chunk).split('\n').filter(Boolean)) messages.push(JSON.parse(line).msg)
      done()
    },
  })
  return { log: pino({ level: 'info' }, sink), messages }
}

function config() {
  return loadAgentConfig({
    configDirs: [],
    env: {},
    overrides: {
      keylime_dir: dir,
      tpm: swtpm.transport,
      ip: '127.0.0.1',
      port: '0',
      uuid: 'generate',
      ima_ml_path: join(dir, 'ascii_runtime_measurements'),
    },
  })
}

async function withClient<T>(fn: (tpm: Tpm) => Promise<T>): Promise<T> {
  const tpm = await Tpm.open(swtpm.transport)
  try {
    return await fn(tpm)
  } finally {
    await tpm.close()
  }
}

beforeAll(async () => {
  swtpm = await startSwtpm()
  dir = mkdtempSync(join(tmpdir(), 'agent-stale-'))
  // the agent's mTLS listener trusts this CA
  await ensureTlsDir(join(dir, 'cv_ca'))
})

afterAll(async () => {
  for (const a of agents) await a.close()
  await swtpm?.stop()
  rmSync(dir, { recursive: true, force: true })
})

describe('agent start-up on a TPM with leftover transient objects', () => {
  it('flushes the 3 objects another client left loaded, then creates its keys and quotes', async () => {
    // Another client fills every object slot and disconnects without flushing, as a SIGKILLed agent does.
    await withClient(async (tpm) => {
      for (let i = 0; i < 3; i++) await createEk(tpm, 'ecc')
      const full = await createEk(tpm, 'ecc').catch((e: unknown) => e)
      expect(full).toBeInstanceOf(TpmResponseError)
      expect((full as TpmResponseError).baseRc).toBe(TpmRc.ObjectMemory)
    })
    expect((await withClient(getHandleCounts)).transient).toBe(3)

    const { log, messages } = capturingLogger()
    const agent = await startAgent({ config: config(), deps: defaultAgentDeps(), log, register: false })
    agents.push(agent)
    expect(messages).toContain('flushed 3 transient TPM object(s) left loaded before this agent started')
    // Only the agent's own EK and AK are loaded now.
    expect((await agent.lock.run(() => agent.tpm.handleCounts())).transient).toBe(2)

    const nonce = 'stale0objects0nonce0'
    const q = await agent.quotes.identity(nonce, '2.6')
    expect(
      verifyQuote({ akPublic: agent.akPublic, quote: q.quote, nonce, hashAlg: 'sha256' }).verdict.ok,
    ).toBe(true)
  })

  it('a clean restart finds nothing to flush and reuses its AK', async () => {
    await (agents.pop() as RunningAgent).close()
    expect((await withClient(getHandleCounts)).transient).toBe(0)
    const { log, messages } = capturingLogger()
    const agent = await startAgent({ config: config(), deps: defaultAgentDeps(), log, register: false })
    agents.push(agent)
    expect(messages).toContain('flushed 0 transient TPM object(s) left loaded before this agent started')
    expect(agent.akReused).toBe(true)
  })
})
