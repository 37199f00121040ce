/**
 * Push mode (API 3.0) of the verifier on a real swtpm: sessions answered with TPM2_Certify of the AK, quotes over the
 * verifier's challenge, IMA extended into PCR 10, every §4 error path, tamper detection with a signed revocation
 * webhook, and the overdue monitor. One swtpm, one verifier (SQLite) with a clock the tests can move forward.
 */
import { generateKeyPairSync } from 'node:crypto'
import Database from 'better-sqlite3'
import { Kysely, SqliteDialect } from 'kysely'
import { Registry } from 'prom-client'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { verifyRevocation } from '../../../src/crypto/revocation.ts'
import { migrateVerifierDatabase, type VerifierDatabase } from '../../../src/db/verifier-repository.ts'
import { imaNgEntryFor } from '../../../src/devtools/ima-writer.ts'
import { buildVerifierApp, type Identity } from '../../../src/verifier/app.ts'
import { DEFAULT_PUSH_OPTIONS, DEFAULT_VERIFIER_OPTIONS } from '../../../src/verifier/options.ts'
import { PrometheusPushMetrics } from '../../../src/verifier/push/push-metrics.ts'
import { VerifierService } from '../../../src/verifier/verifier-service.ts'
import { ADMIN_HEADERS as ADMIN, JSON_API, PushDriver } from '../../helpers/push-driver.ts'
import {
  type SignedNotification,
  startWebhookReceiver,
  type WebhookReceiver,
} from '../../helpers/webhook-receiver.ts'
import { silentLog, waitFor } from '../../unit/verifier/harness.ts'

let agent: PushDriver
let service: VerifierService
let app: Awaited<ReturnType<typeof buildVerifierApp>>
let hook: WebhookReceiver<SignedNotification>
let skewMs = 0
let db: Kysely<VerifierDatabase>
const registry = new Registry()
const now = () => Date.now() + skewMs
const revocation = generateKeyPairSync('rsa', { modulusLength: 2048 })
const QUOTE_INTERVAL_MS = 2000

const extend = (entries: Parameters<PushDriver['extend']>[0]) => agent.extend(entries)
const login = (id: string) => agent.login(id)
const openSession = (id: string) => agent.openSession(id)
const certify = (c: Uint8Array) => agent.certify(c)
const answerSession = (id: string, sessionId: string, data: { message: string; signature: string }) =>
  agent.answerSession(id, sessionId, data)
const capabilities = (entryCount?: number, componentVersion?: string) =>
  agent.capabilities(entryCount, componentVersion)
const startAttestation = (id: string, token: string, body?: object) => agent.startAttestation(id, token, body)
const evidence = (
  requested: { chosen_parameters: Record<string, unknown> }[],
  opts?: { wholeLog?: boolean },
) => agent.evidence(requested, opts)
const submit = (id: string, token: string, body: object, which?: string) =>
  agent.submit(id, token, body, which)
const status = (id: string) => agent.status(id)

async function latest(agentId: string) {
  await service.push?.attestations.idle()
  return agent.get(agentId)
}

/** One whole attestation; returns the created and the finished resource. */
async function attest(agentId: string, token: string, opts: { wholeLog?: boolean } = {}) {
  const created = await startAttestation(agentId, token)
  expect(created.statusCode, created.body).toBe(201)
  const requested = created.json().data.attributes.evidence_requested
  const res = await submit(agentId, token, await evidence(requested, opts))
  expect(res.statusCode, res.body).toBe(202)
  const done = await latest(agentId)
  skewMs += QUOTE_INTERVAL_MS
  return { created: created.json().data, createdMeta: created.json().meta, accepted: res.json(), done }
}

const enrol = (agentId: string, entries: Parameters<PushDriver['enrol']>[1]) =>
  agent.enrol(agentId, entries, revocation.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString())

const good = Array.from({ length: 30 }, (_, i) => imaNgEntryFor(`/usr/bin/good-${i}`, `good ${i}`))

