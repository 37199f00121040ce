/**
 * The verifier as a real process over real mTLS: admin routes refuse callers without a client certificate or with
 * one from another CA; enrolled (simulated) agents are attested; SIGKILL + restart resumes them without failing any;
 * tampering is detected and the signed revocation reaches a local webhook; delete ends it.
 */
import type { ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Agent, request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type SimFleet, startSimFleet } from '../../bench/fleet-agents.ts'
import { AgentState } from '../../src/api/verifier/states.ts'
import { ensureTlsDir } from '../../src/crypto/ca.ts'
import { freeLocalPort } from '../helpers/free-port.ts'
import { spawnVerifierFromSource } from '../helpers/verifier-process.ts'
import {
  type SignedNotification,
  startWebhookReceiver,
  type WebhookReceiver,
} from '../helpers/webhook-receiver.ts'
import { enrollBody, waitFor } from '../unit/verifier/harness.ts'

const work = mkdtempSync(join(tmpdir(), 'kl-ver-e2e-'))
let port = 0
let proc: ChildProcess | null = null
let fleet: SimFleet
let hook: WebhookReceiver<SignedNotification>

function startVerifierProcess(): ChildProcess {
  const child = spawnVerifierFromSource(
    [
      '--port',
      String(port),
      '--quote-interval',
      '0.2',
      '--enable-agent-mtls',
      'false',
      '--enabled-revocation-notifications',
      "['webhook']",
      '--webhook-url',
      hook.url,
    ],
    { KEYLIME_DIR: work, KEYLIME_VERIFIER_CONFIG: join(work, 'none.conf'), KEYLIME_LOG_LEVEL: 'warn' },
  )
  child.stderr?.on('data', (d) => process.stderr.write(`[verifier] ${d}`))
  return child
}

const tlsFor = (dir: string) =>
  new Agent({
    connect: {
      ca: readFileSync(join(work, 'cv_ca/cacert.crt'), 'utf8'),
      cert: readFileSync(join(dir, 'client-cert.crt'), 'utf8'),
      key: readFileSync(join(dir, 'client-private.pem'), 'utf8'),
      checkServerIdentity: () => undefined,
    },
  })
let admin: Agent
let anonymous: Agent
let foreign: Agent

async function call(
  dispatcher: Agent,
  method: 'GET' | 'POST' | 'DELETE' | 'PUT',
  path: string,
  body?: unknown,
) {
  const res = await request(`https://127.0.0.1:${port}${path}`, {
    method,
    dispatcher,
    ...(body === undefined
      ? {}
      : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
  })
  const text = await res.body.text()
  return { status: res.statusCode, json: text ? JSON.parse(text) : undefined }
}

async function waitUp(): Promise<void> {
  await waitFor(
    async () => {
      try {
        return (await call(anonymous, 'GET', '/version')).status === 200
      } catch {
        return false
      }
    },
    30_000,
    'verifier up',
  )
}

beforeAll(async () => {
  hook = await startWebhookReceiver()
  port = await freeLocalPort()
  fleet = await startSimFleet({ count: 3, shareKeys: true })
  proc = startVerifierProcess()
  // the CA appears on first start (tls_dir = generate)
  await waitFor(
    () => {
      try {
        readFileSync(join(work, 'cv_ca/client-private.pem'))
        return true
      } catch {
        return false
      }
    },
    30_000,
    'cv_ca generated',
  )
  anonymous = new Agent({
    connect: {
      ca: readFileSync(join(work, 'cv_ca/cacert.crt'), 'utf8'),
      checkServerIdentity: () => undefined,
    },
  })
  await waitUp()
  admin = tlsFor(join(work, 'cv_ca'))
  const otherCa = join(work, 'other-ca')
  await ensureTlsDir(otherCa)
  foreign = tlsFor(otherCa)
}, 60_000)

afterAll(async () => {
  proc?.kill('SIGKILL')
  await fleet?.close()
  await hook?.close()
  rmSync(work, { recursive: true, force: true })
})

describe('verifier process', () => {
  it('refuses admin routes without a client certificate and with one from another CA', async () => {
    for (const [method, path] of [
      ['GET', '/v2.6/agents'],
      ['GET', '/v2.6/agents/x'],
      ['DELETE', '/v2.6/agents/x'],
      ['PUT', '/v2.6/agents/x/stop'],
      ['GET', '/v2.6/allowlists'],
      ['GET', '/v2.6/mbpolicies'],
    ] as const) {
      expect((await call(anonymous, method, path)).status).toBe(403)
      expect((await call(foreign, method, path)).status).toBe(403)
    }
    expect((await call(admin, 'GET', '/v2.6/agents')).status).toBe(200)
  })

  it('attests, survives SIGKILL + restart without failing agents, detects tampering, deletes', async () => {
    for (const a of fleet.agents) {
      const res = await call(admin, 'POST', `/v2.6/agents/${a.id}`, enrollBody(a, fleet.port))
      expect(res.status, JSON.stringify(res.json)).toBe(200)
    }
    await waitFor(() => fleet.agents.every((a) => a.quotes >= 3), 15_000, 'attestations')
    proc?.kill('SIGKILL')
    await new Promise((r) => proc?.once('exit', r))
    const counts = fleet.agents.map((a) => a.quotes)
    proc = startVerifierProcess()
    await waitUp()
    await waitFor(
      () => fleet.agents.every((a, i) => a.quotes >= (counts[i] as number) + 3),
      15_000,
      'resumed',
    )
    for (const a of fleet.agents) {
      const show = await call(admin, 'GET', `/v2.6/agents/${a.id}`)
      expect(show.json.results.attestation_status).toBe('PASS')
      expect([AgentState.GET_QUOTE, AgentState.PROVIDE_V] as number[]).toContain(
        show.json.results.operational_state,
      )
    }
    const victim = fleet.agents[0] as SimFleet['agents'][number]
    const saved = victim.quoter.pcrs.get(15) as Buffer
    // shared keys: tampering one soft TPM affects all three simulated agents; every one must be caught
    victim.quoter.extend(15, Buffer.from('tamper'))
    await waitFor(
      async () =>
        (await call(admin, 'GET', `/v2.6/agents/${victim.id}`)).json.results.operational_state ===
        AgentState.INVALID_QUOTE,
      10_000,
      'INVALID_QUOTE',
    )
    await waitFor(() => hook.received.length >= 1, 10_000, 'webhook revocation')
    const msg = JSON.parse((hook.received[0] as SignedNotification).msg)
    expect(msg.type).toBe('revocation')
    expect(msg.event_id).toBe('pcr_validation.invalid_pcr_15')
    victim.quoter.pcrs.set(15, saved)
    const del = await call(admin, 'DELETE', `/v2.6/agents/${victim.id}`)
    expect(del.status).toBe(200)
    expect((await call(admin, 'GET', `/v2.6/agents/${victim.id}`)).status).toBe(404)
  }, 90_000)
})
