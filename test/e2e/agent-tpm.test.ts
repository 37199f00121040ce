/**
 * The agent on a real swtpm, over real HTTPS + mTLS: identity and integrity quotes verify with the verifier's
 * verifyQuote (PCR 16 bound to the payload key), IMA entries appended by the emulator are served from the right
 * offset and replay to the quoted PCR 10, the UEFI log only with PCR 0, concurrent quotes are serialised, bad
 * parameters get 400s, thousands of quotes leave the TPM's handle counts unchanged, and a restart reuses the AK.
 */
import { createHash } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadAgentConfig } from '../../src/agent/config.ts'
import { ImaEmulator, imaNgFormatter } from '../../src/agent/ima-emulator.ts'
import { defaultAgentDeps, type RunningAgent, startAgent } from '../../src/agent/runtime.ts'
import { AgentClient, AgentClientError } from '../../src/api/agent/client.ts'
import { createLogger } from '../../src/common/log.ts'
import { ensureTlsDir } from '../../src/crypto/ca.ts'
import { createSecureBootKeys, syntheticEventLog } from '../../src/devtools/synthetic-event-log.ts'
import { verifyImaIncrement } from '../../src/evidence/ima/verify.ts'
import { checkPcrPolicy, verifyQuote } from '../../src/evidence/quote/index.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

const log = createLogger('agent-e2e', 'silent')

let swtpm: SwtpmInstance
let dir: string
/** The UEFI log the agent serves (a synthetic crypto-agile log). */
let mbLog: string
let agent: RunningAgent
let client: AgentClient
let tls: { cert: string; key: string }

function config(extra: Record<string, string> = {}) {
  return loadAgentConfig({
    configDirs: [],
    env: {},
    overrides: {
      keylime_dir: dir,
      tpm: swtpm.transport,
      ip: '127.0.0.1',
      port: '0',
      uuid: 'generate',
      ima_ml_path: join(dir, 'ascii_runtime_measurements'),
      measuredboot_ml_path: mbLog,
      ...extra,
    },
  })
}

function clientFor(a: RunningAgent, version = '2.6') {
  return new AgentClient({
    baseUrl: `https://127.0.0.1:${a.port}`,
    apiVersion: version,
    tls: { ca: a.mtlsCertPem, ...tls },
  })
}

beforeAll(async () => {
  swtpm = await startSwtpm({ pcrBanks: 'sha1,sha256,sha384' })
  dir = mkdtempSync(join(tmpdir(), 'agent-e2e-'))
  mbLog = join(dir, 'binary_bios_measurements')
  writeFileSync(mbLog, syntheticEventLog({ keys: await createSecureBootKeys() }).bytes)
  await ensureTlsDir(join(dir, 'cv_ca'))
  tls = {
    cert: await readFile(join(dir, 'cv_ca', 'client-cert.crt'), 'utf8'),
    key: await readFile(join(dir, 'cv_ca', 'client-private.pem'), 'utf8'),
  }
  agent = await startAgent({ config: config(), deps: defaultAgentDeps(), log, register: false })
  client = clientFor(agent)
})

afterAll(async () => {
  await client?.close()
  await agent?.close()
  await swtpm?.stop()
  rmSync(dir, { recursive: true, force: true })
})

const nonce = () => Math.random().toString(36).slice(2, 22).padEnd(20, 'x')

