/**
 * `bench/fleet.ts --sql-profile 1`: times every PostgreSQL statement the process sends, by statement class (the
 * first words of its text), as count, mean and p99 latency and the most in flight at once. Patches pg's
 * `Client.prototype.query` in this process only; the verifier's code is unchanged.
 */
import pg from 'pg'

interface ClassStats {
  count: number
  totalMs: number
  samples: number[]
  inFlight: number
  maxInFlight: number
}

const classes = new Map<string, ClassStats>()
let recording = false

function classify(text: string): string {
  const t = text.replace(/\s+/g, ' ').trim()
  if (/^(begin|commit|rollback)/i.test(t)) return t.split(' ')[0]?.toUpperCase() ?? t
  if (t.startsWith('WITH v AS')) return 'recordBatch (one-statement batch)'
  if (t.startsWith('WITH')) return 'WITH (enrol)'
  if (t.includes('verifier_attestation_state (agent_id, attestation_count') && t.includes('unnest'))
    return 'upsertHot (batch)'
  if (t.includes('FOR NO KEY UPDATE SKIP LOCKED')) return 'claimLock'
  if (t.startsWith('SELECT agent_id, lease_epoch, operational_state, public_key')) return 'lockBatch (batch)'
  if (t.startsWith('UPDATE verifiermain AS m SET operational_state = v.state'))
    return 'updateMainChanged (batch)'
  if (t.startsWith('UPDATE verifier_holders')) return 'heartbeat'
  if (t.startsWith('SELECT m.agent_id')) return 'agent select (AGENT_SELECT)'
  return t.slice(0, 70)
}

export function installSqlProfile(): void {
  const proto = pg.Client.prototype as unknown as { query: (...a: unknown[]) => unknown }
  const original = proto.query
  proto.query = function (this: unknown, ...args: unknown[]) {
    const q = args[0]
    const text = typeof q === 'string' ? q : ((q as { text?: string })?.text ?? '')
    const result = original.apply(this, args)
    if (!recording || !(result instanceof Promise)) return result
    const key = classify(text)
    let s = classes.get(key)
    if (!s) {
      s = { count: 0, totalMs: 0, samples: [], inFlight: 0, maxInFlight: 0 }
      classes.set(key, s)
    }
    const stats = s
    stats.inFlight++
    stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight)
    const started = performance.now()
    const done = () => {
      const ms = performance.now() - started
      stats.inFlight--
      stats.count++
      stats.totalMs += ms
      if (stats.samples.length < 100_000) stats.samples.push(ms)
    }
    result.then(done, done)
    return result
  }
}

export function startSqlProfile(): void {
  classes.clear()
  recording = true
}

export function sqlProfileReport(seconds: number): Record<string, unknown>[] {
  recording = false
  return [...classes.entries()]
    .map(([statement, s]) => {
      const sorted = s.samples.sort((a, b) => a - b)
      const pct = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0
      return {
        statement,
        perSecond: Number((s.count / seconds).toFixed(1)),
        meanMs: Number((s.totalMs / Math.max(1, s.count)).toFixed(2)),
        p99Ms: Number(pct(0.99).toFixed(1)),
        busyFraction: Number((s.totalMs / 1000 / seconds).toFixed(2)),
        maxInFlight: s.maxInFlight,
      }
    })
    .sort((a, b) => b.busyFraction - a.busyFraction)
}
