/**
 * Secure payload and revocation on the agent (issue #7, agent side), over HTTPS + mTLS on swtpm: U with the payload,
 * then V; K proven with /keys/verify; the zip is extracted with the safe extractor of src/payload and autorun.sh runs;
 * a signed revocation runs the local action and the payload's action; forged or unsigned ones run nothing; a
 * captured one posted again runs nothing, also after a restart, and neither does an old one;
 * a zip-slip payload writes nothing outside the secure directory and /keys/verify answers 422 with the reason.
 */
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import yazl from 'yazl'
import { loadAgentConfig } from '../../src/agent/config.ts'
import { defaultAgentDeps, type RunningAgent, startAgent } from '../../src/agent/runtime.ts'
import { AgentClient, AgentClientError } from '../../src/api/agent/client.ts'
import { createLogger } from '../../src/common/log.ts'
import { createCa, ensureTlsDir, issueCertificate } from '../../src/crypto/ca.ts'
import { authTag, encryptPayload, generateKuv, rsaOaepEncrypt } from '../../src/crypto/payload.ts'
import { asctime, signRevocation } from '../../src/crypto/revocation.ts'
import { buildPayloadZip } from '../../src/payload/zip.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

const log = createLogger('agent-payload-e2e', 'silent')
let swtpm: SwtpmInstance
let dir: string
let agent: RunningAgent
let client: AgentClient
let notifier: { certPem: string; privateKeyPem: string }
let config: ReturnType<typeof loadAgentConfig>

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  for (const t0 = Date.now(); !cond(); ) {
    if (Date.now() - t0 > ms) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 50))
  }
}

beforeAll(async () => {
  swtpm = await startSwtpm()
  dir = mkdtempSync(join(tmpdir(), 'agent-payload-'))
  await ensureTlsDir(join(dir, 'cv_ca'))
  const ca = await createCa(join(dir, 'tenant_ca'))
  notifier = await issueCertificate(ca, { commonName: 'RevocationNotifier', keyType: 'rsa', usage: 'both' })
  const actionsDir = join(dir, 'actions')
  mkdirSync(actionsDir)
  writeFileSync(
    join(actionsDir, 'local_action'),
    `#!/bin/sh\necho "local $(head -c 200 "$1")" >> ${dir}/actions.log\n`,
  )
  chmodSync(join(actionsDir, 'local_action'), 0o755)
  config = loadAgentConfig({
    configDirs: [],
    env: {},
    overrides: {
      keylime_dir: dir,
      tpm: swtpm.transport,
      port: '0',
      revocation_actions: 'local_action',
      revocation_actions_dir: actionsDir,
    },
  })
  await startTestAgent()
})

async function startTestAgent(): Promise<void> {
  agent = await startAgent({ config, deps: defaultAgentDeps(), log, register: false })
  client = new AgentClient({
    baseUrl: `https://127.0.0.1:${agent.port}`,
    apiVersion: '2.6',
    tls: {
      ca: agent.mtlsCertPem,
      cert: await readFile(join(dir, 'cv_ca', 'client-cert.crt'), 'utf8'),
      key: await readFile(join(dir, 'cv_ca', 'client-private.pem'), 'utf8'),
    },
  })
}

afterAll(async () => {
  await client?.close()
  await agent?.close()
  await swtpm?.stop()
  rmSync(dir, { recursive: true, force: true })
})

async function deliver(zip: Uint8Array) {
  const { k, u, v } = generateKuv()
  const { pubkey } = await client.getPubkey()
  await client.postUkey({
    encrypted_key: rsaOaepEncrypt(pubkey, u).toString('base64'),
    auth_tag: authTag(k, agent.uuid),
    payload: encryptPayload(k, zip),
  })
  return { k, sendV: () => client.postVkey(rsaOaepEncrypt(pubkey, v).toString('base64')) }
}

