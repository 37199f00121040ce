/**
 * The agent's secure directory on swtpm: started as root the agent mounts a tmpfs on `keylime_dir/secure`; after a
 * payload run nothing of K, U, V or the payload exists anywhere else under the work directory, the logs hold none
 * of them, a verified revocation wipes it when configured, and shutdown wipes and unmounts it. Without root the
 * agent refuses a disk directory unless the development opt-out is set, and accepts a tmpfs mounted for it.
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadAgentConfig } from '../../src/agent/config.ts'
import { defaultAgentDeps, type RunningAgent, startAgent } from '../../src/agent/runtime.ts'
import { isTmpfs, prepareSecureDir, SecureDirError } from '../../src/agent/secure-dir.ts'
import { AgentClient } from '../../src/api/agent/client.ts'
import { createCa, ensureTlsDir, issueCertificate } from '../../src/crypto/ca.ts'
import { authTag, encryptPayload, generateKuv, rsaOaepEncrypt } from '../../src/crypto/payload.ts'
import { asctime, signRevocation } from '../../src/crypto/revocation.ts'
import { buildPayloadZip } from '../../src/payload/zip.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

const isRoot = process.geteuid?.() === 0
let swtpm: SwtpmInstance
let dir: string
let agent: RunningAgent
let client: AgentClient
let notifier: { certPem: string; privateKeyPem: string }
const logText: string[] = []
const quietLog = pino({ level: 'silent' })

beforeAll(async () => {
  swtpm = await startSwtpm()
  dir = mkdtempSync(join(tmpdir(), 'agent-secure-'))
  await ensureTlsDir(join(dir, 'cv_ca'))
  notifier = await issueCertificate(await createCa(join(dir, 'tenant_ca')), {
    commonName: 'RevocationNotifier',
    keyType: 'rsa',
    usage: 'both',
  })
  const config = loadAgentConfig({
    configDirs: [],
    env: {},
    overrides: {
      keylime_dir: dir,
      tpm: swtpm.transport,
      port: '0',
      revocation_actions_dir: dir,
      secure_dir_wipe_on_revocation: 'true',
      // CI runs as root and gets the real tmpfs; elsewhere this test checks what it can on a disk directory
      secure_dir_allow_disk: String(!isRoot),
    },
  })
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      logText.push(chunk.toString('utf8'))
      done()
    },
  })
  const log = pino({ level: 'trace', base: { component: 'agent' } }, sink)
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
})

afterAll(async () => {
  await client?.close()
  await agent?.close()
  await swtpm?.stop()
  rmSync(dir, { recursive: true, force: true })
})

/** Every regular file under `root`, not descending into `skip`. */
function filesUnder(root: string, skip: string): string[] {
  const out: string[] = []
  for (const name of readdirSync(root)) {
    const p = join(root, name)
    if (p === skip) continue
    const st = statSync(p, { throwIfNoEntry: false })
    if (st?.isDirectory()) out.push(...filesUnder(p, skip))
    else if (st?.isFile()) out.push(p)
  }
  return out
}

/** The encodings a secret could be written or logged in. */
function forms(secret: Buffer): Buffer[] {
  return [secret, Buffer.from(secret.toString('hex')), Buffer.from(secret.toString('base64'))]
}

