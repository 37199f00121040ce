import { describe, expect, it } from 'vitest'
import { createProgress } from '../../../src/cli/progress.ts'

function terminal(isTTY: boolean) {
  const writes: string[] = []
  return { writes, stream: { isTTY, write: (s: string) => writes.push(s) > 0 } }
}

describe('progress line', () => {
  it('stays silent for 2 s, then shows the status at most every 0.5 s, and clears it at the end', () => {
    let now = 0
    const { writes, stream } = terminal(true)
    const progress = createProgress('hashing /usr', { stream, now: () => now })
    progress.update(() => '10 files')
    now = 1999
    progress.update(() => '20 files')
    expect(writes).toEqual([])
    now = 2000
    progress.update(() => '30 files')
    now = 2400
    progress.update(() => '40 files')
    now = 2600
    progress.update(() => '50 files')
    progress.done()
    expect(writes).toEqual([
      '\r\x1b[2Khashing /usr: 30 files (2 s)',
      '\r\x1b[2Khashing /usr: 50 files (3 s)',
      '\r\x1b[2K',
    ])
  })

  it('prints nothing with --quiet or when stderr is not a terminal', () => {
    for (const [isTTY, quiet] of [
      [false, false],
      [true, true],
    ] as const) {
      let now = 0
      const { writes, stream } = terminal(isTTY)
      const progress = createProgress('hashing', { stream, quiet, now: () => now })
      now = 10_000
      progress.update(() => 'x')
      progress.done()
      expect(writes).toEqual([])
    }
  })
})
