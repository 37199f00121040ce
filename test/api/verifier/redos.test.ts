/**
 * Issue: a public `POST /verify/evidence` with a caller-made quote, a runtime policy whose `excludes` backtracks
 * exponentially (`/(a+)+$`) and one IMA entry for `/aaaa…a!` froze the verifier for seconds per extra `a`.
 */
import { createHash } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type SimFleet, startSimFleet } from '../../../bench/fleet-agents.ts'
import { SoftQuoter } from '../../../bench/fleet-quoter.ts'
import { emptyRuntimePolicy, formatImaNgEntry } from '../../../src/evidence/ima/index.ts'
import { ADMIN, enrollBody, makeVerifier, waitFor } from '../../unit/verifier/harness.ts'

let v: Awaited<ReturnType<typeof makeVerifier>>
beforeAll(async () => {
  v = await makeVerifier()
})
afterAll(async () => {
  await v.app.close()
})

/** Evidence for one IMA entry at `path`, quoted over PCR 10 by an AK the caller made. */
function evidence(path: string, excludes: string[]) {
  const quoter = new SoftQuoter({ keyType: 'rsa' })
  const entry = formatImaNgEntry(path, createHash('sha256').update('content').digest(), 'sha256')
  quoter.extendDigest(10, entry.templateDigests[quoter.hashAlg])
  const policy = emptyRuntimePolicy()
  policy.excludes = excludes
  return {
    type: 'tpm',
    data: {
      quote: quoter.quote('redos', [10]),
      nonce: 'redos',
      hash_alg: quoter.hashAlg,
      tpm_ek: 'unused',
      tpm_ak: quoter.akTpm,
      runtime_policy: JSON.stringify(policy),
      ima_measurement_list: `${entry.line}\n`,
    },
  }
}

describe('POST /verify/evidence with a hostile exclude pattern', () => {
  const hostilePath = `/${'a'.repeat(20_000)}!`

  it('answers within milliseconds, with the verdict the pattern gives', async () => {
    const started = performance.now()
    const res = await v.app.inject({
      method: 'POST',
      url: '/v2.6/verify/evidence',
      payload: evidence(hostilePath, ['/(a+)+$']),
    })
    const elapsed = performance.now() - started
    expect(res.statusCode, res.body).toBe(200)
    // Not excluded (the path ends in `!`), not in the policy: the IMA check fails for that reason.
    expect(res.json().results.valid).toBe(false)
    expect(res.json().results.failures.map((f: { type: string }) => f.type)).toEqual([
      'ima.validation.ima-ng.not_in_allowlist',
    ])
    expect(elapsed).toBeLessThan(1000)

    const excluded = await v.app.inject({
      method: 'POST',
      url: '/v2.6/verify/evidence',
      payload: evidence(hostilePath, ['/(a+)+!$']),
    })
    expect(excluded.json().results).toMatchObject({ valid: true, failures: [] })
  })

  it.each([
    ['(a)\\1', 'backreference'],
    ['/x(?=y)', 'lookahead'],
  ])('refuses %s with a 400 naming the pattern', async (pattern, reason) => {
    const res = await v.app.inject({
      method: 'POST',
      url: '/v2.6/verify/evidence',
      payload: evidence('/x', [pattern]),
    })
    expect(res.statusCode).toBe(400)
    expect(res.json().status).toContain(`excludes[0]: ${JSON.stringify(pattern)}`)
    expect(res.json().status).toContain(reason)
  })
})

describe('attestations continue during the hostile request', () => {
  let fleet: SimFleet
  let attesting: Awaited<ReturnType<typeof makeVerifier>>
  beforeAll(async () => {
    fleet = await startSimFleet({ count: 100, shareKeys: true })
    attesting = await makeVerifier({ quoteIntervalMs: 500 })
    await attesting.service.start()
  })
  afterAll(async () => {
    await attesting?.service.stop()
    await attesting?.app.close()
    await fleet?.close()
  })

  const quotes = () => fleet.agents.reduce((n, a) => n + a.quotes, 0)
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

  it('100 simulated agents keep at least 90% of their attestation rate', async () => {
    for (const a of fleet.agents) {
      const res = await attesting.app.inject({
        method: 'POST',
        url: `/v2.6/agents/${a.id}`,
        headers: ADMIN,
        payload: enrollBody(a, fleet.port),
      })
      expect(res.statusCode, res.body).toBe(200)
    }
    await waitFor(() => fleet.agents.every((a) => a.quotes >= 2), 30_000, 'every agent attested')
    const windowMs = 5000

    const quiet0 = quotes()
    await sleep(windowMs)
    const quiet = quotes() - quiet0

    // One hostile request per second through the window; with a backtracking engine one stalled the verifier.
    const hostile = evidence(`/${'a'.repeat(20_000)}!`, ['/(a+)+$'])
    const busy0 = quotes()
    const started = Date.now()
    const answers: number[] = []
    while (Date.now() - started < windowMs) {
      const res = await attesting.app.inject({
        method: 'POST',
        url: '/v2.6/verify/evidence',
        payload: hostile,
      })
      answers.push(res.statusCode)
      await sleep(1000)
    }
    const busy = quotes() - busy0

    expect(answers.every((code) => code === 200)).toBe(true)
    expect(quiet).toBeGreaterThan(500) // ~100 agents every 0.5 s over 5 s, less each attestation's own time
    expect(busy / quiet, `${busy} attestations under attack, ${quiet} before`).toBeGreaterThanOrEqual(0.9)
  }, 90_000)
})
