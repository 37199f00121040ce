/**
 * The loop's scheduler: one min-heap of due steps, one timer for the earliest, at most `maxConcurrency` steps in
 * flight, and a sampled ring of how late steps started (lag). Steps are cancelled lazily: `isCurrent` drops an item
 * whose agent was removed or restarted since it was scheduled, so nothing ever searches the heap.
 */
import { DueQueue } from './due-queue.ts'

export interface SchedulerOptions<T> {
  maxConcurrency: number
  now: () => number
  /** Still wanted when it comes due? */
  isCurrent: (item: T) => boolean
  /** Runs one step; must not reject (the caller catches its own errors). */
  run: (item: T) => Promise<void>
}

export interface LagStats {
  inFlight: number
  /** Lag of steps behind their due time, ms (sampled ring of the last 65,536). */
  lagP50: number
  lagP99: number
}

const LAG_RING = 65_536

export class Scheduler<T> {
  private readonly heap = new DueQueue<T>()
  private timer: NodeJS.Timeout | null = null
  private timerDue = Number.POSITIVE_INFINITY
  private running = false
  private active = 0
  private readonly lags = new Float64Array(LAG_RING)
  private lagCount = 0
  private lastLag = 0
  private idleWaiters: (() => void)[] = []

  constructor(private readonly o: SchedulerOptions<T>) {}

  get inFlight(): number {
    return this.active
  }

  start(): void {
    this.running = true
    this.arm()
  }

  /** Stops starting steps; waits (at most `drainMs`) for those in flight; forgets everything scheduled. */
  async stop(drainMs: number): Promise<void> {
    this.running = false
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
    if (this.active > 0)
      await Promise.race([
        new Promise<void>((r) => this.idleWaiters.push(r)),
        new Promise<void>((r) => setTimeout(r, drainMs).unref()),
      ])
    this.heap.clear()
  }

  schedule(item: T, dueAt: number): void {
    this.heap.push(dueAt, item)
    if (dueAt < this.timerDue) this.arm()
  }

  stats(): LagStats {
    const n = Math.min(this.lagCount, LAG_RING)
    const sorted = Float64Array.from(this.lags.subarray(0, n)).sort()
    const pct = (p: number) => (n === 0 ? 0 : (sorted[Math.min(n - 1, Math.floor(p * n))] as number))
    return { inFlight: this.active, lagP50: pct(0.5), lagP99: pct(0.99) }
  }

  /** How late the latest step started, ms (0 before the first). */
  get currentLagMs(): number {
    return this.lastLag
  }

  resetLagStats(): void {
    this.lagCount = 0
  }

  private arm(): void {
    if (!this.running) return
    const next = this.heap.peekDue()
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
    this.timerDue = Number.POSITIVE_INFINITY
    if (next === undefined || this.active >= this.o.maxConcurrency) return
    this.timerDue = next
    this.timer = setTimeout(() => this.tick(), Math.max(0, next - this.o.now()))
  }

  private tick(): void {
    this.timer = null
    this.timerDue = Number.POSITIVE_INFINITY
    this.launchDue()
    this.arm()
  }

  /** Starts the steps due by now, up to `maxConcurrency` in flight. */
  private launchDue(): void {
    const now = this.o.now()
    while (this.active < this.o.maxConcurrency) {
      const due = this.heap.peekDue()
      if (due === undefined || due > now) break
      const { dueAt, item } = this.heap.pop() as { dueAt: number; item: T }
      if (!this.o.isCurrent(item)) continue
      this.lastLag = now - dueAt
      this.lags[this.lagCount++ % LAG_RING] = this.lastLag
      this.launch(item)
    }
  }

  private launch(item: T): void {
    this.active++
    void this.o.run(item).finally(() => {
      this.active--
      if (this.active === 0) for (const w of this.idleWaiters.splice(0)) w()
      if (!this.running) return
      // saturated: the freed slot goes straight to an overdue step, no timer set and cleared per step
      if (this.active === this.o.maxConcurrency - 1) this.launchDue()
      if (this.timer === null && this.active < this.o.maxConcurrency) this.arm()
    })
  }
}
