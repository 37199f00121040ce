/**
 * The verifier's attestation core against simulated agents: one evidence pipeline for the loop and the evidence API,
 * corrupt stored data reported as the verifier's own fault, quote failure reasons shown, rows changed by others
 * noticed, identical replicas kept apart by per-process lease holders with epoch fencing.
 */
import { createHash } from 'node:crypto'
import { describe, expect, it, vi } from 'vitest'
import { type SimFleet, simMeasure } from '../../../bench/fleet-agents.ts'
import { SoftQuoter } from '../../../bench/fleet-quoter.ts'
import { AgentState } from '../../../src/api/verifier/states.ts'
import { bodyInput } from '../../../src/db/verifier-repository.ts'
import { CANNOT_EVALUATE_EVENT } from '../../../src/verifier/state-machine.ts'
import { runtimePolicyDocument } from '../../helpers/runtime-policy.ts'
import {
  ADMIN,
  capturingLog,
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

/** Enrols agent `i` and waits for its first passing quote. */
async function enroll(v: TestVerifier, f: SimFleet, i: number, extra = {}) {
  const a = f.agents[i] as SimFleet['agents'][number]
  const passed = nextStep(v.service, a.id, (e) => e.outcome === 'quote_passed')
  await enrollFleetAgent(v, f, i, extra)
  await passed
  return a
}

const show = async (v: TestVerifier, id: string) =>
  (await v.app.inject({ method: 'GET', url: `/v2.6/agents/${id}`, headers: ADMIN })).json().results

describe('one evidence pipeline', () => {
  it('the pull loop and POST /verify/evidence both run the service’s one EvidenceRunner', async () => {
    const f = await fleet(1)
    const v = await startVerifier()
    const run = vi.spyOn(v.service.evidence, 'run')
    const a = await enroll(v, f, 0)
    const fromLoop = run.mock.calls.length
    expect(fromLoop).toBeGreaterThanOrEqual(1)
    expect(run.mock.calls[0]?.[0].nonce).toMatch(/^[A-Za-z0-9]{20}$/)
    const pcr15 = (a.quoter.pcrs.get(15) as Buffer).toString('hex')
    const res = await v.app.inject({
      method: 'POST',
      url: '/v2.6/verify/evidence',
      payload: {
        type: 'tpm',
        data: {
          quote: a.quoter.quote('evidence-nonce', [15]),
          nonce: 'evidence-nonce',
          hash_alg: 'sha256',
          tpm_ek: 'x',
          tpm_ak: a.quoter.akTpm,
          tpm_policy: JSON.stringify({ '15': [pcr15] }),
        },
      },
    })
    expect(res.json().results).toMatchObject({ valid: true, failures: [] })
    const evidenceCall = run.mock.calls.find((c) => c[0].nonce === 'evidence-nonce')
    expect(evidenceCall?.[0]).toMatchObject({ checkClock: false, requiredPcrs: [15] })
  })
})

describe('the verifier’s own faults (cannot evaluate) and failure reasons', () => {
  it('a corrupt stored ima_state fails the agent as cannot_evaluate, without a revocation, shown by GET', async () => {
    const f = await fleet(1)
    const db = memoryDb()
    const first = await makeVerifier({}, db, 'v@host/127.0.0.1:8881')
    await first.service.start()
    const a = await enroll(first, f, 0)
    await first.service.abandon()
    await db.updateTable('verifier_attestation_state').set({ ima_state: '{"version":1,"next' }).execute()
    const { log, lines } = capturingLog()
    const second = await makeVerifier({}, db, 'v@host/127.0.0.1:8881', log)
    const notify = vi.spyOn(second.service.notifier, 'notify')
    const failed = nextStep(second.service, a.id, (e) => e.outcome === 'cannot_evaluate')
    await second.service.start()
    cleanups.push(() => second.service.stop())
    expect(await failed).toMatchObject({ state: AgentState.FAILED, attested: false })
    expect(notify).not.toHaveBeenCalled()
    const results = await show(second, a.id)
    expect(results).toMatchObject({
      operational_state: AgentState.FAILED,
      attestation_status: 'FAIL',
      last_event_id: CANNOT_EVALUATE_EVENT,
      last_event_context: { field: 'ima_state' },
    })
    const logged = lines.find((l) => l.msg === 'stored agent data is unusable: cannot evaluate (not revoked)')
    expect(logged).toMatchObject({ agentId: a.id, field: 'ima_state' })
  })

  it('a corrupt accept list written by an operator is noticed by the running verifier and not revoked', async () => {
    const f = await fleet(1)
    const v = await startVerifier({ revocationChannels: ['agent'] })
    const a = await enroll(v, f, 0)
    const notify = vi.spyOn(v.service.notifier, 'notify')
    await v.db.updateTable('verifiermain').set({ accept_tpm_hash_algs: 'sha256' }).execute()
    const failed = nextStep(v.service, a.id, (e) => e.outcome === 'cannot_evaluate')
    await v.service.beat()
    expect(v.service.noticed.configChanged).toBe(1)
    await failed
    expect(notify).not.toHaveBeenCalled()
    expect(await show(v, a.id)).toMatchObject({
      operational_state: AgentState.FAILED,
      last_event_id: CANNOT_EVALUATE_EVENT,
      last_event_context: { field: 'accept_tpm_hash_algs' },
    })
  })

  it('an enrolled runtime policy that no longer parses fails closed as cannot_evaluate, without a revocation', async () => {
    const f = await fleet(1)
    const v = await startVerifier()
    const a = f.agents[0] as SimFleet['agents'][number]
    simMeasure(a, '/usr/bin/good', 'good binary')
    const policy = runtimePolicyDocument({
      '/usr/bin/good': [createHash('sha256').update('good binary').digest('hex')],
    })
    await enroll(v, f, 0, { runtime_policy: Buffer.from(JSON.stringify(policy)).toString('base64') })
    const row = await v.service.repo.getAgent(a.id)
    const notify = vi.spyOn(v.service.notifier, 'notify')
    // the policy now names a body that does not parse (changed behind the verifier's back); a PUT would invalidate
    // it the same way
    const broken = bodyInput('{"meta": ')
    await v.db
      .insertInto('verifier_policy_bodies')
      .values({ digest: broken.digest, kind: 'runtime', generator: 3, body: broken.text })
      .execute()
    await v.db.updateTable('allowlists').set({ body_digest: broken.digest }).execute()
    const failed = nextStep(v.service, a.id, (e) => e.outcome === 'cannot_evaluate')
    v.service.loop.invalidatePolicy('ima', row?.ima_policy_id as number)
    await failed
    expect(notify).not.toHaveBeenCalled()
    expect(await show(v, a.id)).toMatchObject({
      operational_state: AgentState.FAILED,
      last_event_id: CANNOT_EVALUATE_EVENT,
      last_event_context: { field: 'policy' },
    })
  })

  it('a quote signed by another AK keeps the upstream event id; the reason is logged and shown by GET', async () => {
    const f = await fleet(1)
    const { log, lines } = capturingLog()
    const v = await startVerifier({}, memoryDb(), undefined, log)
    const a = await enroll(v, f, 0)
    const failed = nextStep(v.service, a.id, (e) => e.outcome === 'quote_failed')
    a.quoter = new SoftQuoter()
    await failed
    const results = await show(v, a.id)
    expect(results.last_event_id).toBe('qoute_validation.quote_validation')
    expect(results.last_event_context).toMatchObject({ reason: 'signature' })
    const line = lines.find((l) => l.msg === 'attestation failed: INVALID_QUOTE')
    expect(line).toMatchObject({
      agentId: a.id,
      events: [{ id: 'qoute_validation.quote_validation', reason: 'signature' }],
    })
  })

  it('logs why renegotiation failed and fails the agent closed', async () => {
    const f = await fleet(1)
    const { log, lines } = capturingLog()
    const v = await startVerifier({}, memoryDb(), undefined, log)
    const a = f.agents[0] as SimFleet['agents'][number]
    a.apiVersions = ['1.0']
    const refused = nextStep(v.service, a.id, (e) => e.outcome === 'refused')
    await v.app.inject({
      method: 'POST',
      url: `/v2.6/agents/${a.id}`,
      headers: ADMIN,
      payload: enrollBody(a, f.port),
    })
    expect(await refused).toMatchObject({ state: AgentState.FAILED, attested: false })
    expect(lines.find((l) => l.msg === 'no agent API version in common')).toMatchObject({ agentId: a.id })
  })
})

describe('leases: identical replicas and fencing', () => {
  it('replicas with the same uuid, ip and port on two hosts never attest one agent; a stale holder cannot write', async () => {
    const f = await fleet(4)
    const db = memoryDb()
    const logA = capturingLog()
    const logB = capturingLog()
    // what two identical containers compute: same uuid/ip/port, only the host differs
    const va = await startVerifier({ leaseMs: 60_000 }, db, 'default@host-a/0.0.0.0:8881', logA.log)
    const vb = await startVerifier({ leaseMs: 60_000 }, db, 'default@host-b/0.0.0.0:8881', logB.log)
    expect(va.service.leaseHolder).not.toBe(vb.service.leaseHolder)
    for (let i = 0; i < 4; i++) await enroll(va, f, i)
    await vb.service.beat()
    expect(vb.service.loop.size).toBe(0)
    // A stalls past its lease (as a paused process would); B claims its agents under a new epoch
    const epochs = await db.selectFrom('verifiermain').select(['agent_id', 'lease_epoch']).execute()
    await db
      .updateTable('verifier_holders')
      .set({ expires: 0 })
      .where('holder', '=', va.service.leaseHolder)
      .execute()
    await vb.service.beat()
    expect(vb.service.loop.size).toBe(4)
    const claimed = logB.lines.find((l) => l.msg === 'lease: claimed agents nobody held')
    expect(claimed).toMatchObject({ claimed: 4, held: 4 })
    for (const r of await db.selectFrom('verifiermain').select(['agent_id', 'lease_epoch']).execute())
      expect(r.lease_epoch).toBe((epochs.find((e) => e.agent_id === r.agent_id)?.lease_epoch ?? 0) + 1)
    // A's next writes are refused by the fence: it lets go of every agent; B keeps attesting them
    await waitFor(
      async () => {
        await va.service.loop.flush()
        return va.service.loop.size === 0
      },
      5000,
      'A fenced off',
    )
    await Promise.all(f.agents.map((a) => nextStep(vb.service, a.id, (e) => e.outcome === 'quote_passed')))
    await vb.service.loop.flush()
    const rows = await db.selectFrom('verifiermain').select(['lease_holder', 'operational_state']).execute()
    expect(rows.every((r) => r.lease_holder === vb.service.leaseHolder)).toBe(true)
    expect(rows.every((r) => r.operational_state === AgentState.GET_QUOTE)).toBe(true)
  })

  it('the heartbeat notices a row deleted by an operator (TERMINATED) and a lease taken elsewhere', async () => {
    const f = await fleet(2)
    const db = memoryDb()
    const { log, lines } = capturingLog()
    // no batched write reaches the row between the change and the heartbeat: the interval is long
    const v = await startVerifier({ quoteIntervalMs: 60_000 }, db, undefined, log)
    const gone = await enroll(v, f, 0)
    const taken = await enroll(v, f, 1)
    await v.service.loop.flush()
    await db
      .updateTable('verifiermain')
      .set({ operational_state: AgentState.TERMINATED })
      .where('agent_id', '=', gone.id)
      .execute()
    await db
      .insertInto('verifier_holders')
      .values({ holder: 'other@host/127.0.0.1:8881#0', expires: Date.now() + 60_000 })
      .execute()
    await db
      .updateTable('verifiermain')
      .set({ lease_holder: 'other@host/127.0.0.1:8881#0', lease_epoch: 99 })
      .where('agent_id', '=', taken.id)
      .execute()
    await v.service.beat()
    expect(v.service.noticed).toMatchObject({ stoppedByOperator: 1, leaseLost: 1 })
    expect(v.service.loop.size).toBe(0)
    expect(await v.service.repo.getAgent(gone.id)).toBeUndefined()
    expect((await v.service.repo.getAgent(taken.id))?.lease_holder).toBe('other@host/127.0.0.1:8881#0')
    expect(lines.find((l) => l.msg === 'lease: agents taken by another verifier')).toMatchObject({
      released: 1,
    })
  })

  it('the heartbeat resumes an agent it holds in a resumable state but does not attest', async () => {
    const f = await fleet(1)
    const v = await startVerifier()
    const a = await enroll(v, f, 0)
    await v.service.loop.flush()
    // what a lost in-memory record looks like: the row is ours and resumable, the loop has nothing
    v.service.loop.remove(a.id)
    const resumed = nextStep(v.service, a.id, (e) => e.outcome === 'quote_passed')
    await v.service.beat()
    expect(v.service.noticed.resumed).toBe(1)
    await resumed
  })
})