beforeAll(async () => {
  agent = await PushDriver.start()
  hook = await startWebhookReceiver()
  db = new Kysely<VerifierDatabase>({
    dialect: new SqliteDialect({ database: new Database(':memory:') }),
  })
  await migrateVerifierDatabase(db)
  service = new VerifierService({
    db,
    options: {
      ...DEFAULT_VERIFIER_OPTIONS,
      mode: 'push',
      enableAgentMtls: false,
      quoteIntervalMs: QUOTE_INTERVAL_MS,
      revocationChannels: ['webhook'],
      webhookUrl: hook.url,
      retryInterval: 0.05,
      push: {
        ...DEFAULT_PUSH_OPTIONS,
        evidenceTimeoutMs: 60_000,
        sessionRateLimit: { perIp: 1000, windowIpMs: 60_000, perAgent: 20, windowAgentMs: 60_000 },
      },
    },
    log: silentLog,
    clientTls: null,
    now,
  })
  if (service.push) service.push.metrics = new PrometheusPushMetrics(registry, db)
  const identify = (req: { headers: Record<string, unknown> }): Identity =>
    req.headers['x-test-admin'] === '1' ? 'admin' : 'anonymous'
  app = await buildVerifierApp({ service, log: silentLog, identify: identify as never })
  agent.app = app
  await extend(good.slice(0, 10))
  await enrol('push-a', good)
  await enrol('push-b', good)
}, 120_000)

afterAll(async () => {
  await app?.close()
  await service?.stop()
  await agent?.close()
  await hook?.close()
})

describe('push verifier: version routes', () => {
  it('GET /version is 410 Gone and / redirects to /v3.0/', async () => {
    expect((await app.inject({ method: 'GET', url: '/version' })).statusCode).toBe(410)
    const root = await app.inject({ method: 'GET', url: '/' })
    expect(root.statusCode).toBe(307)
    expect(root.headers.location).toBe('/v3.0/')
    const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json()
    expect(Object.keys(doc.paths)).toEqual(
      expect.arrayContaining([
        '/v3.0/sessions',
        '/v3.0/agents/{agent_id}/attestations',
        '/v2.6/agents/{agent_id}',
      ]),
    )
  })
  it('an enrolled push agent has no address and is never polled', async () => {
    const s = await status('push-a')
    expect(s.ip).toBeNull()
    expect(s.operational_state).toBe(3)
    expect(service.loop.has('push-a')).toBe(false)
  })
})

