/**
 * Drives a push-mode verifier as a push agent would, on a real swtpm: TPM2_Certify of the AK for the session, quotes
 * over the verifier's challenge, IMA entries extended into PCR 10 and sent from the requested offset (or whole).
 * `app` is the verifier a request goes to; tests switch it to send successive requests to different verifiers.
 */
import type { Response } from 'light-my-request'
import { expect } from 'vitest'
import { createRuntimePolicy, type FormattedImaEntry } from '../../src/evidence/ima/index.ts'
import { encodePcrBlob } from '../../src/evidence/quote/index.ts'
import { keylime, Tpm } from '../../src/tpm/index.ts'
import { asciiImaList } from './ima-lists.ts'
import { type SwtpmInstance, startSwtpm } from './swtpm.ts'

export interface Injecting {
  inject(opts: {
    method: 'GET' | 'POST' | 'PATCH' | 'DELETE'
    url: string
    headers?: Record<string, string>
    payload?: object
  }): Promise<Response>
}

export const JSON_API = { 'content-type': 'application/vnd.api+json' }
export const ADMIN_HEADERS = { 'x-test-admin': '1' }
export const bearer = (token: string) => ({ ...JSON_API, authorization: `Bearer ${token}` })
export const BOOT_TIME = '2026-12-01T10:00:00Z'

export class PushDriver {
  /** Every IMA entry extended into PCR 10 so far, in order. */
  readonly log: FormattedImaEntry[] = []
  app!: Injecting

  private constructor(
    readonly sw: SwtpmInstance,
    readonly tpm: Tpm,
    readonly ak: keylime.CreatedAk,
  ) {}

  static async start(): Promise<PushDriver> {
    const sw = await startSwtpm()
    const tpm = await Tpm.open(sw.transport)
    const ek = await keylime.createEk(tpm, 'rsa')
    const ak = await keylime.createAk(tpm, ek.handle, { hashAlg: 'sha256', signAlg: 'rsassa' })
    return new PushDriver(sw, tpm, ak)
  }

  async close(): Promise<void> {
    await this.tpm.close()
    await this.sw.stop()
  }

  async extend(entries: readonly FormattedImaEntry[]): Promise<void> {
    for (const e of entries) {
      await keylime.pcrExtend(this.tpm, 10, {
        sha1: e.templateDigests.sha1,
        sha256: e.templateDigests.sha256,
      })
      this.log.push(e)
    }
  }

  /** What upstream's tenant sends with `--push-model` (a push verifier drops the address). */
  enrolBody(policyEntries: readonly FormattedImaEntry[], revocationKeyPem = '') {
    const policy = createRuntimePolicy({ imaListText: asciiImaList(policyEntries), now: new Date() })
    return {
      v: null,
      cloudagent_ip: '192.0.2.1',
      cloudagent_port: 9002,
      tpm_policy: JSON.stringify({ mask: '0x400' }),
      runtime_policy: Buffer.from(JSON.stringify(policy)).toString('base64'),
      runtime_policy_name: null,
      runtime_policy_key: '',
      mb_policy: null,
      mb_policy_name: null,
      ima_sign_verification_keys: '',
      metadata: '{}',
      revocation_key: revocationKeyPem,
      accept_tpm_hash_algs: ['sha512', 'sha384', 'sha256'],
      accept_tpm_encryption_algs: ['ecc', 'rsa'],
      accept_tpm_signing_algs: ['ecschnorr', 'rsassa'],
      ak_tpm: Buffer.from(this.ak.publicArea).toString('base64'),
      mtls_cert: null,
      supported_version: '2.6',
    }
  }

  async enrol(
    agentId: string,
    policyEntries: readonly FormattedImaEntry[],
    revocationKeyPem = '',
  ): Promise<void> {
    const res = await this.app.inject({
      method: 'POST',
      url: `/v2.6/agents/${agentId}`,
      headers: ADMIN_HEADERS,
      payload: this.enrolBody(policyEntries, revocationKeyPem),
    })
    expect(res.statusCode, res.body).toBe(200)
  }

  async openSession(agentId: string): Promise<{ id: string; challenge: Buffer }> {
    const res = await this.app.inject({
      method: 'POST',
      url: '/v3.0/sessions',
      headers: JSON_API,
      payload: {
        data: {
          type: 'session',
          attributes: {
            agent_id: agentId,
            authentication_supported: [{ authentication_class: 'pop', authentication_type: 'tpm_pop' }],
          },
        },
      },
    })
    expect(res.statusCode, res.body).toBe(200)
    const d = res.json().data
    return {
      id: d.id as string,
      challenge: Buffer.from(d.attributes.authentication_requested[0].chosen_parameters.challenge, 'base64'),
    }
  }

