import { constants, createHash, generateKeyPairSync, verify } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { type SimFleet, simMeasure } from '../../../bench/fleet-agents.ts'
import { AgentState } from '../../../src/api/verifier/states.ts'
import type { StepEvent } from '../../../src/verifier/attestation-loop.ts'
import { runtimePolicyDocument } from '../../helpers/runtime-policy.ts'
import { type SignedNotification, startWebhookReceiver } from '../../helpers/webhook-receiver.ts'
import {
  ADMIN,
  enrollBody,
  enrollFleetAgent,
  makeVerifier,
  memoryDb,
  nextStep,
  type TestVerifier,
  waitFor,
} from './harness.ts'
import { testResources } from './test-resources.ts'

const { cleanups, fleet, startVerifier } = testResources()

const stepOf = (v: TestVerifier, agentId: string, match: (e: StepEvent) => boolean) =>
  nextStep(v.service, agentId, match)

describe('attestation loop against simulated agents', () => {
  it('verifies the IMA log incrementally against a runtime policy on worker threads and fails on an unlisted file', async () => {
    const f = await fleet(1)
    const v = await startVerifier({ evidenceWorkers: 2 })
    const a = f.agents[0] as SimFleet['agents'][number]
    const good = createHash('sha256').update('good binary').digest('hex')
    simMeasure(a, '/usr/bin/good', 'good binary')
    const policy = runtimePolicyDocument({ '/usr/bin/good': [good] })
    const pcr15 = (a.quoter.pcrs.get(15) as Buffer).toString('hex')
    const res = await v.app.inject({
      method: 'POST',
      url: `/v2.6/agents/${a.id}`,
      headers: ADMIN,
      payload: enrollBody(a, f.port, {
        tpm_policy: JSON.stringify({ '15': [pcr15], mask: '0x8400' }),
        runtime_policy: Buffer.from(JSON.stringify(policy)).toString('base64'),
      }),
    })
    expect(res.statusCode, res.body).toBe(200)
    await waitFor(() => a.quotes >= 2)
    simMeasure(a, '/usr/bin/good', 'good binary')
    await waitFor(() => a.quotes >= 5)
    await v.service.loop.flush()
    const row = await v.service.repo.getAgent(a.id)
    expect(row?.operational_state).toBe(AgentState.GET_QUOTE)
    expect(JSON.parse(row?.ima_state ?? '{}').nextEntry).toBe(2)
    const show = await v.app.inject({ method: 'GET', url: `/v2.6/agents/${a.id}`, headers: ADMIN })
    expect(show.json().results.has_runtime_policy).toBe(1)
    simMeasure(a, '/tmp/evil', 'evil')
    await waitFor(
      async () => (await v.service.repo.getAgent(a.id))?.operational_state === AgentState.INVALID_QUOTE,
    )
    expect((await v.service.repo.getAgent(a.id))?.last_event_id).toBe(
      'ima.validation.ima-ng.not_in_allowlist',
    )
    // every evaluation ran on the workers, the policy sent to each worker at most once
    const pool = v.service.evidence.pool?.stats()
    expect(pool).toMatchObject({ workerDeaths: 0, inFlight: 0 })
    expect(pool?.policiesSent).toBeGreaterThanOrEqual(1)
    expect(pool?.policiesSent).toBeLessThanOrEqual(2)
  })

  it('checks the IMA list of an agent enrolled with a runtime policy and an empty PCR mask', async () => {
    // A REST client may enrol a runtime policy with tpm_policy {} (mask 0x0): the verifier derives PCR 10 itself.
    const f = await fleet(1)
    const v = await startVerifier()
    const a = f.agents[0] as SimFleet['agents'][number]
    simMeasure(a, '/usr/bin/good', 'good binary')
    const policy = runtimePolicyDocument({
      '/usr/bin/good': [createHash('sha256').update('good binary').digest('hex')],
    })
    const res = await v.app.inject({
      method: 'POST',
      url: `/v2.6/agents/${a.id}`,
      headers: ADMIN,
      payload: enrollBody(a, f.port, {
        tpm_policy: '{}',
        runtime_policy: Buffer.from(JSON.stringify(policy)).toString('base64'),
      }),
    })
    expect(res.statusCode, res.body).toBe(200)
    await waitFor(async () => {
      await v.service.loop.flush()
      return JSON.parse((await v.service.repo.getAgent(a.id))?.ima_state ?? '{}').nextEntry === 1
    })
    simMeasure(a, '/tmp/evil', 'evil')
    await waitFor(
      async () => (await v.service.repo.getAgent(a.id))?.operational_state === AgentState.INVALID_QUOTE,
    )
    expect((await v.service.repo.getAgent(a.id))?.last_event_id).toBe(
      'ima.validation.ima-ng.not_in_allowlist',
    )
  })

  it('fails an agent whose reply exceeds max_agent_response_size with its own event, without reading it all', async () => {
    const f = await fleet(1)
    const a = f.agents[0] as SimFleet['agents'][number]
    for (let i = 0; i < 2000; i++) simMeasure(a, `/usr/lib/file-${i}`, `content ${i}`) // ~300 KB of IMA list
    const v = await startVerifier({ maxAgentResponseBytes: 64 * 1024 })
    await enrollFleetAgent(v, f, 0)
    await waitFor(
      async () => (await v.service.repo.getAgent(a.id))?.operational_state === AgentState.INVALID_QUOTE,
    )
    expect((await v.service.repo.getAgent(a.id))?.last_event_id).toBe('qoute_validation.response_too_large')
  })

  it('refuses an enrolment whose tpm_policy lists PCR 10 or 16', async () => {
    const f = await fleet(1)
    const v = await startVerifier()
    const a = f.agents[0] as SimFleet['agents'][number]
    for (const pcr of ['10', '16']) {
      const res = await v.app.inject({
        method: 'POST',
        url: `/v2.6/agents/${a.id}`,
        headers: ADMIN,
        payload: enrollBody(a, f.port, { tpm_policy: JSON.stringify({ [pcr]: ['00'.repeat(32)] }) }),
      })
      expect(res.statusCode, res.body).toBe(400)
      expect(res.json().status).toMatch(new RegExp(`PCR ${pcr}`))
    }
    expect(await v.service.repo.getAgent(a.id)).toBeUndefined()
  })

  it('verifies a 200,000-entry IMA list through the sliced path and continues from its end', async () => {
    // The loop verifies 10,000 lines per event-loop turn; the state carried between slices must give the same
    // result as one pass: the whole list matches the quoted PCR 10, then one more entry is verified incrementally.
    const f = await fleet(1)
    const a = f.agents[0] as SimFleet['agents'][number]
    const entries = 200_000
    for (let i = 0; i < entries; i++) simMeasure(a, `/usr/lib/file-${i}`, `content ${i}`)
    const v = await startVerifier()
    const pcr15 = (a.quoter.pcrs.get(15) as Buffer).toString('hex')
    const res = await v.app.inject({
      method: 'POST',
      url: `/v2.6/agents/${a.id}`,
      headers: ADMIN,
      payload: enrollBody(a, f.port, { tpm_policy: JSON.stringify({ '15': [pcr15], mask: '0x8400' }) }),
    })
    expect(res.statusCode, res.body).toBe(200)
    const nextEntry = async () => {
      await v.service.loop.flush()
      return JSON.parse((await v.service.repo.getAgent(a.id))?.ima_state ?? '{}').nextEntry
    }
    await waitFor(async () => (await nextEntry()) === entries, 60_000, 'the whole list verified')
    simMeasure(a, '/usr/bin/one-more', 'one more')
    await waitFor(async () => (await nextEntry()) === entries + 1, 30_000, 'the new entry verified')
    expect((await v.service.repo.getAgent(a.id))?.operational_state).toBe(AgentState.GET_QUOTE)
  })

  it.each(['node', 'lean'] as const)(
    'attests repeatedly, delivers V exactly once, and records the results (agents on %s HTTP)',
    async (http) => {
      const f = await fleet(1, http)
      const v = await startVerifier()
      const a = await enrollFleetAgent(v, f, 0)
      await waitFor(() => a.quotes >= 4, 5000, '4 quotes')
      await v.service.loop.flush()
      const row = await v.service.repo.getAgent(a.id)
      expect(row?.operational_state).toBe(AgentState.GET_QUOTE)
      expect(row?.attestation_count).toBeGreaterThanOrEqual(3)
      expect(row?.public_key).toBe(a.pubkeyPem)
      expect(a.vKeys).toEqual([Buffer.alloc(32, 7).toString('base64')])
      const show = await v.app.inject({ method: 'GET', url: `/v2.6/agents/${a.id}`, headers: ADMIN })
      expect(show.json().results.attestation_status).toBe('PASS')
    },
  )

  it('never releases V to an agent whose first quote fails', async () => {
    const f = await fleet(1)
    const v = await startVerifier()
    const a = f.agents[0]
    if (!a) throw new Error('no agent')
    // the policy expects a PCR 15 value the agent does not have: its very first quote fails
    const failedStep = stepOf(v, a.id, (e) => e.outcome === 'quote_failed')
    await enrollFleetAgent(v, f, 0, {
      tpm_policy: JSON.stringify({ '15': ['ff'.repeat(32)], mask: '0x8000' }),
    })
    const failed = await failedStep
    // the failing step ended with the agent out of the loop: no later step can deliver V
    expect(failed).toMatchObject({ state: AgentState.INVALID_QUOTE, attested: false })
    expect(v.service.loop.has(a.id)).toBe(false)
    expect((await v.service.repo.getAgent(a.id))?.operational_state).toBe(AgentState.INVALID_QUOTE)
    expect(a.quotes).toBe(1)
    expect(a.vKeys).toEqual([])
  })

  it.each(['node', 'lean'] as const)(
    'detects a tampered policy PCR: INVALID_QUOTE, polling stops, signed revocation reaches the webhook (agents on %s HTTP)',
    async (http) => {
      const hook = await startWebhookReceiver()
      cleanups.push(hook.close)
      const hooks = hook.received
      const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
      const f = await fleet(2, http)
      const v = await startVerifier({
        revocationChannels: ['webhook', 'agent'],
        webhookUrl: hook.url,
      })
      const a = await enrollFleetAgent(v, f, 0, {
        revocation_key: privateKey.export({ type: 'pkcs8', format: 'pem' }),
      })
      const other = await enrollFleetAgent(v, f, 1)
      await waitFor(() => a.quotes >= 2 && other.quotes >= 2, 5000, 'first quotes')
      const failedStep = stepOf(v, a.id, (e) => e.outcome === 'quote_failed')
      a.quoter.extend(15, Buffer.from('evil'))
      // polling stops with the failing step itself (default severity: every failure is the highest)
      expect(await failedStep).toMatchObject({ state: AgentState.INVALID_QUOTE, attested: false })
      const quotesAtFailure = a.quotes
      const row = await v.service.repo.getAgent(a.id)
      expect(row?.last_event_id).toBe('pcr_validation.invalid_pcr_15')
      expect(row?.severity_level).toBe(6)
      await waitFor(() => hooks.length === 1, 5000, 'webhook')
      const wire = hooks[0] as SignedNotification
      const msg = JSON.parse(wire.msg)
      expect(msg).toMatchObject({
        type: 'revocation',
        agent_id: a.id,
        event_id: 'pcr_validation.invalid_pcr_15',
        severity_label: 'emergency',
      })
      const sigOk = verify(
        'sha256',
        Buffer.from(wire.msg),
        {
          key: publicKey,
          padding: constants.RSA_PKCS1_PSS_PADDING,
          saltLength: constants.RSA_PSS_SALTLEN_AUTO,
        },
        Buffer.from(wire.signature, 'base64'),
      )
      expect(sigOk).toBe(true)
      await waitFor(() => other.revocations.length === 1, 5000, 'revocation to the other agent')
      // the other agent keeps being attested while the failed one is not asked again
      await stepOf(v, other.id, (e) => e.outcome === 'quote_passed')
      expect(a.quotes).toBe(quotesAtFailure)
      expect(v.service.loop.has(a.id)).toBe(false)
      expect(v.service.loop.has(other.id)).toBe(true)
    },
  )

  it('retries an unreachable agent with P=0 and recovers; gives up as FAILED after max_retries', async () => {
    const f = await fleet(2)
    const v = await startVerifier({ maxRetries: 3 })
    const a = await enrollFleetAgent(v, f, 0)
    const b = await enrollFleetAgent(v, f, 1)
    await waitFor(() => a.quotes >= 2 && b.quotes >= 2)
    a.down = true
    b.down = true
    await waitFor(
      async () => (await v.service.repo.getAgent(a.id))?.operational_state === AgentState.GET_QUOTE_RETRY,
    )
    a.down = false
    const before = a.quotes
    await waitFor(() => a.quotes > before + 2, 5000, 'recovered quotes')
    await v.service.loop.flush()
    expect((await v.service.repo.getAgent(a.id))?.operational_state).toBe(AgentState.GET_QUOTE)
    await waitFor(
      async () => (await v.service.repo.getAgent(b.id))?.operational_state === AgentState.FAILED,
      5000,
      'FAILED',
    )
    expect(v.service.loop.has(b.id)).toBe(false)
  })

  it('reactivate restarts a failed agent from START and re-sends V; stop and delete end polling', async () => {
    const f = await fleet(1)
    const v = await startVerifier()
    const a = await enrollFleetAgent(v, f, 0)
    await waitFor(() => a.vKeys.length === 1)
    a.quoter.extend(15, Buffer.from('x'))
    await waitFor(
      async () => (await v.service.repo.getAgent(a.id))?.operational_state === AgentState.INVALID_QUOTE,
    )
    // operator accepts the new state: fix the policy by re-enrolling would be the tenant's job; here undo the change
    const fixed = enrollBody(a, f.port)
    await v.service.repo.db
      .updateTable('verifiermain')
      .set({ tpm_policy: fixed.tpm_policy })
      .where('agent_id', '=', a.id)
      .execute()
    const re = await v.app.inject({ method: 'PUT', url: `/v2.6/agents/${a.id}/reactivate`, headers: ADMIN })
    expect(re.statusCode).toBe(200)
    await waitFor(() => a.vKeys.length === 2, 5000, 'V re-sent after reactivation')
    // the agent stores V before answering; the verifier's PROVIDE_V -> GET_QUOTE write follows the reply
    await waitFor(
      async () => (await v.service.repo.getAgent(a.id))?.operational_state === AgentState.GET_QUOTE,
      5000,
      'GET_QUOTE after V',
    )
    const stop = await v.app.inject({ method: 'PUT', url: `/v2.6/agents/${a.id}/stop`, headers: ADMIN })
    expect(stop.statusCode).toBe(200)
    expect((await v.service.repo.getAgent(a.id))?.operational_state).toBe(AgentState.TENANT_FAILED)
    // stop took the agent out of the loop: nothing schedules another step for it
    expect(v.service.loop.has(a.id)).toBe(false)
    const del = await v.app.inject({ method: 'DELETE', url: `/v2.6/agents/${a.id}`, headers: ADMIN })
    expect(del.statusCode).toBe(200)
    expect(await v.service.repo.getAgent(a.id)).toBeUndefined()
  })

  it('renegotiates the agent API version when the agent rejects the stored one', async () => {
    const f = await fleet(1)
    const v = await startVerifier()
    const a = f.agents[0] as SimFleet['agents'][number]
    a.apiVersions = ['2.1', '2.2', '2.3', '2.4']
    await enrollFleetAgent(v, f, 0)
    await waitFor(() => a.quotes >= 2, 5000, 'quotes after renegotiation')
    const row = await v.service.repo.getAgent(a.id)
    expect(row?.supported_version).toBe('2.4')
    await v.service.loop.flush()
    expect((await v.service.repo.getAgent(a.id))?.operational_state).not.toBe(AgentState.FAILED)
  })

  it('a restarted verifier (same address) resumes every agent from the database without failing any', async () => {
    const f = await fleet(3)
    const db = memoryDb()
    const first = await makeVerifier({}, db, 'v1@127.0.0.1:8881')
    await first.service.start()
    for (let i = 0; i < 3; i++) await enrollFleetAgent(first, f, i)
    await waitFor(() => f.agents.every((a) => a.quotes >= 2))
    // crash: stop the loop without releasing leases or flushing (what SIGKILL leaves behind)
    await first.service.abandon()
    const second = await makeVerifier({}, db, 'v1@127.0.0.1:8881')
    await second.service.start()
    cleanups.push(() => second.service.stop())
    const counts = f.agents.map((a) => a.quotes)
    await waitFor(
      () => f.agents.every((a, i) => a.quotes >= (counts[i] as number) + 2),
      5000,
      'resumed quotes',
    )
    await second.service.loop.flush()
    for (const a of f.agents) {
      const row = await second.service.repo.getAgent(a.id)
      expect(row?.operational_state).toBe(AgentState.GET_QUOTE)
    }
    expect(f.agents.every((a) => a.vKeys.length === 2)).toBe(true)
  })

  it('two verifiers sharing a database never both attest an agent; a dead one’s agents are taken over', async () => {
    const f = await fleet(6)
    const db = memoryDb()
    const va = await makeVerifier({ leaseMs: 2000 }, db, 'A')
    const vb = await makeVerifier({ leaseMs: 2000 }, db, 'B')
    await va.service.start()
    for (let i = 0; i < 3; i++) await enrollFleetAgent(va, f, i)
    await vb.service.start()
    cleanups.push(() => vb.service.stop())
    for (let i = 3; i < 6; i++) await enrollFleetAgent(vb, f, i)
    await waitFor(() => f.agents.every((a) => a.quotes >= 2))
    for (const a of f.agents) expect(va.service.loop.has(a.id) !== vb.service.loop.has(a.id)).toBe(true)
    // A dies without releasing its leases; B picks its agents up after the lease expires
    await va.service.abandon()
    await waitFor(() => f.agents.every((a) => vb.service.loop.has(a.id)), 15_000, 'takeover')
    const counts = f.agents.map((a) => a.quotes)
    await waitFor(
      () => f.agents.every((a, i) => a.quotes >= (counts[i] as number) + 2),
      5000,
      'quotes after takeover',
    )
    const holders = await db.selectFrom('verifiermain').select('lease_holder').execute()
    expect(new Set(holders.map((h) => h.lease_holder))).toEqual(new Set([vb.service.leaseHolder]))
  })
})
