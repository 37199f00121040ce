/**
 * The agent's `/metrics` without prom-client: the Prometheus text format (version 0.0.4) written out for the few
 * series the agent has, and the same process metrics prom-client's `collectDefaultMetrics` exports, under the same
 * names, help texts and labels (docs/deploy.md "Metrics"). The agent runs on every attested machine, and prom-client
 * (with its OpenTelemetry and t-digest dependencies) was a measurable part of its resident memory (docs/agent.md);
 * the registrar and verifier keep prom-client.
 */
import { readdirSync, readFileSync } from 'node:fs'
import {
  type IntervalHistogram,
  monitorEventLoopDelay,
  PerformanceObserver,
  constants as perfConstants,
} from 'node:perf_hooks'
import { getHeapSpaceStatistics } from 'node:v8'

/** The content type prom-client's registry answers with. */
export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'

export type Labels = Readonly<Record<string, string>>

export interface Sample {
  /** Appended to the family's name (`_bucket`, `_sum`, `_count`). */
  suffix?: string
  labels?: Labels
  value: number
}

export interface MetricFamily {
  name: string
  help: string
  type: 'counter' | 'gauge' | 'histogram'
  samples: Sample[]
}

const escapeHelp = (s: string) => s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')
const escapeLabel = (s: string) => s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'Nan'
  if (v === Number.POSITIVE_INFINITY) return '+Inf'
  if (v === Number.NEGATIVE_INFINITY) return '-Inf'
  return String(v)
}

function formatLabels(labels: Labels | undefined): string {
  if (!labels) return ''
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`)
  return parts.length === 0 ? '' : `{${parts.join(',')}}`
}

/** The exposition text of some families, laid out as prom-client lays it out (a blank line between families). */
export function renderFamilies(families: readonly MetricFamily[]): string {
  const blocks = families.map((f) =>
    [
      `# HELP ${f.name} ${escapeHelp(f.help)}`,
      `# TYPE ${f.name} ${f.type}`,
      ...f.samples.map((s) => `${f.name}${s.suffix ?? ''}${formatLabels(s.labels)} ${formatValue(s.value)}`),
    ].join('\n'),
  )
  return `${blocks.join('\n\n')}\n`
}

/** A histogram with cumulative buckets per label set, rendered like prom-client's (`le` first). */
export class Histogram {
  private readonly series = new Map<
    string,
    { labels: Labels; counts: number[]; sum: number; count: number }
  >()

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly buckets: readonly number[],
  ) {}

  observe(labels: Labels, value: number): void {
    const key = JSON.stringify(labels)
    let s = this.series.get(key)
    if (!s) {
      s = { labels, counts: this.buckets.map(() => 0), sum: 0, count: 0 }
      this.series.set(key, s)
    }
    const counts = s.counts
    this.buckets.forEach((le, i) => {
      if (value <= le) counts[i] = (counts[i] as number) + 1
    })
    s.sum += value
    s.count++
  }

  family(): MetricFamily {
    const samples: Sample[] = []
    for (const s of this.series.values()) {
      this.buckets.forEach((le, i) => {
        samples.push({
          suffix: '_bucket',
          labels: { le: String(le), ...s.labels },
          value: s.counts[i] as number,
        })
      })
      samples.push({ suffix: '_bucket', labels: { le: '+Inf', ...s.labels }, value: s.count })
      samples.push({ suffix: '_sum', labels: s.labels, value: s.sum })
      samples.push({ suffix: '_count', labels: s.labels, value: s.count })
    }
    return { name: this.name, help: this.help, type: 'histogram', samples }
  }
}

const gauge = (name: string, help: string, samples: Sample[]): MetricFamily => ({
  name,
  help,
  type: 'gauge',
  samples,
})
const one = (value: number): Sample[] => [{ value }]

/** Counts of objects by constructor name, as prom-client groups handles and requests. */
function byConstructor(list: readonly unknown[]): Sample[] {
  const counts = new Map<string, number>()
  for (const item of list) {
    const name = (item as { constructor?: { name?: string } } | null)?.constructor?.name
    if (name !== undefined) counts.set(name, (counts.get(name) ?? 0) + 1)
  }
  return [...counts].map(([type, value]) => ({ labels: { type }, value }))
}

function byName(names: readonly string[]): Sample[] {
  const counts = new Map<string, number>()
  for (const n of names) counts.set(n, (counts.get(n) ?? 0) + 1)
  return [...counts].map(([type, value]) => ({ labels: { type }, value }))
}

