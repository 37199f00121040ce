/**
 * Issue: a public `POST /verify/evidence` with a caller-made quote, a runtime policy whose `excludes` backtracks
 * exponentially (`/(a+)+$`) and one IMA entry for `/aaaa…a!` froze the verifier for seconds per extra `a`.
 */
import { createHash } from 'node:crypto'
import { connect } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type SimFleet, startSimFleet } from '../../../bench/fleet-agents.ts'
import { SoftQuoter } from '../../../bench/fleet-quoter.ts'
import { emptyRuntimePolicy, formatImaNgEntry } from '../../../src/evidence/ima/index.ts'
import { ADMIN, enrollBody, makeVerifier, waitFor } from '../../unit/verifier/harness.ts'

let v: Awaited<ReturnType<typeof makeVerifier>>
beforeAll(async () => {
  v = await makeVerifier()
  // the first evaluation would also wait for the evidence workers to load
  const warmUp = await v.app.inject({
    method: 'POST',
    url: '/v2.6/verify/evidence',
    payload: evidence('/x', []),
  })
  expect(warmUp.statusCode).toBe(200)
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

describe('POST /verify/evidence rate limit', () => {
  it('answers 429 with Retry-After in the envelope once a source has used its budget, before reading the body', async () => {
    const limited = await makeVerifier({ evidenceRateLimit: { limit: 3, windowMs: 60_000 } })
    try {
      const codes: number[] = []
      for (let i = 0; i < 5; i++) {
        const res = await limited.app.inject({
          method: 'POST',
          url: '/v2.6/verify/evidence',
          payload: evidence('/x', []),
        })
        codes.push(res.statusCode)
        if (res.statusCode === 429) {
          expect(res.json()).toMatchObject({ code: 429, results: {} })
          expect(Number(res.headers['retry-after'])).toBeGreaterThan(0)
        }
      }
      expect(codes).toEqual([200, 200, 200, 429, 429])
      // another source has its own budget
      const other = await limited.app.inject({
        method: 'POST',
        url: '/v2.6/verify/evidence',
        remoteAddress: '10.0.0.7',
        payload: evidence('/x', []),
      })
      expect(other.statusCode).toBe(200)
    } finally {
      await limited.app.close()
    }
  })
  it('answers the v3 route in JSON:API (errors document, its media type) with Retry-After', async () => {
    const limited = await makeVerifier({ evidenceRateLimit: { limit: 1, windowMs: 60_000 } })
    try {
      const post = (url: string) =>
        limited.app.inject({
          method: 'POST',
          url,
          headers: { 'content-type': 'application/vnd.api+json' },
          payload: { data: { type: 'evidence_verification', attributes: {} } },
        })
      expect((await post('/v3/verify/evidence')).statusCode).not.toBe(429)
      for (const url of ['/v3/verify/evidence', '/v3.0/verify/evidence']) {
        const res = await post(url)
        expect(res.statusCode).toBe(429)
        expect(res.headers['content-type']).toContain('application/vnd.api+json')
        expect(Number(res.headers['retry-after'])).toBeGreaterThan(0)
        expect(res.json()).toEqual({
          errors: [
            {
              status: '429',
              code: 'too_many_requests',
              detail: expect.stringMatching(/^Too many evidence requests from this address; retry in \d+ s$/),
            },
          ],
        })
      }
      // the v2 route of the same source keeps the v2 envelope
      const v2 = await post('/v2.6/verify/evidence')
      expect(v2.statusCode).toBe(429)
      expect(v2.json()).toMatchObject({ code: 429, results: {} })
    } finally {
      await limited.app.close()
    }
  })
})

/**
 * Sends a `bytes`-long body of `{}` repeated to `path` over a real socket for at most `ms`, as fast as the server takes
 * it; resolves with the status line the server answered (or '' if none) and how much was sent.
 */
function floodBody(
  port: number,
  path: string,
  bytes: number,
  ms: number,
): Promise<{ status: string; sent: number }> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1')
    let answer = ''
    let sent = 0
    const chunk = Buffer.from('{}'.repeat(512 * 1024)) // 1 MiB
    const stopAt = Date.now() + ms
    const finish = () => {
      socket.destroy()
      resolve({ status: answer.split('\r\n')[0] ?? '', sent })
    }
    socket.on('data', (d) => (answer += d.toString()))
    socket.on('error', finish)
    socket.on('close', finish)
    socket.on('connect', () => {
      socket.write(
        `POST ${path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${bytes}\r\n\r\n`,
      )
      const pump = () => {
        while (sent < bytes && Date.now() < stopAt && answer === '') {
          sent += chunk.length
          if (!socket.write(chunk)) return void socket.once('drain', pump)
        }
        setTimeout(finish, 200)
      }
      pump()
    })
  })
}

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

    // 100 MB bodies without a client certificate to an admin route, and to the public evidence route
    await attesting.app.listen({ port: 0, host: '127.0.0.1' })
    const port = (attesting.app.server.address() as { port: number }).port
    const flood0 = quotes()
    const floods = Promise.all([
      floodBody(port, '/v2.6/agents/flood', 100 * 1024 * 1024, windowMs),
      floodBody(port, '/v2.6/verify/evidence', 100 * 1024 * 1024, windowMs),
    ])
    await sleep(windowMs)
    const flooded = quotes() - flood0
    const [admin, evidenceFlood] = await floods
    expect(admin.status).toMatch(/ 403 /)
    expect(evidenceFlood.status).toMatch(/ 413 /)
    expect(flooded / quiet, `${flooded} attestations while flooded, ${quiet} before`).toBeGreaterThanOrEqual(
      0.9,
    )
  }, 90_000)
})