describe('agent on swtpm', () => {
  it('serves /version and /agent/info over mTLS and refuses clients without a trusted certificate', async () => {
    expect((await client.getVersion()).supported_versions).toContain('2.6')
    const info = await client.getInfo()
    expect(info).toMatchObject({ agent_uuid: agent.uuid, tpm_hash_alg: 'sha256', tpm_enc_alg: 'rsa' })
    expect(info.ak_handle).toBe(agent.akHandle)
    // no client certificate: the TLS handshake fails
    const anon = new AgentClient({
      baseUrl: `https://127.0.0.1:${agent.port}`,
      apiVersion: '2.6',
      tls: { ca: agent.mtlsCertPem, cert: '', key: '' },
    })
    await expect(anon.getVersion()).rejects.toBeInstanceOf(AgentClientError)
    await anon.close()
  })

  it('answers an identity quote that verifies and binds the payload key into PCR 16', async () => {
    const n = nonce()
    const q = await client.identityQuote(n)
    expect(q).toMatchObject({ hash_alg: 'sha256', enc_alg: 'rsa2048', sign_alg: 'rsassa' })
    expect(q.pubkey).toBe((await client.getPubkey()).pubkey)
    const r = verifyQuote({ akPublic: agent.akPublic, quote: q.quote, nonce: n, hashAlg: q.hash_alg })
    expect(r.verdict).toEqual({ ok: true })
    expect(
      checkPcrPolicy({ pcrs: r.pcrs!, tpmPolicy: null, boundPubkeyPem: q.pubkey, hashAlg: 'sha256' }),
    ).toEqual({
      ok: true,
    })
    // the same quote does not verify for another nonce, and another key is not bound
    expect(
      verifyQuote({ akPublic: agent.akPublic, quote: q.quote, nonce: 'other', hashAlg: 'sha256' }).verdict.ok,
    ).toBe(false)
    expect(
      checkPcrPolicy({ pcrs: r.pcrs!, tpmPolicy: null, boundPubkeyPem: `${q.pubkey} `, hashAlg: 'sha256' })
        .ok,
    ).toBe(false)
    // API < 2.5 names the EK algorithm without its size
    const old = clientFor(agent, '2.1')
    expect((await old.identityQuote(nonce())).enc_alg).toBe('rsa')
    await old.close()
  })

  it('serves emulated IMA entries from the requested offset; they replay to the quoted PCR 10', async () => {
    const emulator = new ImaEmulator({
      tpm: agent.tpm,
      lock: agent.lock,
      listPath: join(dir, 'ascii_runtime_measurements'),
      hashAlg: 'sha256',
      format: imaNgFormatter,
    })
    // before any measurement the list file is missing: the fields are omitted
    const none = await client.integrityQuote({ nonce: nonce(), mask: [10], partial: false })
    expect(none.ima_measurement_list).toBeUndefined()
    expect(none.mb_measurement_list).toBeUndefined()

    const files = [1, 2, 3].map((i) => {
      const p = join(dir, `file${i}.txt`)
      writeFileSync(p, `content ${i}`)
      return p
    })
    const lines = await emulator.measure(files)
    expect(lines).toHaveLength(4)
    expect(lines[0]).toMatch(/^10 [0-9a-f]{40} ima-ng sha256:[0-9a-f]{64} boot_aggregate\n$/)
    expect(lines[1]).toContain(`sha256:${createHash('sha256').update('content 1').digest('hex')} ${files[0]}`)

    const n1 = nonce()
    const all = await client.integrityQuote({ nonce: n1, mask: [10], partial: false, imaMlEntry: 0 })
    expect(all.ima_measurement_list).toBe(lines.join(''))
    expect(all.ima_measurement_list_entry).toBe(0)
    const v1 = verifyQuote({ akPublic: agent.akPublic, quote: all.quote, nonce: n1, hashAlg: 'sha256' })
    expect(v1.verdict.ok).toBe(true)
    const replay = verifyImaIncrement({
      listText: all.ima_measurement_list!,
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: 'sha256', value: v1.pcrs!.get(10)! },
      policy: null,
    })
    expect(replay.verdict).toEqual({ ok: true })

    // new entries: asking from entry 4 returns exactly them, and the replay continues from the stored state
    const more = join(dir, 'file4.txt')
    writeFileSync(more, 'content 4')
    const added = await emulator.measure([more])
    const n2 = nonce()
    const inc = await client.integrityQuote({ nonce: n2, mask: '0x400', partial: true, imaMlEntry: 4 })
    expect(inc.pubkey).toBeUndefined()
    expect(inc.ima_measurement_list).toBe(added.join(''))
    expect(inc.ima_measurement_list_entry).toBe(4)
    const v2 = verifyQuote({ akPublic: agent.akPublic, quote: inc.quote, nonce: n2, hashAlg: 'sha256' })
    const replay2 = verifyImaIncrement({
      listText: inc.ima_measurement_list!,
      firstEntry: 4,
      state: replay.state,
      quotedPcr10: { hashAlg: 'sha256', value: v2.pcrs!.get(10)! },
      policy: null,
    })
    expect(replay2.verdict).toEqual({ ok: true })

    // an entry past the end returns the whole list from entry 0
    const past = await client.integrityQuote({ nonce: nonce(), mask: [10], partial: true, imaMlEntry: 99 })
    expect(past.ima_measurement_list_entry).toBe(0)
    expect(past.ima_measurement_list).toBe([...lines, ...added].join(''))
  })

  it('attaches the UEFI log only when PCR 0 is quoted', async () => {
    const withPcr0 = await client.integrityQuote({ nonce: nonce(), mask: [0, 1, 10], partial: true })
    expect(withPcr0.mb_measurement_list).toBe((await readFile(mbLog)).toString('base64'))
    const n = nonce()
    const without = await client.integrityQuote({ nonce: n, mask: [1, 10], partial: true })
    expect(without.mb_measurement_list).toBeUndefined()
    const v = verifyQuote({ akPublic: agent.akPublic, quote: without.quote, nonce: n, hashAlg: 'sha256' })
    expect([...v.pcrs!.keys()]).toEqual([1, 10, 16])
  })

  it('serialises concurrent quotes: each verifies with its own nonce', async () => {
    const nonces = Array.from({ length: 12 }, nonce)
    const quotes = await Promise.all(
      nonces.map((n, i) =>
        i % 2 ? client.identityQuote(n) : client.integrityQuote({ nonce: n, mask: [0, 10], partial: false }),
      ),
    )
    quotes.forEach((q, i) => {
      const r = verifyQuote({
        akPublic: agent.akPublic,
        quote: q.quote,
        nonce: nonces[i]!,
        hashAlg: 'sha256',
      })
      expect(r.verdict.ok).toBe(true)
      expect(
        checkPcrPolicy({ pcrs: r.pcrs!, tpmPolicy: null, boundPubkeyPem: q.pubkey!, hashAlg: 'sha256' }).ok,
      ).toBe(true)
    })
  })

  it('answers bad query parameters with 400 and the v2 envelope', async () => {
    const base = `https://127.0.0.1:${agent.port}`
    const { Agent } = await import('undici')
    const dispatcher = new Agent({
      connect: { ca: agent.mtlsCertPem, ...tls, checkServerIdentity: () => undefined },
    })
    for (const path of [
      '/v2.6/quotes/integrity?nonce=abc&mask=0x1000000&partial=0',
      '/v2.6/quotes/integrity?nonce=abc&mask=0x1&partial=x',
      '/v2.6/quotes/identity?nonce=bad!nonce',
      '/v2.7/quotes/identity?nonce=abc',
    ]) {
      const res = await request(`${base}${path}`, { dispatcher })
      expect(res.statusCode, path).toBe(400)
      expect((await res.body.json()) as object, path).toMatchObject({ code: 400, results: {} })
    }
    await dispatcher.close()
  })

  it('re-binds PCR 16 if something else extended it', async () => {
    await agent.lock.run(() => agent.tpm.pcrExtend(16, { sha256: Buffer.alloc(32, 7) }))
    const n = nonce()
    const q = await client.identityQuote(n)
    const r = verifyQuote({ akPublic: agent.akPublic, quote: q.quote, nonce: n, hashAlg: 'sha256' })
    expect(
      checkPcrPolicy({ pcrs: r.pcrs!, tpmPolicy: null, boundPubkeyPem: q.pubkey, hashAlg: 'sha256' }).ok,
    ).toBe(true)
  })

  it('leaves TPM handle counts unchanged after 2,000 quotes', async () => {
    const before = await agent.lock.run(() => agent.tpm.handleCounts())
    const t0 = performance.now()
    for (let i = 0; i < 2000; i++) {
      await agent.quotes.integrity({
        nonce: `n${i}`,
        pcrs: [10],
        partial: true,
        imaMlEntry: 0,
        apiVersion: '2.6',
      })
    }
    const elapsed = performance.now() - t0
    const after = await agent.lock.run(() => agent.tpm.handleCounts())
    expect(after).toEqual(before)
    expect(elapsed).toBeLessThan(60_000)
  }, 90_000)

  it('reuses the AK after a restart and creates a new one when the algorithms change', async () => {
    const firstAk = Buffer.from(agent.akPublic).toString('hex')
    const uuid = agent.uuid
    await client.close()
    await agent.close()
    agent = await startAgent({ config: config({ uuid }), deps: defaultAgentDeps(), log, register: false })
    client = clientFor(agent)
    expect(agent.akReused).toBe(true)
    expect(Buffer.from(agent.akPublic).toString('hex')).toBe(firstAk)
    const n = nonce()
    const q = await client.identityQuote(n)
    expect(
      verifyQuote({ akPublic: agent.akPublic, quote: q.quote, nonce: n, hashAlg: 'sha256' }).verdict.ok,
    ).toBe(true)

    await client.close()
    await agent.close()
    agent = await startAgent({
      config: config({ uuid, tpm_signing_alg: 'ecdsa', tpm_hash_alg: 'sha384' }),
      deps: defaultAgentDeps(),
      log,
      register: false,
    })
    client = clientFor(agent)
    expect(agent.akReused).toBe(false)
    const n2 = nonce()
    const q2 = await client.identityQuote(n2)
    expect(q2).toMatchObject({ hash_alg: 'sha384', sign_alg: 'ecdsa' })
    expect(
      verifyQuote({ akPublic: agent.akPublic, quote: q2.quote, nonce: n2, hashAlg: 'sha384' }).verdict.ok,
    ).toBe(true)
  })

  it('refuses to start when the configured PCR bank is not active', async () => {
    await client.close()
    await agent.close()
    const err = await startAgent({
      config: config({ tpm_hash_alg: 'sha512' }),
      deps: defaultAgentDeps(),
      log,
      register: false,
    }).catch((e: unknown) => e)
    expect((err as Error).message).toMatch(/no active sha512 PCR bank/)
    // the failed start released the TPM: a new agent can start on it
    agent = await startAgent({ config: config(), deps: defaultAgentDeps(), log, register: false })
    client = clientFor(agent)
    expect((await client.getVersion()).supported_version).toBe('2.6')
  })

  it('runs the IMA emulator in-process on ima_emulator_paths and re-measures a file when it changes', async () => {
    await client.close()
    await agent.close()
    const watched = join(dir, 'watched.sh')
    writeFileSync(watched, 'echo v1\n')
    const listPath = join(dir, 'emulated_measurements')
    agent = await startAgent({
      config: config({ ima_ml_path: listPath, ima_emulator_paths: watched }),
      deps: defaultAgentDeps(),
      log,
      register: false,
      imaFormatter: imaNgFormatter,
    })
    client = clientFor(agent)
    const first = await client.integrityQuote({ nonce: nonce(), mask: [10], partial: true })
    expect(first.ima_measurement_list?.split('\n').filter(Boolean)).toHaveLength(1 + 1)
    writeFileSync(watched, 'echo v2 tampered\n')
    const digest = createHash('sha256').update('echo v2 tampered\n').digest('hex')
    let text = ''
    for (let i = 0; i < 50 && !text.includes(digest); i++) {
      await new Promise((r) => setTimeout(r, 100))
      text = (await readFile(listPath, 'utf8').catch(() => '')) as string
    }
    expect(text).toContain(`sha256:${digest} ${watched}`)
    // PCR 10 was bumped (by every earlier test on this TPM too), so replay from entry 2 on the quoted value alone
    const n = nonce()
    const q = await client.integrityQuote({ nonce: n, mask: [10], partial: true, imaMlEntry: 2 })
    expect(q.ima_measurement_list_entry).toBe(2)
    expect(q.ima_measurement_list).toContain(digest)
    expect(
      verifyQuote({ akPublic: agent.akPublic, quote: q.quote, nonce: n, hashAlg: 'sha256' }).verdict.ok,
    ).toBe(true)
  })

  it('uses a persistent EK handle (ek_handle) made by tpm2_createek, and never flushes it', async () => {
    await client.close()
    await agent.close()
    const { execFileSync } = await import('node:child_process')
    const tools = { env: { ...process.env, TPM2TOOLS_TCTI: swtpm.tcti }, cwd: dir, timeout: 30_000 }
    execFileSync('tpm2_createek', ['-c', '0x81010009', '-G', 'rsa', '-u', join(dir, 'ek.pub')], tools)
    agent = await startAgent({
      config: config({ ek_handle: '0x81010009' }),
      deps: defaultAgentDeps(),
      log,
      register: false,
    })
    client = clientFor(agent)
    const n = nonce()
    const q = await client.identityQuote(n)
    expect(
      verifyQuote({ akPublic: agent.akPublic, quote: q.quote, nonce: n, hashAlg: 'sha256' }).verdict.ok,
    ).toBe(true)
    await client.close()
    await agent.close()
    const handles = execFileSync('tpm2_getcap', ['handles-persistent'], tools).toString()
    expect(handles).toContain('0x81010009')
    agent = await startAgent({ config: config(), deps: defaultAgentDeps(), log, register: false })
    client = clientFor(agent)
    await expect(
      startAgent({
        config: config({ ek_handle: '0x01000000' }),
        deps: defaultAgentDeps(),
        log,
        register: false,
      }),
    ).rejects.toThrow(/persistent handle/)
  })
})
