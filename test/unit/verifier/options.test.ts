import { availableParallelism } from 'node:os'
import { describe, expect, it } from 'vitest'
import { loadVerifierConfig } from '../../../src/config/verifier.ts'
import {
  autoEvidenceWorkers,
  tomtouWarning,
  VerifierConfigError,
  verifierOptionsFromConfig,
} from '../../../src/verifier/options.ts'

const load = (env: Record<string, string> = {}) => loadVerifierConfig({ configDirs: [], env }).config

describe('verifierOptionsFromConfig', () => {
  it('maps upstream defaults', () => {
    const o = verifierOptionsFromConfig(load())
    expect(o).toMatchObject({
      verifierId: 'default',
      port: 8881,
      quoteIntervalMs: 2000,
      retryInterval: 2,
      maxRetries: 5,
      exponentialBackoff: true,
      requestTimeoutMs: 60_000,
      revocationChannels: ['agent'],
      measuredBootEvaluate: 'once',
      mbPolicyEngine: 'accept-all',
      // upstream's shipped ignore_tomtou_errors = False, read as upstream reads it: violations accepted
      ignoreTomtouErrors: true,
      leaseMs: 30_000,
    })
    expect(o.severityRules).toHaveLength(1)
    expect(o.severityLabels.at(-1)).toBe('emergency')
  })

  it('reads ignore_tomtou_errors as upstream 7.x does unless tomtou_violations says it plainly, and warns', () => {
    const cases: [Record<string, string>, boolean, RegExp | null][] = [
      [{}, true, /ignore_tomtou_errors = False: .*ACCEPTED/],
      [{ KEYLIME_VERIFIER_IGNORE_TOMTOU_ERRORS: 'True' }, false, /ignore_tomtou_errors = True: .*FAIL/],
      [{ KEYLIME_VERIFIER_TOMTOU_VIOLATIONS: 'fail' }, false, null],
      [
        { KEYLIME_VERIFIER_TOMTOU_VIOLATIONS: 'accept', KEYLIME_VERIFIER_IGNORE_TOMTOU_ERRORS: 'True' },
        true,
        null,
      ],
    ]
    for (const [env, accepted, warning] of cases) {
      const c = load(env)
      expect(verifierOptionsFromConfig(c).ignoreTomtouErrors, JSON.stringify(env)).toBe(accepted)
      const w = tomtouWarning(c)
      if (warning === null) expect(w).toBeNull()
      else expect(w).toMatch(warning)
    }
    expect(() => verifierOptionsFromConfig(load({ KEYLIME_VERIFIER_TOMTOU_VIOLATIONS: 'ignore' }))).toThrow(
      /tomtou_violations "ignore" is not accept or fail/,
    )
  })

  it('evidence_workers: auto is one per core above two cores, a number is that many, 0 keeps evidence on the event loop', () => {
    expect(verifierOptionsFromConfig(load()).evidenceWorkers).toBe(
      availableParallelism() > 2 ? availableParallelism() : 0,
    )
    expect([1, 2, 3, 8].map((n) => autoEvidenceWorkers(n))).toEqual([0, 0, 3, 8])
    expect(verifierOptionsFromConfig(load({ KEYLIME_VERIFIER_EVIDENCE_WORKERS: '3' })).evidenceWorkers).toBe(
      3,
    )
    expect(verifierOptionsFromConfig(load({ KEYLIME_VERIFIER_EVIDENCE_WORKERS: '0' })).evidenceWorkers).toBe(
      0,
    )
    for (const bad of ['-1', 'many', '1.5', '300'])
      expect(() => verifierOptionsFromConfig(load({ KEYLIME_VERIFIER_EVIDENCE_WORKERS: bad }))).toThrow(
        /evidence_workers/,
      )
    expect(verifierOptionsFromConfig(load()).maxOpenAgentConnections).toBe(20_000)
  })

  it('takes KEYLIME_VERIFIER_* env, including other sections', () => {
    const o = verifierOptionsFromConfig(
      load({
        KEYLIME_VERIFIER_QUOTE_INTERVAL: '0.5',
        KEYLIME_VERIFIER_REVOCATIONS_WEBHOOK_URL: 'http://127.0.0.1:1/x',
        KEYLIME_VERIFIER_REVOCATIONS_ENABLED_REVOCATION_NOTIFICATIONS: "['webhook']",
        KEYLIME_VERIFIER_SEVERITY_POLICY: '[{"event_id": "pcr_validation.*", "severity_label": "error"}]',
      }),
    )
    expect(o.quoteIntervalMs).toBe(500)
    expect(o.webhookUrl).toBe('http://127.0.0.1:1/x')
    expect(o.revocationChannels).toEqual(['webhook'])
    expect(o.severityRules[0]?.label).toBe('error')
  })

  it('refuses unusable values with a named error', () => {
    expect(() =>
      verifierOptionsFromConfig(
        load({ KEYLIME_VERIFIER_SEVERITY_POLICY: '[{"event_id": ".*", "severity_label": "nope"}]' }),
      ),
    ).toThrow(VerifierConfigError)
    expect(() => verifierOptionsFromConfig(load({ KEYLIME_VERIFIER_SEVERITY_POLICY: 'not json' }))).toThrow(
      /severity_policy/,
    )
    expect(() =>
      verifierOptionsFromConfig(load({ KEYLIME_VERIFIER_MEASURED_BOOT_POLICY_NAME: 'strict' })),
    ).toThrow(/measured_boot_policy_name/)
    expect(() =>
      verifierOptionsFromConfig(
        load({ KEYLIME_VERIFIER_REVOCATIONS_ENABLED_REVOCATION_NOTIFICATIONS: "['pigeon']" }),
      ),
    ).toThrow(/unknown channel/)
  })
})