describe('payload and revocation', () => {
  const unzipped = () => join(dir, 'secure', 'unzipped')

  it('derives K only after U and V, runs autorun.sh, and answers /keys/verify', async () => {
    const zip = await buildPayloadZip([
      { name: 'autorun.sh', data: 'echo "autorun ran" > marker.txt\n', mode: 0o700 },
      { name: 'RevocationNotifier-cert.crt', data: notifier.certPem },
      { name: 'action_list', data: 'payload_action.sh\n' },
      { name: 'payload_action.sh', data: `#!/bin/sh\necho payload >> ${dir}/actions.log\n`, mode: 0o700 },
      { name: 'secret.txt', data: 'top secret' },
    ])
    const { k, sendV } = await deliver(zip)
    const early = await client.verify('abc123').catch((e: unknown) => e)
    expect(early).toBeInstanceOf(AgentClientError)
    expect((early as AgentClientError).agentStatus).toBe('Bootstrap key not yet available.')
    expect(existsSync(join(unzipped(), 'marker.txt'))).toBe(false)

    await sendV()
    await agent.payload.whenIdle()
    expect((await client.verify('abc123')).hmac).toBe(authTag(k, 'abc123'))
    expect(readFileSync(join(unzipped(), 'marker.txt'), 'utf8')).toBe('autorun ran\n')
    expect(readFileSync(join(unzipped(), 'secret.txt'), 'utf8')).toBe('top secret')
    expect(readFileSync(join(unzipped(), 'derived_tci_key'))).toEqual(k)
    expect(agent.revocation.hasCertificate).toBe(true)
  })

  it('runs the local and payload actions for a signed revocation, nothing for forged or unsigned ones', async () => {
    const message = {
      type: 'revocation',
      ip: '127.0.0.2',
      agent_id: 'some-other-agent',
      port: 9002,
      tpm_policy: '{}',
      meta_data: '{}',
      event_time: asctime(new Date()),
    }
    const logFile = join(dir, 'actions.log')
    const forgedKey = (await createCa(join(dir, 'other_ca'))).privateKey
    const forged = signRevocation(message, forgedKey as never)
    await client.postRevocation(forged)
    await client.postRevocation({ msg: JSON.stringify(message), signature: '' })
    await agent.revocation.whenIdle()
    expect(existsSync(logFile)).toBe(false)
    expect(agent.revocation.outcomes.map((o) => o.status)).toEqual(['rejected', 'rejected'])

    await client.postRevocation(signRevocation(message, notifier.privateKeyPem))
    await until(() => agent.revocation.outcomes.length === 3)
    expect(agent.revocation.outcomes[2]).toEqual({
      status: 'done',
      ran: ['local_action', 'payload_action.sh'],
    })
    const lines = readFileSync(logFile, 'utf8').trim().split('\n')
    expect(lines[0]).toContain('"agent_id":"some-other-agent"')
    expect(lines[1]).toBe('payload')
  })

  it('runs a captured revocation posted again only once, also after a restart; an old one not at all', async () => {
    const logFile = join(dir, 'actions.log')
    const actionRuns = () => readFileSync(logFile, 'utf8').trim().split('\n').length
    const before = actionRuns()
    const captured = signRevocation(
      {
        type: 'revocation',
        ip: '127.0.0.3',
        agent_id: 'captured-agent',
        port: 9002,
        tpm_policy: '{}',
        meta_data: '{}',
        event_time: asctime(new Date()),
      },
      notifier.privateKeyPem,
    )
    const seen = agent.revocation.outcomes.length
    await client.postRevocation(captured)
    await client.postRevocation(captured)
    await until(() => agent.revocation.outcomes.length === seen + 2)
    expect(agent.revocation.outcomes.slice(seen).map((o) => o.status)).toEqual(['done', 'ignored'])
    expect(actionRuns()).toBe(before + 2) // the local and the payload action, once

    await client.close()
    await agent.close()
    await startTestAgent()
    expect(agent.revocation.hasCertificate).toBe(true)
    await client.postRevocation(captured)
    const old = signRevocation(
      {
        type: 'revocation',
        ip: '127.0.0.4',
        agent_id: 'old-event',
        port: 9002,
        tpm_policy: '{}',
        meta_data: '{}',
        event_time: asctime(new Date(Date.now() - 2 * 3600_000)),
      },
      notifier.privateKeyPem,
    )
    await client.postRevocation(old)
    await until(() => agent.revocation.outcomes.length === 2)
    expect(agent.revocation.outcomes).toEqual([
      { status: 'ignored', reason: 'already acted on (replayed)' },
      { status: 'ignored', reason: expect.stringMatching(/older than revocation_max_age_seconds \(3600\)/) },
    ])
    expect(actionRuns()).toBe(before + 2)
  })

  it('refuses a zip-slip payload without writing outside the secure directory', async () => {
    const evil = await new Promise<Buffer>((done) => {
      const z = new yazl.ZipFile()
      z.addBuffer(Buffer.from('echo pwned > ../../pwned.txt\n'), 'autorun.sh')
      // yazl refuses '..' names: write a same-length placeholder and patch it in both headers
      z.addBuffer(Buffer.from('escaped'), 'AA/escape.txt')
      z.end()
      const chunks: Buffer[] = []
      z.outputStream.on('data', (c: Buffer) => chunks.push(c))
      z.outputStream.on('end', () => {
        const zip = Buffer.concat(chunks)
        const from = Buffer.from('AA/escape.txt')
        for (let at = zip.indexOf(from); at !== -1; at = zip.indexOf(from, at + 1))
          zip.write('../escape.txt', at)
        done(zip)
      })
    })
    const { sendV } = await deliver(evil)
    await sendV()
    await agent.payload.whenIdle()
    expect(agent.payload.lastResult?.ok).toBe(false)
    // The tenant learns why from /keys/verify instead of an HMAC that would mean "delivered".
    const refused = await client.verify('abc123').catch((e: unknown) => e)
    expect(refused).toBeInstanceOf(AgentClientError)
    expect((refused as AgentClientError).httpStatus).toBe(422)
    expect((refused as AgentClientError).agentStatus).toMatch(
      /^payload refused: archive rejected: .*escape\.txt/,
    )
    expect(existsSync(join(dir, 'secure', 'escape.txt'))).toBe(false)
    expect(existsSync(join(dir, 'pwned.txt'))).toBe(false)
    expect(existsSync(join(unzipped(), 'autorun.sh'))).toBe(false)
  })
})
