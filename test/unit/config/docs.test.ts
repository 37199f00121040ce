/** The checked-in configuration reference and sample files are what the schemas generate, and load as defaults. */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { loadAgentConfig } from '../../../src/agent/config.ts'
import { CONFIG_COMPONENTS, renderConfigReference, renderSampleConfig } from '../../../src/cli/config-docs.ts'
import { loadCaConfig } from '../../../src/config/ca.ts'
import { loadRegistrarConfig } from '../../../src/config/registrar.ts'
import { loadTenantConfig } from '../../../src/config/tenant.ts'
import { loadVerifierConfig } from '../../../src/config/verifier.ts'

const DOCS = join(import.meta.dirname, '../../../docs')
const REGENERATE = 'out of date: run `npm run build && npm run docs:config`'

describe('configuration docs', () => {
  it('docs/config-reference.md is generated from the schemas', () => {
    expect(readFileSync(join(DOCS, 'config-reference.md'), 'utf8'), REGENERATE).toBe(renderConfigReference())
  })

  it.each(CONFIG_COMPONENTS)('docs/samples/%s.conf is generated from the schema', (component) => {
    expect(readFileSync(join(DOCS, 'samples', `${component}.conf`), 'utf8'), REGENERATE).toBe(
      renderSampleConfig(component),
    )
  })

  it('every sample loads to the defaults', () => {
    const sample = (c: string) => join(DOCS, 'samples', `${c}.conf`)
    const env = {}
    for (const [load, c] of [
      [loadVerifierConfig, 'verifier'],
      [loadRegistrarConfig, 'registrar'],
      [loadTenantConfig, 'tenant'],
      [loadCaConfig, 'ca'],
    ] as const) {
      const fromSample = load({ configFile: sample(c), env }).config
      const defaults = load({ configDirs: [], env }).config
      expect(fromSample, c).toEqual(defaults)
    }
    expect(loadAgentConfig({ configPath: sample('agent'), env, configDirs: [] })).toEqual(
      loadAgentConfig({ env, configDirs: [] }),
    )
  })
})
