import { execFileSync } from 'node:child_process'
import { describe, expect, it } from 'vitest'

describe('architecture', () => {
  it('keeps imports one-way (tpm and evidence import no service)', () => {
    const out = execFileSync(
      'npx',
      ['depcruise', 'src', '--config', '.dependency-cruiser.cjs', '--output-type', 'json'],
      {
        encoding: 'utf8',
        maxBuffer: 64 * 1024 * 1024,
      },
    )
    const result = JSON.parse(out) as { summary: { violations: unknown[]; totalCruised: number } }
    expect(result.summary.totalCruised).toBeGreaterThan(0)
    expect(result.summary.violations).toEqual([])
  })
})
