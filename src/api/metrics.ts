/**
 * The Prometheus registry each service exposes at `/metrics` (prom-client): the process metrics prom-client
 * collects by default (CPU, memory, heap, handles, GC, event-loop delay with p50/p90/p99) plus what the service adds.
 * One registry per service instance, so two services in one process (tests, the demo) never mix their series.
 */
import { collectDefaultMetrics, Registry } from 'prom-client'

/** Resolution of the event-loop delay histogram prom-client samples (node's `monitorEventLoopDelay`). */
const EVENT_LOOP_RESOLUTION_MS = 10

export function createMetricsRegistry(): Registry {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: EVENT_LOOP_RESOLUTION_MS })
  return registry
}

/**
 * Keeps a label's values bounded: the first `max` distinct values pass, later ones are counted as `other`, so a
 * bug or an attacker-chosen value can never grow a series without limit.
 */
export class BoundedLabel {
  private readonly seen = new Set<string>()
  constructor(private readonly max: number) {}

  value(v: string): string {
    if (this.seen.has(v)) return v
    if (this.seen.size >= this.max || !/^[\w.:-]{1,80}$/.test(v)) return 'other'
    this.seen.add(v)
    return v
  }
}