describe('push verifier: sessions', () => {
  it('a challenge answered by TPM2_Certify of the AK gives a token; only its hash is stored', async () => {
    const s = await openSession('push-a')
    expect(s.challenge.length).toBe(16)
    const res = await answerSession('push-a', s.id, await certify(s.challenge))
    expect(res.statusCode).toBe(200)
    const attrs = res.json().data.attributes
    expect(attrs.token).toMatch(new RegExp(`^${s.id}\\.[A-Za-z0-9_-]{43}$`))
    expect(Date.parse(attrs.token_expires_at) - Date.parse(attrs.response_received_at)).toBe(180_000)
    const row = await service.push?.repo.getSession(s.id)
    expect(row?.token_hash).toMatch(/^[0-9a-f]{64}$/)
    expect(JSON.stringify(row)).not.toContain(attrs.token.split('.')[1])
  })
  it('a bad signature is 401 evaluation fail; a replayed answer finds no open session', async () => {
    const s = await openSession('push-a')
    const proof = await certify(s.challenge)
    const sig = Buffer.from(proof.signature, 'base64')
    sig[sig.length - 1] = (sig[sig.length - 1] as number) ^ 1
    const res = await answerSession('push-a', s.id, { ...proof, signature: sig.toString('base64') })
    expect(res.statusCode).toBe(401)
    expect(res.json().data.attributes.evaluation).toBe('fail')
    expect((await answerSession('push-a', s.id, proof)).statusCode).toBe(404)
  })
  it('a certification over another challenge is refused (401)', async () => {
    const s = await openSession('push-a')
    const res = await answerSession('push-a', s.id, await certify(Buffer.alloc(16, 1)))
    expect(res.statusCode).toBe(401)
  })
  it('an expired challenge or an agent not enrolled is 200 evaluation fail; a mismatched agent 400', async () => {
    const s = await openSession('push-a')
    const proof = await certify(s.challenge)
    expect((await answerSession('push-b', s.id, proof)).statusCode).toBe(400)
    skewMs += 61_000
    const late = await answerSession('push-a', s.id, proof)
    expect(late.statusCode).toBe(200)
    expect(late.json().data.attributes.evaluation).toBe('fail')
    const u = await openSession('nobody')
    const res = await answerSession('nobody', u.id, await certify(u.challenge))
    expect(res.statusCode).toBe(200)
    expect(res.json().data.attributes.evaluation).toBe('fail')
  })
  it('missing agent_id or no tpm_pop is 400; the per-agent limit answers 429 with Retry-After', async () => {
    const res = await app.inject({
      method: 'POST',
      url: '/v3/sessions',
      headers: JSON_API,
      payload: { data: { type: 'session', attributes: {} } },
    })
    expect(res.statusCode).toBe(400)
    expect(res.json().errors[0].detail).toBe('agent_id is required')
    const noPop = await app.inject({
      method: 'POST',
      url: '/v3/sessions',
      headers: JSON_API,
      payload: { data: { type: 'session', attributes: { agent_id: 'x', authentication_supported: [] } } },
    })
    expect(noPop.statusCode).toBe(400)
    let last = noPop
    for (let i = 0; i < 25 && last.statusCode !== 429; i++)
      last = await app.inject({
        method: 'POST',
        url: '/v3/agents/limited/session',
        headers: JSON_API,
        payload: {
          data: {
            type: 'session',
            attributes: {
              authentication_supported: [{ authentication_class: 'pop', authentication_type: 'tpm_pop' }],
            },
          },
        },
      })
    expect(last.statusCode).toBe(429)
    expect(Number(last.headers['retry-after'])).toBe(60)
    expect(last.json().errors[0].status).toBe('429')
  })
  it('the legacy routes: open on /agents/:id/session, answer on /agents/:id/session/:id, show by token', async () => {
    const opened = await app.inject({
      method: 'POST',
      url: '/v3/agents/push-a/session',
      headers: JSON_API,
      payload: {
        data: {
          type: 'session',
          attributes: {
            authentication_supported: [{ authentication_class: 'pop', authentication_type: 'tpm_pop' }],
          },
        },
      },
    })
    expect(opened.statusCode).toBe(200)
    const d = opened.json().data
    const challenge = Buffer.from(
      d.attributes.authentication_requested[0].chosen_parameters.challenge,
      'base64',
    )
    const answered = await app.inject({
      method: 'PATCH',
      url: `/v3/agents/push-a/session/${d.id}`,
      headers: JSON_API,
      payload: {
        data: {
          type: 'session',
          attributes: {
            authentication_provided: [
              { authentication_class: 'pop', authentication_type: 'tpm_pop', data: await certify(challenge) },
            ],
          },
        },
      },
    })
    expect(answered.statusCode).toBe(200)
    const token = answered.json().data.attributes.token as string
    const shown = await app.inject({ method: 'GET', url: `/v3/agents/push-a/session/${token}` })
    expect(shown.statusCode).toBe(200)
    expect(shown.json().data.attributes.active).toBe(true)
    expect((await app.inject({ method: 'GET', url: `/v3/agents/push-b/session/${token}` })).statusCode).toBe(
      404,
    )
  })
})

describe('push verifier: an agent reads its own record (AGENT_OR_ADMIN, as upstream)', () => {
  const read = (id: string, headers: Record<string, string> = {}) =>
    app.inject({ method: 'GET', url: `/v3/agents/${id}`, headers })
  it("GET /v3/agents/:id with its session token: its own record, never another agent's", async () => {
    const tokenA = await login('push-a')
    const own = await read('push-a', { authorization: `Bearer ${tokenA}` })
    expect(own.statusCode, own.body).toBe(200)
    expect(own.json().data).toMatchObject({ type: 'agent', id: 'push-a' })
    expect(own.json().data.attributes.ip).toBeNull()
    const other = await read('push-b', { authorization: `Bearer ${tokenA}` })
    expect(other.statusCode).toBe(403)
    expect(other.json().errors[0]).toMatchObject({ status: '403', code: 'forbidden' })
    // a token that is not a session's, or no bearer at all: 401, and the admin certificate is not consulted instead
    const forged = `${tokenA.split('.')[0]}.${'A'.repeat(43)}`
    for (const authorization of [`Bearer ${forged}`, 'Basic YWRtaW46YWRtaW4=']) {
      const refused = await read('push-a', { authorization, ...ADMIN })
      expect(refused.statusCode, authorization).toBe(401)
      expect(refused.json().errors[0]).toMatchObject({ status: '401', code: 'unauthorized' })
    }
    // the other v3 agent routes stay admin-only, token or not
    const list = await app.inject({
      method: 'GET',
      url: '/v3/agents',
      headers: { authorization: `Bearer ${tokenA}` },
    })
    expect(list.statusCode).toBe(403)
    // without a token: the admin reads any agent, anyone else is refused
    expect((await read('push-b', ADMIN)).statusCode).toBe(200)
    expect((await read('push-b')).statusCode).toBe(403)
  })
})

