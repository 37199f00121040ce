/**
 * The agent's own Prometheus writer against prom-client, which the registrar and verifier use: the same metric
 * families (names, types, help texts, label names) as prom-client's default process metrics, the quote histogram
 * rendered line for line as prom-client renders it, label values escaped, the event loop sampled from the first
 * scrape on.
 */
import { collectDefaultMetrics, Histogram as PromHistogram, Registry } from 'prom-client'
import { afterAll, describe, expect, it } from 'vitest'
import { AgentMetrics } from '../../../src/agent/metrics.ts'
import { Histogram, renderFamilies } from '../../../src/agent/prometheus.ts'

/** Each family of an exposition text: its HELP, TYPE and the label names its samples carry. */
function families(text: string): Map<string, { help: string; type: string; labels: string[] }> {
  const out = new Map<string, { help: string; type: string; labels: Set<string> }>()
  for (const line of text.split('\n')) {
    const help = /^# HELP (\S+) (.*)$/.exec(line)
    if (help) out.set(help[1] as string, { help: help[2] as string, type: '', labels: new Set() })
    const type = /^# TYPE (\S+) (\S+)$/.exec(line)
    if (type) (out.get(type[1] as string) as { type: string }).type = type[2] as string
    const sample = /^([a-z_]+?)(_bucket|_sum|_count)?(\{(.*)\})? \S+$/.exec(line)
    if (sample && !line.startsWith('#')) {
      const family = out.get(sample[1] as string) ?? out.get(`${sample[1]}${sample[2] ?? ''}`)
      if (!family) throw new Error(`sample without a family: ${line}`)
      for (const m of (sample[4] ?? '').matchAll(/(\w+)="/g)) family.labels.add(m[1] as string)
    }
  }
  return new Map([...out].map(([k, v]) => [k, { ...v, labels: [...v.labels].sort() }]))
}

const agent = new AgentMetrics()
afterAll(() => agent.stop())

describe('agent Prometheus writer', () => {
  it('exports the families of prom-client default metrics with the same names, types, help and labels', async () => {
    const registry = new Registry()
    collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 10 })
    // a GC so both sides have a gc histogram sample
    await agent.timeQuote('identity', async () => 'q')
    await new Promise((r) => setTimeout(r, 50))
    const first = await agent.metrics()
    // the event loop is sampled from the first scrape on: no delay samples yet, the families are there
    expect(first).toContain('# TYPE nodejs_eventloop_lag_p99_seconds gauge')
    expect(first).not.toMatch(/^nodejs_eventloop_lag_p99_seconds /m)
    await new Promise((r) => setTimeout(r, 50))
    const second = await agent.metrics()
    const ours = families(second)
    const theirs = families(await registry.metrics())
    expect([...ours.keys()].sort()).toEqual([...theirs.keys(), 'keylime_agent_quote_duration_seconds'].sort())
    for (const [name, f] of theirs) {
      const o = ours.get(name)
      expect({ name, help: o?.help, type: o?.type }).toEqual({ name, help: f.help, type: f.type })
      // label names agree wherever both sides have samples (prom-client omits empty groups as we do)
      if (f.labels.length > 0 && (o?.labels.length ?? 0) > 0) expect(o?.labels, name).toEqual(f.labels)
    }
    expect(agent.contentType).toBe(registry.contentType)
    const text = second
    const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1])
    expect(value('process_resident_memory_bytes')).toBeGreaterThan(10 * 2 ** 20)
    expect(value('nodejs_heap_size_used_bytes')).toBeGreaterThan(2 ** 20)
    expect(value('nodejs_active_handles_total')).toBeGreaterThanOrEqual(0)
    expect(value('process_open_fds')).toBeGreaterThan(2)
    // sampled at 10 ms resolution since the previous scrape
    expect(value('nodejs_eventloop_lag_p99_seconds')).toBeGreaterThan(0)
    expect(value('nodejs_eventloop_lag_p99_seconds')).toBeLessThan(5)
    expect(text).toMatch(
      /^nodejs_version_info\{version="v\d+\.\d+\.\d+",major="\d+",minor="\d+",patch="\d+"\} 1$/m,
    )
  })

  it('renders a labelled histogram exactly as prom-client does', async () => {
    const buckets = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    const registry = new Registry()
    const theirs = new PromHistogram({
      name: 'keylime_agent_quote_duration_seconds',
      help: 'Time to answer',
      labelNames: ['kind', 'outcome'],
      buckets,
      registers: [registry],
    })
    const ours = new Histogram('keylime_agent_quote_duration_seconds', 'Time to answer', buckets)
    const observations: [Record<string, string>, number][] = [
      [{ kind: 'identity', outcome: 'ok' }, 0.003],
      [{ kind: 'identity', outcome: 'ok' }, 0.01],
      [{ kind: 'integrity', outcome: 'error' }, 0.7],
      [{ kind: 'identity', outcome: 'ok' }, 12],
    ]
    for (const [labels, v] of observations) {
      theirs.observe(labels, v)
      ours.observe(labels, v)
    }
    expect(renderFamilies([ours.family()])).toBe(await registry.metrics())
    expect(renderFamilies([new Histogram('empty_seconds', 'None yet', [1]).family()])).toBe(
      '# HELP empty_seconds None yet\n# TYPE empty_seconds histogram\n',
    )
  })

  it('escapes help texts and label values', () => {
    const text = renderFamilies([
      {
        name: 'x',
        help: 'a\\b\nc',
        type: 'gauge',
        samples: [{ labels: { v: 'q"\\\n' }, value: Number.NaN }],
      },
    ])
    expect(text).toBe('# HELP x a\\\\b\\nc\n# TYPE x gauge\nx{v="q\\"\\\\\\n"} Nan\n')
  })
})
