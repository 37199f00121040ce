import { describe, expect, it } from 'vitest'
import { Scheduler } from '../../../src/verifier/scheduler.ts'

describe('scheduler lag', () => {
  it('currentLagMs is how late the latest started step was', async () => {
    let now = 10_000
    const started: string[] = []
    const s = new Scheduler<string>({
      maxConcurrency: 10,
      now: () => now,
      isCurrent: () => true,
      run: async (item) => {
        started.push(item)
      },
    })
    expect(s.currentLagMs).toBe(0)
    s.schedule('a', 7_000)
    s.schedule('b', 9_500)
    s.start()
    for (let i = 0; i < 50 && started.length < 2; i++) await new Promise((r) => setTimeout(r, 10))
    expect(started).toEqual(['a', 'b'])
    expect(s.currentLagMs).toBe(500)
    expect(s.stats().lagP99).toBe(3_000)
    now = 20_000
    s.schedule('c', 19_990)
    for (let i = 0; i < 50 && started.length < 3; i++) await new Promise((r) => setTimeout(r, 10))
    expect(s.currentLagMs).toBe(10)
    await s.stop(100)
  })
})
