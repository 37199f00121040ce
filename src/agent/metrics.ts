/**
 * Agent metrics (quote latency by kind and outcome, and the process metrics every service exports) and readiness:
 * the TPM answered a quote recently, or answers a PCR read now. Rendered by the agent's own Prometheus text writer
 * (`prometheus.ts`), not prom-client, which the agent does not load.
 */
import type { MetricsSource, ProbeOptions, ReadinessCheck } from '../api/http-common.ts'
import { Histogram, PROMETHEUS_CONTENT_TYPE, ProcessMetrics, renderFamilies } from './prometheus.ts'

export type QuoteKind = 'identity' | 'integrity'

/** A TPM that produced a quote this recently counts as answering without another command. */
export const TPM_RECENT_MS = 30_000

export class AgentMetrics implements MetricsSource {
  readonly contentType = PROMETHEUS_CONTENT_TYPE
  private readonly process = new ProcessMetrics()
  private readonly quotes = new Histogram(
    'keylime_agent_quote_duration_seconds',
    'Time to answer a quote request (TPM quote, PCR read, measurement lists), by kind and outcome',
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  )
  /** `Date.now()` of the TPM's last successful answer; 0 before any. */
  lastTpmAnswerAt = 0

  /** Starts sampling the event loop and GC, as prom-client's default metrics do from their creation. */
  constructor() {
    this.process.start()
  }

  /** Stops the event-loop and GC observation (the agent's `close`). */
  stop(): void {
    this.process.stop()
  }

  /** The Prometheus text of `/metrics`. */
  async metrics(): Promise<string> {
    return renderFamilies([...(await this.process.families()), this.quotes.family()])
  }

  /** Times one quote request; the agent's answer is returned or thrown unchanged. */
  async timeQuote<T>(kind: QuoteKind, produce: () => Promise<T>): Promise<T> {
    const start = process.hrtime.bigint()
    const seconds = () => Number(process.hrtime.bigint() - start) / 1e9
    try {
      const result = await produce()
      this.quotes.observe({ kind, outcome: 'ok' }, seconds())
      this.lastTpmAnswerAt = Date.now()
      return result
    } catch (err) {
      this.quotes.observe({ kind, outcome: 'error' }, seconds())
      throw err
    }
  }
}

/** `/readyz` of the agent: `tpm` holds when a quote succeeded within `TPM_RECENT_MS` or `askTpm` succeeds now. */
export function agentReadiness(metrics: AgentMetrics, askTpm: () => Promise<unknown>): ReadinessCheck {
  return async () => {
    if (Date.now() - metrics.lastTpmAnswerAt < TPM_RECENT_MS) return { tpm: true }
    try {
      await askTpm()
      metrics.lastTpmAnswerAt = Date.now()
      return { tpm: true }
    } catch {
      return { tpm: false }
    }
  }
}

/** The agent's metrics, quote timing and probe options; `askTpm` is a cheap TPM command run under the TPM lock. */
export function agentObservability(askTpm: () => Promise<unknown>): {
  metrics: AgentMetrics
  probes: ProbeOptions
} {
  const metrics = new AgentMetrics()
  return { metrics, probes: { readiness: agentReadiness(metrics, askTpm), metrics } }
}