/** `VmRSS`, `VmSize` and `VmData` of /proc/self/status in bytes; null off Linux. */
function procStatus(): { rss: number; size: number; data: number } | null {
  try {
    const text = readFileSync('/proc/self/status', 'utf8')
    const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(text)?.[1]) * 1024
    return { rss: kib('VmRSS'), size: kib('VmSize'), data: kib('VmData') }
  } catch {
    return null
  }
}

function maxOpenFiles(): number | null {
  try {
    const line = readFileSync('/proc/self/limits', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Max open files'))
    const soft = Number(line?.split(/\s+/)[3])
    return Number.isFinite(soft) ? soft : null
  } catch {
    return null
  }
}

function openFiles(): number | null {
  try {
    // the directory listing holds a descriptor of its own while it reads
    return readdirSync('/proc/self/fd').length - 1
  } catch {
    return null
  }
}

/** Names of GC kinds as prom-client labels them. */
const GC_KINDS: Record<number, string> = {
  [perfConstants.NODE_PERFORMANCE_GC_MAJOR]: 'major',
  [perfConstants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
  [perfConstants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
  [perfConstants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb',
}

/** Resolution of the event-loop delay histogram, as the services' registries sample it (`src/api/metrics.ts`). */
const EVENT_LOOP_RESOLUTION_MS = 10

/**
 * prom-client's default process metrics: CPU, memory, descriptors, event-loop delay (reset at each scrape), active
 * resources/handles/requests, heap and heap spaces, version and GC durations. `start()` begins the GC observation;
 * `stop()` ends it and the event-loop sampling. The event loop is sampled from the first scrape on (that scrape has
 * no delay samples): its histogram costs ~0.4 MiB and a wake-up every 10 ms, which an agent nobody scrapes (the
 * default: `metrics_port` off, `/metrics` behind mTLS) need not pay.
 */
export class ProcessMetrics {
  private readonly startTime = Math.round(Date.now() / 1000 - process.uptime())
  private loopDelay: IntervalHistogram | null = null
  private readonly gc = new Histogram(
    'nodejs_gc_duration_seconds',
    'Garbage collection duration by kind, one of major, minor, incremental or weakcb.',
    [0.001, 0.01, 0.1, 1, 2, 5],
  )
  private readonly gcObserver = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      const kind = GC_KINDS[(entry as { detail?: { kind?: number } }).detail?.kind ?? -1]
      if (kind) this.gc.observe({ kind }, entry.duration / 1000)
    }
  })
  private maxFds: number | null | undefined

  start(): void {
    this.gcObserver.observe({ entryTypes: ['gc'] })
  }

  stop(): void {
    this.loopDelay?.disable()
    this.loopDelay = null
    this.gcObserver.disconnect()
  }

  async families(): Promise<MetricFamily[]> {
    const lagStart = process.hrtime.bigint()
    await new Promise((resolve) => setImmediate(resolve))
    const lag = Number(process.hrtime.bigint() - lagStart) / 1e9
    const h = this.loopDelay
    const loop = h
      ? [h.min, h.max, h.mean, h.stddev, h.percentile(50), h.percentile(90), h.percentile(99)].map((ns) =>
          one(ns / 1e9),
        )
      : Array.from({ length: 7 }, (): Sample[] => [])
    if (h) h.reset()
    else {
      this.loopDelay = monitorEventLoopDelay({ resolution: EVENT_LOOP_RESOLUTION_MS })
      this.loopDelay.enable()
    }
    const cpu = process.cpuUsage()
    const mem = process.memoryUsage()
    const status = procStatus()
    this.maxFds ??= maxOpenFiles()
    const fds = openFiles()
    const resources = process.getActiveResourcesInfo()
    const internals = process as unknown as {
      _getActiveHandles(): unknown[]
      _getActiveRequests(): unknown[]
    }
    const handles = internals._getActiveHandles()
    const requests = internals._getActiveRequests()
    const spaces = getHeapSpaceStatistics()
    const space = (pick: (s: (typeof spaces)[number]) => number): Sample[] =>
      spaces.map((s) => ({ labels: { space: s.space_name.replace(/_space$/, '') }, value: pick(s) }))
    const [major, minor, patch] = process.version.slice(1).split('.') as [string, string, string]
    const counter = (name: string, help: string, value: number): MetricFamily => ({
      name,
      help,
      type: 'counter',
      samples: one(value),
    })
    return [
      counter('process_cpu_user_seconds_total', 'Total user CPU time spent in seconds.', cpu.user / 1e6),
      counter(
        'process_cpu_system_seconds_total',
        'Total system CPU time spent in seconds.',
        cpu.system / 1e6,
      ),
      counter(
        'process_cpu_seconds_total',
        'Total user and system CPU time spent in seconds.',
        (cpu.user + cpu.system) / 1e6,
      ),
      gauge(
        'process_start_time_seconds',
        'Start time of the process since unix epoch in seconds.',
        one(this.startTime),
      ),
      gauge('process_resident_memory_bytes', 'Resident memory size in bytes.', one(status?.rss ?? mem.rss)),
      ...(status
        ? [
            gauge('process_virtual_memory_bytes', 'Virtual memory size in bytes.', one(status.size)),
            gauge('process_heap_bytes', 'Process heap size in bytes.', one(status.data)),
          ]
        : []),
      ...(fds !== null ? [gauge('process_open_fds', 'Number of open file descriptors.', one(fds))] : []),
      ...(this.maxFds !== null
        ? [gauge('process_max_fds', 'Maximum number of open file descriptors.', one(this.maxFds))]
        : []),
      gauge('nodejs_eventloop_lag_seconds', 'Lag of event loop in seconds.', one(lag)),
      gauge(
        'nodejs_eventloop_lag_min_seconds',
        'The minimum recorded event loop delay.',
        loop[0] as Sample[],
      ),
      gauge(
        'nodejs_eventloop_lag_max_seconds',
        'The maximum recorded event loop delay.',
        loop[1] as Sample[],
      ),
      gauge(
        'nodejs_eventloop_lag_mean_seconds',
        'The mean of the recorded event loop delays.',
        loop[2] as Sample[],
      ),
      gauge(
        'nodejs_eventloop_lag_stddev_seconds',
        'The standard deviation of the recorded event loop delays.',
        loop[3] as Sample[],
      ),
      gauge(
        'nodejs_eventloop_lag_p50_seconds',
        'The 50th percentile of the recorded event loop delays.',
        loop[4] as Sample[],
      ),
      gauge(
        'nodejs_eventloop_lag_p90_seconds',
        'The 90th percentile of the recorded event loop delays.',
        loop[5] as Sample[],
      ),
      gauge(
        'nodejs_eventloop_lag_p99_seconds',
        'The 99th percentile of the recorded event loop delays.',
        loop[6] as Sample[],
      ),
      gauge(
        'nodejs_active_resources',
        'Number of active resources that are currently keeping the event loop alive, grouped by async resource type.',
        byName(resources),
      ),
      gauge('nodejs_active_resources_total', 'Total number of active resources.', one(resources.length)),
      gauge(
        'nodejs_active_handles',
        'Number of active libuv handles grouped by handle type. Every handle type is C++ class name.',
        byConstructor(handles),
      ),
      gauge('nodejs_active_handles_total', 'Total number of active handles.', one(handles.length)),
      gauge(
        'nodejs_active_requests',
        'Number of active libuv requests grouped by request type. Every request type is C++ class name.',
        byConstructor(requests),
      ),
      gauge('nodejs_active_requests_total', 'Total number of active requests.', one(requests.length)),
      gauge('nodejs_heap_size_total_bytes', 'Process heap size from Node.js in bytes.', one(mem.heapTotal)),
      gauge(
        'nodejs_heap_size_used_bytes',
        'Process heap size used from Node.js in bytes.',
        one(mem.heapUsed),
      ),
      gauge('nodejs_external_memory_bytes', 'Node.js external memory size in bytes.', one(mem.external)),
      gauge(
        'nodejs_heap_space_size_total_bytes',
        'Process heap space size total from Node.js in bytes.',
        space((s) => s.space_size),
      ),
      gauge(
        'nodejs_heap_space_size_used_bytes',
        'Process heap space size used from Node.js in bytes.',
        space((s) => s.space_used_size),
      ),
      gauge(
        'nodejs_heap_space_size_available_bytes',
        'Process heap space size available from Node.js in bytes.',
        space((s) => s.space_available_size),
      ),
      gauge('nodejs_version_info', 'Node.js version info.', [
        { labels: { version: process.version, major, minor, patch }, value: 1 },
      ]),
      this.gc.family(),
    ]
  }
}