  async certify(challenge: Uint8Array): Promise<{ message: string; signature: string }> {
    const c = await keylime.certifyObject(this.tpm, {
      objectHandle: this.ak.handle,
      signHandle: this.ak.handle,
      qualifyingData: challenge,
    })
    return {
      message: Buffer.from(c.attest).toString('base64'),
      signature: Buffer.from(c.signature).toString('base64'),
    }
  }

  answerSession(agentId: string, sessionId: string, data: { message: string; signature: string }) {
    return this.app.inject({
      method: 'PATCH',
      url: `/v3.0/sessions/${sessionId}`,
      headers: JSON_API,
      payload: {
        data: {
          type: 'session',
          attributes: {
            agent_id: agentId,
            authentication_provided: [{ authentication_class: 'pop', authentication_type: 'tpm_pop', data }],
          },
        },
      },
    })
  }

  async login(agentId: string): Promise<string> {
    const s = await this.openSession(agentId)
    const res = await this.answerSession(agentId, s.id, await this.certify(s.challenge))
    expect(res.statusCode, res.body).toBe(200)
    expect(res.json().data.attributes.evaluation).toBe('pass')
    return res.json().data.attributes.token as string
  }

  capabilities(entryCount = this.log.length, componentVersion = '2.0') {
    return {
      data: {
        type: 'attestation',
        attributes: {
          evidence_supported: [
            {
              evidence_class: 'certification',
              evidence_type: 'tpm_quote',
              capabilities: {
                component_version: componentVersion,
                signature_schemes: ['rsassa'],
                hash_algorithms: ['sha256', 'sha1'],
                available_subjects: { sha256: [...Array(24).keys()], sha1: [...Array(24).keys()] },
                certification_keys: [
                  { key_class: 'asymmetric', key_algorithm: 'rsa', key_size: 2048, server_identifier: 'ak' },
                ],
              },
            },
            {
              evidence_class: 'log',
              evidence_type: 'ima_log',
              capabilities: {
                entry_count: entryCount,
                supports_partial_access: true,
                appendable: true,
                formats: ['text/plain'],
              },
            },
          ],
          system_info: { boot_time: BOOT_TIME },
        },
      },
    }
  }

  startAttestation(agentId: string, token: string, body: object = this.capabilities()) {
    return this.app.inject({
      method: 'POST',
      url: `/v3.0/agents/${agentId}/attestations`,
      headers: bearer(token),
      payload: body,
    })
  }

  /** The evidence the verifier asked for: a quote over its challenge and the IMA list from its offset (or whole). */
  async evidence(
    requested: { chosen_parameters: Record<string, unknown> }[],
    opts: { wholeLog?: boolean } = {},
  ) {
    const q = requested[0]?.chosen_parameters as {
      challenge: string
      selected_subjects: { sha256: number[] }
    }
    const quote = await keylime.quote(this.tpm, this.ak.handle, {
      nonce: Buffer.from(q.challenge, 'base64'),
      hashAlg: 'sha256',
      pcrs: q.selected_subjects.sha256,
      signAlg: 'rsassa',
    })
    const offset = opts.wholeLog ? 0 : (requested[1]?.chosen_parameters.starting_offset as number)
    const lines = this.log.slice(offset)
    return {
      data: {
        type: 'attestation',
        attributes: {
          evidence_collected: [
            {
              evidence_class: 'certification',
              evidence_type: 'tpm_quote',
              data: {
                message: Buffer.from(quote.attest).toString('base64'),
                signature: Buffer.from(quote.signature).toString('base64'),
                subject_data: Buffer.from(
                  encodePcrBlob({ banks: [{ hashAlg: 'sha256', values: quote.pcrValues }] }),
                ).toString('base64'),
              },
            },
            {
              evidence_class: 'log',
              evidence_type: 'ima_log',
              data: { entries: asciiImaList(lines), entry_count: lines.length },
            },
          ],
        },
      },
    }
  }

  submit(agentId: string, token: string, body: object, which = 'latest') {
    return this.app.inject({
      method: 'PATCH',
      url: `/v3.0/agents/${agentId}/attestations/${which}`,
      headers: bearer(token),
      payload: body,
    })
  }

  async get(agentId: string, which = 'latest') {
    const res = await this.app.inject({
      method: 'GET',
      url: `/v3.0/agents/${agentId}/attestations/${which}`,
      headers: ADMIN_HEADERS,
    })
    expect(res.statusCode, res.body).toBe(200)
    return res.json().data
  }

  async status(agentId: string) {
    const res = await this.app.inject({
      method: 'GET',
      url: `/v2.6/agents/${agentId}`,
      headers: ADMIN_HEADERS,
    })
    return res.json().results
  }
}