describe('push verifier: attestations', () => {
  let token: string
  let firstExpiry: number
  it('capabilities -> 201 with Location and only the evidence the policies need; evidence -> 202; pass', async () => {
    token = await login('push-a')
    const { created, createdMeta, accepted, done } = await attest('push-a', token)
    // the token's expiry travels with the 201 and the 202 (extend_token_on_attestation)
    firstExpiry = Date.parse(createdMeta.token_expires_at)
    expect(firstExpiry).toBeGreaterThan(now())
    expect(Date.parse(accepted.meta.token_expires_at)).toBe(firstExpiry)
    const requested = created.attributes.evidence_requested
    expect(requested.map((r: { evidence_type: string }) => r.evidence_type)).toEqual(['tpm_quote', 'ima_log'])
    expect(requested[0].chosen_parameters.selected_subjects).toEqual({ sha256: [10] })
    expect(requested[1].chosen_parameters.starting_offset).toBe(0)
    expect(accepted.meta.seconds_to_next_attestation).toBe(2)
    expect(accepted.data.attributes.stage).toBe('evaluating_evidence')
    expect(done.attributes.stage).toBe('verification_complete')
    expect(done.attributes.evaluation).toBe('pass')
    expect(Date.parse(done.attributes.verification_completed_at)).toBeGreaterThan(0)
    const s = await status('push-a')
    expect(s.attestation_status).toBe('PASS')
    expect(s.attestation_count).toBe(1)
  })
  it('the next attestation asks for the IMA increment from the verified offset, and it passes', async () => {
    await extend(good.slice(10, 14))
    const { created, done } = await attest('push-a', token)
    expect(created.attributes.evidence_requested[1].chosen_parameters.starting_offset).toBe(10)
    expect(done.attributes.evaluation).toBe('pass')
  })
  it('a whole IMA list re-sent from entry 0 (as a Rust push agent does) passes', async () => {
    await extend(good.slice(14, 16))
    const { created, createdMeta, done } = await attest('push-a', token, { wholeLog: true })
    // the previous pass (QUOTE_INTERVAL_MS later than the first) extended the token: the 201 says so
    expect(Date.parse(createdMeta.token_expires_at)).toBeGreaterThanOrEqual(firstExpiry + QUOTE_INTERVAL_MS)
    expect(created.attributes.evidence_requested[1].chosen_parameters.starting_offset).toBe(14)
    expect(done.attributes.evaluation).toBe('pass')
    expect((await status('push-a')).attestation_count).toBe(3)
  })
  it('retention keeps the first attestation of the boot and the latest, drops the ones between', async () => {
    const list = await app.inject({ method: 'GET', url: '/v3.0/agents/push-a/attestations', headers: ADMIN })
    expect(list.json().data.map((a: { id: string }) => a.id)).toEqual(['0', '2'])
  })
  it('429 with Retry-After before quote_interval has passed since the last evidence', async () => {
    skewMs -= QUOTE_INTERVAL_MS
    const res = await startAttestation('push-a', token)
    expect(res.statusCode).toBe(429)
    expect(Number(res.headers['retry-after'])).toBeGreaterThan(0)
    skewMs += QUOTE_INTERVAL_MS
  })
  it('no 429 for an agent that waited seconds_to_next_attestation after its 202 while the verdict came later', async () => {
    const { accepted, done } = await attest('push-a', token)
    const receivedAt = Date.parse(done.attributes.evidence_received_at)
    // the verdict of a busy verifier, written in the second after the one the evidence arrived in
    await db
      .updateTable('verifier_attestation_state')
      .set({ last_received_quote: Math.floor(receivedAt / 1000) + 1 })
      .where('agent_id', '=', 'push-a')
      .execute()
    // the agent's next create, seconds_to_next_attestation after the evidence
    skewMs += receivedAt + accepted.meta.seconds_to_next_attestation * 1000 - now()
    const created = await startAttestation('push-a', token)
    expect(created.statusCode, created.body).toBe(201)
    const res = await submit(
      'push-a',
      token,
      await evidence(created.json().data.attributes.evidence_requested),
    )
    expect(res.statusCode, res.body).toBe(202)
    expect((await latest('push-a')).attributes.evaluation).toBe('pass')
    skewMs += QUOTE_INTERVAL_MS
  })
  it('422 names the offending capability with source.pointer', async () => {
    const res = await startAttestation('push-a', token, capabilities(agent.log.length, '1.0'))
    expect(res.statusCode).toBe(422)
    expect(res.json().errors[0].source.pointer).toBe('/evidence_supported/0/capabilities/component_version')
    const noBoot = capabilities()
    ;(noBoot.data.attributes as Record<string, unknown>).system_info = {}
    const r2 = await startAttestation('push-a', token, noBoot)
    expect(r2.statusCode).toBe(422)
    expect(r2.json().errors[0].source.pointer).toBe('/system_info/boot_time')
  })
  it('403 old_attestation, evidence_immutable (a replayed PATCH) and challenges_expired', async () => {
    const first = await startAttestation('push-a', token)
    const second = await startAttestation('push-a', token)
    expect(second.statusCode).toBe(201)
    const oldBody = await evidence(first.json().data.attributes.evidence_requested)
    const old = await submit('push-a', token, oldBody, first.json().data.id)
    expect(old.statusCode).toBe(403)
    expect(old.json().errors[0].code).toBe('old_attestation')
    const body = await evidence(second.json().data.attributes.evidence_requested)
    expect((await submit('push-a', token, body)).statusCode).toBe(202)
    const replay = await submit('push-a', token, body)
    expect(replay.statusCode).toBe(403)
    expect(replay.json().errors[0].code).toBe('evidence_immutable')
    expect((await latest('push-a')).attributes.evaluation).toBe('pass')
    skewMs += QUOTE_INTERVAL_MS
    const third = await startAttestation('push-a', token)
    skewMs += 1_801_000
    token = await login('push-a')
    const late = await submit(
      'push-a',
      token,
      await evidence(third.json().data.attributes.evidence_requested),
    )
    expect(late.statusCode).toBe(403)
    expect(late.json().errors[0].code).toBe('challenges_expired')
  })
  it('400 when the evidence does not match the request; 409 for a concurrent create', async () => {
    const created = await startAttestation('push-a', token)
    const res = await submit('push-a', token, {
      data: { type: 'attestation', attributes: { evidence_collected: [] } },
    })
    expect(res.statusCode).toBe(400)
    expect(res.json().errors[0].source.pointer).toBe('/evidence_collected')
    expect(created.statusCode).toBe(201)
    // another verifier of the group creates the same index between this one's read and its insert
    const repo = service.push?.repo as NonNullable<typeof service.push>['repo']
    const read = repo.agentForCreate.bind(repo)
    repo.agentForCreate = async (id: string) => {
      const r = await read(id)
      repo.agentForCreate = read
      await repo.createAttestation({
        agent_id: id,
        index: (r?.latest?.index ?? -1) + 1,
        stage: 'awaiting_evidence',
        evaluation: 'pending',
      })
      return r
    }
    const raced = await startAttestation('push-a', token)
    expect(raced.statusCode).toBe(409)
    expect(raced.json().errors[0].code).toBe('conflict')
  })
  it('503 with Retry-After while the previous evidence is being verified', async () => {
    const res = await startAttestation('push-a', token)
    const req = res.json().data.attributes.evidence_requested
    const body = await evidence(req)
    // the evaluation held by another verifier of the group (its hold not expired yet)
    const repo = service.push?.repo
    const index = Number(res.json().data.id)
    await repo?.submitEvidence('push-a', index, {
      evidence_collected: JSON.stringify(body.data.attributes.evidence_collected),
      evidence_received_at: new Date(now() - QUOTE_INTERVAL_MS).toISOString(),
      holder: 'another-verifier',
      expires: now() + 1000,
    })
    const busy = await startAttestation('push-a', token)
    expect(busy.statusCode).toBe(503)
    expect(busy.headers['retry-after']).toBe('1')
    // that verifier dies: once its hold expires, this one finishes the evaluation from the stored evidence
    skewMs += 2000
    expect(await service.push?.attestations.resumeAbandoned()).toBe(1)
    expect((await latest('push-a')).attributes.evaluation).toBe('pass')
    skewMs += QUOTE_INTERVAL_MS
  })
  it('401 without a token or with an expired one; 403 with a token of another agent; 404 for an unknown agent', async () => {
    const none = await app.inject({
      method: 'POST',
      url: '/v3.0/agents/push-a/attestations',
      headers: JSON_API,
      payload: capabilities(),
    })
    expect(none.statusCode).toBe(401)
    const tokenB = await login('push-b')
    const other = await startAttestation('push-a', tokenB)
    expect(other.statusCode).toBe(403)
    await app.inject({ method: 'DELETE', url: '/v2.6/agents/push-b', headers: ADMIN })
    const gone = await startAttestation('push-b', tokenB)
    expect(gone.statusCode).toBe(404)
    skewMs += 181_000
    const expired = await startAttestation('push-a', token)
    expect(expired.statusCode).toBe(401)
    expect(expired.json().errors[0].detail).toBe('Authentication token expired')
    token = await login('push-a')
  })
  it('an IMA entry not in the policy fails the agent and a signed revocation reaches the webhook', async () => {
    await extend([imaNgEntryFor('/tmp/evil', 'rootkit')])
    const { done } = await attest('push-a', token)
    expect(done.attributes.evaluation).toBe('fail')
    expect(done.attributes.failure_reason).toBe('policy_violation')
    expect(done.attributes.failure.event_id).toBe('ima.validation.ima-ng.not_in_allowlist')
    const s = await status('push-a')
    expect(s.attestation_status).toBe('FAIL')
    expect(s.operational_state).toBe(9)
    await waitFor(() => hook.received.length > 0, 5000, 'revocation webhook')
    const msg = verifyRevocation(hook.received[0], revocation.publicKey)
    expect(msg).toMatchObject({
      type: 'revocation',
      agent_id: 'push-a',
      event_id: 'ima.validation.ima-ng.not_in_allowlist',
    })
  })
  it('evidence overdue: the monitor fails the agent with its own event and notifies', async () => {
    const before = hook.received.length
    skewMs += 61_000
    await service.push?.monitor.tick()
    const s = await status('push-a')
    expect(s.operational_state).toBe(7)
    expect(s.last_event_id).toBe('internal.push.evidence_overdue')
    expect(s.attestation_status).toBe('FAIL')
    await waitFor(() => hook.received.length > before, 5000, 'overdue notification')
    expect(verifyRevocation(hook.received[before], revocation.publicKey)).toMatchObject({
      type: 'comm_error',
      event_id: 'internal.push.evidence_overdue',
    })
    // a second round does not fail it again
    await service.push?.monitor.tick()
    expect(service.push?.monitor.overdue).toBe(1)
  })
  it('push metrics: sessions, evidence accepted, verdicts by event id, time to 202, overdue agents', async () => {
    const text = await registry.metrics()
    const value = (series: string) => {
      const line = text.split('\n').find((l) => l.startsWith(`${series} `))
      return line === undefined ? Number.NaN : Number(line.slice(series.length + 1))
    }
    expect(value('keylime_verifier_push_sessions_total{outcome="authenticated"}')).toBeGreaterThanOrEqual(3)
    expect(value('keylime_verifier_push_sessions_total{outcome="refused"}')).toBeGreaterThanOrEqual(1)
    const passed = value('keylime_verifier_push_attestations_total{result="pass",event_id=""}')
    expect(passed).toBeGreaterThanOrEqual(3)
    expect(
      value(
        'keylime_verifier_push_attestations_total{result="fail",event_id="ima.validation.ima-ng.not_in_allowlist"}',
      ),
    ).toBe(1)
    const accepted = value('keylime_verifier_push_evidence_accepted_total')
    // four whole attestations went through the routes (one more passed from evidence stored directly)
    expect(accepted).toBeGreaterThanOrEqual(4)
    expect(value('keylime_verifier_push_attestations_received_total')).toBeGreaterThan(accepted)
    expect(value('keylime_verifier_push_time_to_202_seconds_count')).toBe(accepted)
    expect(value('keylime_verifier_push_evaluation_duration_seconds_count{result="fail"}')).toBe(1)
    expect(value('keylime_verifier_push_overdue_total')).toBe(1)
    expect(value('keylime_verifier_push_overdue_agents')).toBe(1)
  })
  it('reactivate clears the failure; delete removes the agent and its attestations at once', async () => {
    const re = await app.inject({ method: 'PUT', url: '/v2.6/agents/push-a/reactivate', headers: ADMIN })
    expect(re.statusCode).toBe(200)
    const s = await status('push-a')
    expect(s.operational_state).toBe(3)
    expect(s.attestation_status).toBe('PASS')
    const del = await app.inject({ method: 'DELETE', url: '/v2.6/agents/push-a', headers: ADMIN })
    expect(del.statusCode).toBe(200)
    expect(await service.push?.repo.listAttestations('push-a')).toEqual([])
    const gone = await app.inject({ method: 'GET', url: '/v3.0/agents/push-a/attestations', headers: ADMIN })
    expect(gone.statusCode).toBe(404)
  })
})
