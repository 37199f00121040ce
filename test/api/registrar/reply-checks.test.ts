/**
 * The registrar client checks replies with plain functions (so the agents never load typebox); they must accept and
 * refuse exactly what the registrar's typebox schemas accept and refuse.
 */
import type { TSchema } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { describe, expect, it } from 'vitest'
import { REGISTRAR_REPLY_CHECKS } from '../../../src/api/registrar/client.ts'
import {
  AgentResults,
  EmptyResults,
  ListResults,
  RegisterResults,
  VersionResults,
} from '../../../src/api/registrar/schemas.ts'

const agent = {
  agent_id: 'a1',
  aik_tpm: 'AK',
  ek_tpm: null,
  ekcert: 'DER',
  mtls_cert: null,
  ip: '10.0.0.1',
  port: 9002,
  regcount: 1,
}
const without = (o: Record<string, unknown>, k: string) =>
  Object.fromEntries(Object.entries(o).filter(([x]) => x !== k))

const cases: [string, TSchema, (v: unknown) => string | null, unknown[]][] = [
  [
    'version',
    VersionResults,
    REGISTRAR_REPLY_CHECKS.version,
    [
      { current_version: '2.6', supported_versions: ['2.5', '2.6'] },
      { current_version: '2.6', supported_versions: [], extra: 1 },
      { current_version: 2.6, supported_versions: [] },
      { current_version: '2.6', supported_versions: [2.6] },
      { current_version: '2.6', supported_versions: '2.6' },
      { current_version: '2.6' },
      null,
      [],
      'text',
    ],
  ],
  [
    'register',
    RegisterResults,
    REGISTRAR_REPLY_CHECKS.register,
    [{ blob: 'b' }, { blob: null }, {}, [], null],
  ],
  [
    'list',
    ListResults,
    REGISTRAR_REPLY_CHECKS.list,
    [{ uuids: [] }, { uuids: ['a'] }, { uuids: [1] }, {}, null],
  ],
  [
    'agent',
    AgentResults,
    REGISTRAR_REPLY_CHECKS.agent,
    [
      agent,
      {
        ...agent,
        ek_ca_chain: 'PEM',
        iak_tpm: null,
        idevid_tpm: 'x',
        iak_cert: null,
        idevid_cert: 'c',
        more: {},
      },
      { ...agent, port: null, ip: null, ekcert: null, ek_tpm: 'EK' },
      { ...agent, port: '9002' },
      { ...agent, port: 9002.5 },
      { ...agent, regcount: null },
      { ...agent, ek_ca_chain: 1 },
      { ...agent, iak_cert: 5 },
      without(agent, 'mtls_cert'),
      without(agent, 'regcount'),
      without(agent, 'ek_tpm'),
      { ...agent, aik_tpm: null },
      [],
      null,
    ],
  ],
  ['empty', EmptyResults, REGISTRAR_REPLY_CHECKS.empty, [{}, null, { a: 1 }, [], 'x', 0, undefined]],
]

describe('registrar reply checks', () => {
  it.each(cases)('%s: the same verdicts as the typebox schema', (_name, schema, check, values) => {
    const compiled = TypeCompiler.Compile(schema)
    let refused = 0
    for (const v of values) {
      const fits = compiled.Check(v)
      const problem = check(v)
      expect({ value: v, fits: problem === null }).toEqual({ value: v, fits })
      if (!fits) {
        refused++
        expect(problem).toMatch(/^\/\w*: expected /)
      }
    }
    expect(refused).toBeGreaterThan(0)
  })
})