describe('secure directory', () => {
  const secure = () => join(dir, 'secure')

  it('is a tmpfs the agent mounted when started as root', () => {
    expect(agent.secureDir.kind).toBe(isRoot ? 'tmpfs-mounted' : 'disk')
    expect(isTmpfs(secure())).toBe(isRoot)
  })

  it('holds K and the payload; nothing of them, U or V is elsewhere in the work dir or in the logs', async () => {
    const payloadSecret = `payload-secret-${Math.random().toString(36).slice(2)}`
    const zip = await buildPayloadZip([
      { name: 'autorun.sh', data: 'cp secret.txt copied.txt\n', mode: 0o700 },
      { name: 'RevocationNotifier-cert.crt', data: notifier.certPem },
      { name: 'secret.txt', data: payloadSecret },
    ])
    const { k, u, v } = generateKuv()
    const { pubkey } = await client.getPubkey()
    await client.postUkey({
      encrypted_key: rsaOaepEncrypt(pubkey, u).toString('base64'),
      auth_tag: authTag(k, agent.uuid),
      payload: encryptPayload(k, zip),
    })
    await client.postVkey(rsaOaepEncrypt(pubkey, v).toString('base64'))
    await agent.payload.whenIdle()
    expect(agent.payload.lastResult).toMatchObject({ ok: true, scriptExitCode: 0 })
    const unzipped = join(secure(), 'unzipped')
    expect(readFileSync(join(unzipped, 'derived_tci_key'))).toEqual(k)
    expect(readFileSync(join(unzipped, 'copied.txt'), 'utf8')).toBe(payloadSecret)

    const secrets = [
      ...forms(Buffer.from(k)),
      ...forms(Buffer.from(u)),
      ...forms(Buffer.from(v)),
      Buffer.from(payloadSecret),
      Buffer.from(zip),
    ]
    const outside = filesUnder(dir, secure())
    expect(outside.length).toBeGreaterThan(3)
    for (const file of outside) {
      const bytes = readFileSync(file)
      for (const s of secrets) expect(bytes.includes(s), `${file} holds a secret`).toBe(false)
    }
    const logs = Buffer.from(logText.join(''))
    expect(logs.toString()).toContain('derived bootstrap key K')
    for (const s of secrets) expect(logs.includes(s)).toBe(false)
  })

  it('is wiped after a verified revocation (secure_dir_wipe_on_revocation)', async () => {
    const message = {
      type: 'revocation',
      ip: '127.0.0.2',
      agent_id: 'another-agent',
      port: 9002,
      tpm_policy: '{}',
      meta_data: '{}',
      event_time: asctime(new Date()),
    }
    await client.postRevocation(signRevocation(message, notifier.privateKeyPem))
    for (const t0 = Date.now(); readdirSync(secure()).length > 0; ) {
      if (Date.now() - t0 > 10_000) throw new Error('secure directory not wiped')
      await new Promise((r) => setTimeout(r, 50))
    }
    expect(agent.revocation.outcomes.at(-1)).toEqual({ status: 'done', ran: [] })
  })

  it('is wiped and unmounted at shutdown', async () => {
    mkdirSync(join(secure(), 'unzipped'), { recursive: true })
    await agent.close()
    expect(readdirSync(secure())).toEqual([])
    expect(isTmpfs(secure())).toBe(false)
  })
})

describe('secure directory without root', () => {
  it('refuses a disk directory with a clear message, accepts it only with the development opt-out', async () => {
    const path = join(dir, 'not-root-secure')
    const attempt = prepareSecureDir({ path, secureSize: '1m', allowDisk: false, log: quietLog, uid: 1000 })
    await expect(attempt).rejects.toBeInstanceOf(SecureDirError)
    await expect(attempt).rejects.toThrow(/not a tmpfs and this agent is not root.*secure_dir_allow_disk/)
    const insecure = await prepareSecureDir({
      path,
      secureSize: '1m',
      allowDisk: true,
      log: quietLog,
      uid: 1000,
    })
    expect(insecure.kind).toBe('disk')
  })

  it('rejects a malformed secure_size', () => {
    expect(() => loadAgentConfig({ configDirs: [], env: {}, overrides: { secure_size: '1 MB' } })).toThrow(
      /secure_size '1 MB' is not a size/,
    )
  })

  it('accepts a directory already on a tmpfs (/dev/shm) and only wipes it at close', async () => {
    const path = mkdtempSync(join('/dev/shm', 'agent-secure-'))
    try {
      const sd = await prepareSecureDir({
        path,
        secureSize: '1m',
        allowDisk: false,
        log: quietLog,
        uid: 1000,
      })
      expect(sd.kind).toBe('tmpfs-existing')
      mkdirSync(join(path, 'unzipped'))
      await sd.close()
      expect(readdirSync(path)).toEqual([])
      expect(isTmpfs(path)).toBe(true)
    } finally {
      rmSync(path, { recursive: true, force: true })
    }
  })
})
