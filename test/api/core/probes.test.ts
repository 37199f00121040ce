/**
 * The shared probe routes: `/healthz` answers regardless of the checks, `/readyz` answers 503 naming (only) the
 * failing checks, a check that throws or hangs fails within the timeout, concurrent probes share one run, `/metrics`
 * is an admin route on a service listener, labels stay bounded, and the agent's readiness asks the TPM when no quote
 * succeeded recently.
 */
import { Counter, Registry } from 'prom-client'
import { describe, expect, it } from 'vitest'
import { AgentMetrics, agentReadiness } from '../../../src/agent/metrics.ts'
import { BoundedLabel } from '../../../src/api/metrics.ts'
import {
  createKeylimeServer,
  READINESS_TIMEOUT_MS,
  type ReadinessCheck,
  startProbeListener,
} from '../../../src/api/server.ts'

function server(readiness: ReadinessCheck, metrics?: Registry) {
  return createKeylimeServer({ probes: { readiness, metrics } })
}

describe('probe routes', () => {
  it('healthz answers while readiness fails; readyz names the failing check and nothing else', async () => {
    const app = server(async () => ({ database: true, migrations: false }))
    const health = await app.inject({ url: '/healthz' })
    expect(health.statusCode).toBe(200)
    expect(health.json()).toEqual({ status: 'ok' })
    const ready = await app.inject({ url: '/readyz' })
    expect(ready.statusCode).toBe(503)
    expect(ready.headers['cache-control']).toBe('no-store')
    expect(ready.json()).toEqual({ status: 'not ready', checks: { database: 'ok', migrations: 'failing' } })
    await app.close()
  })

  it('a check that throws fails without its message; one that hangs fails after the timeout', async () => {
    const thrown = server(async () => {
      throw new Error('postgresql://user:secret@db/keylime refused')
    })
    const r = await thrown.inject({ url: '/readyz' })
    expect(r.statusCode).toBe(503)
    expect(r.body).not.toContain('secret')
    expect(r.json()).toEqual({ status: 'not ready', checks: { checks: 'failing' } })
    await thrown.close()

    const hung = server(() => new Promise(() => undefined))
    const t0 = Date.now()
    expect((await hung.inject({ url: '/readyz' })).statusCode).toBe(503)
    expect(Date.now() - t0).toBeGreaterThanOrEqual(READINESS_TIMEOUT_MS - 50)
    expect(Date.now() - t0).toBeLessThan(READINESS_TIMEOUT_MS + 1000)
    await hung.close()
  })

  it('concurrent probes share one run of the checks, later ones run it again', async () => {
    let runs = 0
    const app = server(async () => {
      runs++
      await new Promise((r) => setTimeout(r, 50))
      return { database: true }
    })
    const answers = await Promise.all(Array.from({ length: 20 }, () => app.inject({ url: '/readyz' })))
    expect(answers.every((a) => a.statusCode === 200)).toBe(true)
    expect(runs).toBe(1)
    await app.inject({ url: '/readyz' })
    expect(runs).toBe(2)
    await app.close()
  })

  it('metrics: an admin route on a service listener, open on the probe listener, which serves nothing else', async () => {
    const registry = new Registry()
    new Counter({ name: 'probe_test_total', help: 'test', registers: [registry] }).inc(3)
    const app = server(async () => ({}), registry)
    // plain HTTP reaches no admin route (empty 400)
    expect((await app.inject({ url: '/metrics' })).statusCode).toBe(400)
    await app.close()

    const probe = await startProbeListener({
      host: '127.0.0.1',
      port: 0,
      readiness: async () => ({}),
      metrics: registry,
    })
    const m = await probe.inject({ url: '/metrics' })
    expect(m.statusCode).toBe(200)
    expect(m.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/)
    expect(m.body).toContain('probe_test_total 3')
    expect((await probe.inject({ url: '/openapi.json' })).statusCode).toBe(404)
    expect((await probe.inject({ method: 'POST', url: '/readyz' })).statusCode).toBe(405)
    await probe.close()
  })

  it('without a registry there is no /metrics route', async () => {
    const app = server(async () => ({}))
    expect((await app.inject({ url: '/metrics' })).statusCode).toBe(404)
    await app.close()
  })
})

describe('bounded labels', () => {
  it('passes the first values, maps later and odd ones to other', () => {
    const label = new BoundedLabel(2)
    expect(label.value('a.b')).toBe('a.b')
    expect(label.value('c')).toBe('c')
    expect(label.value('d')).toBe('other')
    expect(label.value('a.b')).toBe('a.b')
    expect(new BoundedLabel(5).value('has space')).toBe('other')
    expect(new BoundedLabel(5).value('x'.repeat(81))).toBe('other')
  })
})

describe('agent readiness', () => {
  it('asks the TPM when no quote succeeded recently; a failing TPM is not ready; a quote makes it ready', async () => {
    const metrics = new AgentMetrics()
    let asked = 0
    const failing = agentReadiness(metrics, async () => {
      asked++
      throw new Error('TPM_RC_FAILURE')
    })
    expect(await failing()).toEqual({ tpm: false })
    expect(asked).toBe(1)
    await expect(
      metrics.timeQuote('identity', async () => {
        throw new Error('TPM gone')
      }),
    ).rejects.toThrow('TPM gone')
    expect(await failing()).toEqual({ tpm: false })
    expect(await metrics.timeQuote('integrity', async () => 'quote')).toBe('quote')
    expect(await failing()).toEqual({ tpm: true })
    expect(asked).toBe(2)
    metrics.stop()
  })
})
