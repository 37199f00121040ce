/**
 * Issue #5 end to end on swtpm: real verifier, registrar and agent processes (LocalCluster), enrollment with a
 * runtime policy through `keylime tenant`, and an IMA list the test grows next to the running agent (lines appended to
 * the agent's list file, PCR 10 of its swtpm extended with the template digests), as the kernel would.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto'
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  appendImaEntries,
  bootAggregateEntry,
  formatImaSigEntry,
  imaNgEntryFor,
  imaSignatureV2,
} from '../../src/devtools/ima-writer.ts'
import { type ClusterAgent, LocalCluster, portOpen, waitFor } from '../../src/devtools/local-cluster.ts'
import { emptyRuntimePolicy, ImaKeyring } from '../../src/evidence/ima/index.ts'
import {
  notificationMessage,
  startWebhookReceiver,
  type WebhookReceiver,
} from '../helpers/webhook-receiver.ts'

const BULK = 3000
const EXCLUDED_DIR = '/var/lib/scratch/'

function tenant(
  cluster: LocalCluster,
  ...args: string[]
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [
      'bin/keylime.js',
      'tenant',
      '--config',
      cluster.tenantConf,
      ...args,
    ])
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    child.on('exit', (status) => resolve({ status, stdout, stderr }))
  })
}

interface AgentStatus {
  attestation_count: number
  operational_state: number
  last_event_id?: string | null
}

const listLength = (path: string) =>
  readFileSync(path, 'utf8')
    .split('\n')
    .filter((l) => l !== '').length

describe('IMA runtime attestation end to end (swtpm)', () => {
  let dir: string
  let cluster: LocalCluster
  let agent: ClusterAgent
  let webhook: WebhookReceiver<Record<string, unknown>>
  let restartedVerifier: ChildProcess | undefined
  const signer = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const bulk = Array.from({ length: BULK }, (_, i) =>
    imaNgEntryFor(`/usr/lib/bulk/lib${i}.so`, `library ${i}`),
  )
  const known = imaNgEntryFor('/usr/bin/known-tool', 'known tool')

  const status = async (): Promise<AgentStatus> => {
    const r = await tenant(cluster, '-c', 'cvstatus', '-u', agent.uuid, '--json')
    return JSON.parse(r.stdout)[agent.uuid] as AgentStatus
  }
  /** Waits until `more` further attestations passed; fails fast when the agent left the GET_QUOTE state. */
  const passesAfter = async (what: string, more = 2) => {
    const start = (await status()).attestation_count
    return waitFor(what, 60, async () => {
      const s = await status()
      if (s.operational_state !== 3)
        throw new Error(`${what}: agent state ${s.operational_state}, event ${s.last_event_id}`)
      return s.attestation_count >= start + more ? s : undefined
    })
  }
  const originalVerifier = () => cluster.children.find((c) => c.name === 'verifier')?.child as ChildProcess
  const verifierDb = () => join(dir, 'verifier', 'cv_data.sqlite')
  /** The verifier's persisted IMA replay position (entries already verified) for the agent. */
  const storedNextEntry = (): number => {
    const db = new Database(verifierDb(), { readonly: true, fileMustExist: true })
    try {
      const row = db
        .prepare('select ima_state from verifier_attestation_state where agent_id = ?')
        .get(agent.uuid) as { ima_state: string | null } | undefined
      return row?.ima_state ? (JSON.parse(row.ima_state) as { nextEntry: number }).nextEntry : -1
    } finally {
      db.close()
    }
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kl-ima-e2e-'))
    webhook = await startWebhookReceiver(notificationMessage)
    cluster = new LocalCluster({
      dir,
      quoteInterval: 1,
      stepTimeout: 90,
      webhookUrl: `${webhook.url}revocation`,
    })
    await cluster.startServices()
    agent = await cluster.startAgent()
    await waitFor('registration', 90, async () =>
      (await tenant(cluster, '-c', 'regstatus', '-u', agent.uuid, '--json')).status === 0 ? true : undefined,
    )
  }, 180_000)

  afterAll(async () => {
    if (restartedVerifier && restartedVerifier.exitCode === null) {
      const exited = new Promise((r) => restartedVerifier?.once('exit', r))
      restartedVerifier.kill('SIGTERM')
      await exited
    }
    await cluster?.stop()
    await webhook?.close()
    rmSync(dir, { recursive: true, force: true })
  })

  it('enrolls with a runtime policy (digests, excludes, verification key) and passes', async () => {
    const boot = await bootAggregateEntry(agent.swtpm.transport)
    await appendImaEntries(agent.imaList, agent.swtpm.transport, [boot, known])
    const policy = emptyRuntimePolicy()
    const digestOf = (line: string) => (line.split(' ')[3] as string).split(':')[1] as string
    policy.digests.boot_aggregate = [digestOf(boot.line)]
    policy.digests['/usr/bin/known-tool'] = [digestOf(known.line)]
    for (const [i, e] of bulk.entries()) policy.digests[`/usr/lib/bulk/lib${i}.so`] = [digestOf(e.line)]
    policy.excludes = [EXCLUDED_DIR]
    policy.ima.log_hash_alg = 'sha1'
    const ring = new ImaKeyring()
    ring.add(signer.publicKey)
    policy['verification-keys'] = JSON.stringify(ring.toJSON())
    const policyPath = join(dir, 'runtime-policy.json')
    writeFileSync(policyPath, JSON.stringify(policy))

    const add = await tenant(cluster, '-c', 'add', '-u', agent.uuid, '--runtime-policy', policyPath)
    expect(add.stderr).not.toMatch(/error/i)
    expect(add.status).toBe(0)
    await passesAfter('first attestations with the runtime policy', 2)
    expect(storedNextEntry()).toBe(2)
  }, 90_000)

  it('accepts an excluded path and an ima-sig entry signed by a trusted key without a digest in the policy', async () => {
    const excluded = imaNgEntryFor(`${EXCLUDED_DIR}cache.bin`, randomBytes(16))
    const signedDigest = createHash('sha256').update('signed program').digest()
    const signed = formatImaSigEntry(
      '/opt/vendor/signed-tool',
      signedDigest,
      imaSignatureV2(signer.privateKey, signedDigest),
    )
    await appendImaEntries(agent.imaList, agent.swtpm.transport, [excluded, signed])
    await passesAfter('attestations after the excluded and signed entries', 2)
    await waitFor('the verifier to store the new offset', 30, () =>
      storedNextEntry() === 4 ? true : undefined,
    )
  }, 90_000)

  it(`verifies ${BULK} entries appended between two quotes in one incremental step`, async () => {
    const before = storedNextEntry()
    expect(before).toBe(listLength(agent.imaList))
    // Pause the verifier (SIGSTOP) so that no quote is taken while the entries are written: the whole batch then
    // lands between two quotes, and the verifier's next request fetches it from its stored offset in one go.
    const verifier = originalVerifier()
    verifier.kill('SIGSTOP')
    let extendS: number
    try {
      await new Promise((r) => setTimeout(r, 500))
      const t0 = Date.now()
      await appendImaEntries(agent.imaList, agent.swtpm.transport, bulk, BULK)
      extendS = (Date.now() - t0) / 1000
    } finally {
      verifier.kill('SIGCONT')
    }
    const seen = new Set<number>()
    await waitFor(`the verifier to verify the ${BULK} new entries`, 60, () => {
      const next = storedNextEntry()
      seen.add(next)
      return next === before + BULK ? true : undefined
    })
    // the stored offset jumped from the old end straight to the new end: one increment of BULK entries
    expect([...seen].filter((n) => n !== before)).toEqual([before + BULK])
    await passesAfter(
      `attestations after ${BULK} new entries (written and extended in ${extendS.toFixed(1)} s)`,
      2,
    )
    expect(storedNextEntry()).toBe(listLength(agent.imaList))
  }, 120_000)

  it('continues from the stored offset after a verifier restart (entries before it are not fetched again)', async () => {
    const verifier = originalVerifier()
    const offset = listLength(agent.imaList)
    expect(storedNextEntry()).toBe(offset)
    const exited = new Promise((r) => verifier.once('exit', r))
    verifier.kill('SIGTERM')
    await exited

    // Corrupt an already verified entry in place (same byte length, so the agent's offset index stays valid): a
    // verifier that fetched the list from entry 0 again would find its template hash wrong and fail the agent.
    const text = readFileSync(agent.imaList, 'utf8')
    const knownAt = text.indexOf(known.line)
    expect(knownAt).toBeGreaterThan(0)
    const hashAt = knownAt + 3
    const flipped = text[hashAt] === '0' ? '1' : '0'
    const fd = openSync(agent.imaList, 'r+')
    writeSync(fd, flipped, hashAt, 'latin1')
    closeSync(fd)

    const fresh = [imaNgEntryFor('/usr/bin/known-tool', 'known tool')]
    await appendImaEntries(agent.imaList, agent.swtpm.transport, fresh)

    restartedVerifier = spawn(
      process.execPath,
      [
        'bin/keylime.js',
        'verifier',
        '--config',
        join(dir, 'empty.conf'),
        '--port',
        String(cluster.verifierPort),
        '--tls-dir',
        'generate',
        '--quote-interval',
        '1',
        '--retry-interval',
        '1',
        '--webhook-url',
        `${webhook.url}revocation`,
        '--enabled-revocation-notifications',
        "['agent', 'webhook']",
      ],
      { env: { ...process.env, KEYLIME_DIR: join(dir, 'verifier') }, stdio: 'ignore' },
    )
    await waitFor('the restarted verifier', 60, () => portOpen(cluster.verifierPort))
    await passesAfter('attestations after the verifier restart', 2)
    await waitFor('the restarted verifier to verify only the new entry', 30, () =>
      storedNextEntry() === offset + 1 ? true : undefined,
    )
    expect(webhook.received).toEqual([])
  }, 120_000)

  it('fails a file outside the policy and names its path in the revocation context', async () => {
    const intruder = '/usr/local/bin/cryptominer'
    await appendImaEntries(agent.imaList, agent.swtpm.transport, [imaNgEntryFor(intruder, 'mining')])
    const failed = await waitFor('the verifier to fail the agent', 60, async () => {
      const s = await status()
      return s.operational_state === 9 ? s : undefined
    })
    expect(failed.last_event_id).toBe('ima.validation.ima-ng.not_in_allowlist')
    const revocation = await waitFor('a revocation at the webhook', 30, () => webhook.received[0])
    expect(revocation.agent_id).toBe(agent.uuid)
    expect(revocation.event_id).toBe('ima.validation.ima-ng.not_in_allowlist')
    expect(String(revocation.context)).toContain(intruder)
  }, 90_000)
})
