/**
 * The agent registering with our registrar (in-process, SQLite, real HTTP): EK + EK cert from swtpm NV, AK,
 * MakeCredential -> TPM2_ActivateCredential -> auth_tag; a restart re-registers with the same AK, or with a new
 * one when its agent data is lost; a replayed registration changes nothing; a second TPM cannot take over the UUID
 * (403, the original record stays).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadAgentConfig } from '../../src/agent/config.ts'
import { RegistrationError } from '../../src/agent/registration.ts'
import { defaultAgentDeps, type RunningAgent, startAgent } from '../../src/agent/runtime.ts'
import { RegistrarClient } from '../../src/api/registrar/client.ts'
import { createLogger } from '../../src/common/log.ts'
import { loadRegistrarConfig } from '../../src/config/registrar.ts'
import { publicKeyPemOf } from '../../src/crypto/tpm-public.ts'
import { type RunningRegistrar, startRegistrar } from '../../src/registrar/server.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

const log = createLogger('agent-reg-e2e', 'silent')
const UUID = 'a0b1c2d3-0000-4000-8000-00000000abcd'

let workDir: string
let registrar: RunningRegistrar
let tpmA: SwtpmInstance
let tpmB: SwtpmInstance
let admin: RegistrarClient
const running: RunningAgent[] = []

function agentConfig(tpm: SwtpmInstance, dir: string, extra: Record<string, string> = {}) {
  return loadAgentConfig({
    configDirs: [],
    env: {},
    overrides: {
      keylime_dir: dir,
      tpm: tpm.transport,
      uuid: UUID,
      port: '0',
      contact_port: '9777',
      registrar_port: String(registrar.httpPort),
      enable_agent_mtls: 'false',
      enable_insecure_payload: 'true',
      exponential_backoff_initial_delay: '10',
      exponential_backoff_max_retries: '2',
      ...extra,
    },
  })
}

beforeAll(async () => {
  workDir = mkdtempSync(join(tmpdir(), 'agent-reg-e2e-'))
  ;[tpmA, tpmB] = await Promise.all([startSwtpm(), startSwtpm()])
  const env = { KEYLIME_DIR: workDir }
  const { config } = loadRegistrarConfig({
    configDirs: [],
    env,
    flags: { tls_dir: 'generate', port: 0, tls_port: 0, database_url: 'sqlite' },
  })
  registrar = await startRegistrar(config, log, { env })
  const read = (f: string) => readFileSync(join(workDir, 'reg_ca', f), 'utf8')
  admin = new RegistrarClient({
    baseUrl: `https://127.0.0.1:${registrar.tlsPort}`,
    tls: { ca: read('cacert.crt'), cert: read('client-cert.crt'), key: read('client-private.pem') },
  })
}, 60_000)

afterAll(async () => {
  for (const a of running) await a.close()
  await admin?.close()
  await registrar?.close()
  await Promise.all([tpmA?.stop(), tpmB?.stop()])
  rmSync(workDir, { recursive: true, force: true })
})

describe('agent registration with the registrar', () => {
  it('registers and activates; the registrar shows the TPM identity and contact data', async () => {
    const dirA = join(workDir, 'agentA')
    const agent = await startAgent({ config: agentConfig(tpmA, dirA), deps: defaultAgentDeps(), log })
    running.push(agent)
    expect(agent.uuid).toBe(UUID)
    const shown = await admin.show(UUID) // 404 unless activated
    expect(shown).toMatchObject({
      agent_id: UUID,
      ip: '127.0.0.1',
      port: 9777,
      regcount: 1,
      mtls_cert: 'disabled',
    })
    expect(shown.aik_tpm).toBe(Buffer.from(agent.akPublic).toString('base64'))
    expect(shown.ek_tpm).toBe(Buffer.from(agent.ekPublic).toString('base64'))
    // the EK certificate came from swtpm's NV index and carries the EK's key
    const der = Buffer.from(shown.ekcert ?? '', 'base64')
    const { X509Certificate } = await import('node:crypto')
    const cert = new X509Certificate(der)
    expect(cert.publicKey.export({ type: 'spki', format: 'pem' })).toBe(publicKeyPemOf(agent.ekPublic))

    // restart: same AK, same identity, registration accepted again
    await agent.close()
    running.pop()
    const again = await startAgent({ config: agentConfig(tpmA, dirA), deps: defaultAgentDeps(), log })
    running.push(again)
    expect(again.akReused).toBe(true)
    expect(Buffer.from(again.akPublic)).toEqual(Buffer.from(agent.akPublic))
    expect((await admin.show(UUID)).regcount).toBe(2)
  })

  it('a replayed registration leaves the record intact; a restart that lost its AK registers a new one', async () => {
    const before = await admin.show(UUID)
    const outsider = new RegistrarClient({ baseUrl: `http://127.0.0.1:${registrar.httpPort}` })
    try {
      // everything public about the agent, sent by someone without its TPM, pointing elsewhere
      const { blob } = await outsider.register(UUID, {
        aik_tpm: before.aik_tpm,
        ek_tpm: before.ek_tpm,
        ekcert: before.ekcert,
        mtls_cert: 'disabled',
        ip: '192.0.2.66',
        port: 6666,
      })
      expect(blob).not.toBe('')
      await expect(outsider.activate(UUID, 'ab'.repeat(48))).rejects.toMatchObject({ status: 400 })
    } finally {
      await outsider.close()
    }
    expect(await admin.show(UUID)).toEqual(before)

    for (const a of running.splice(0)) await a.close()
    const dirA = join(workDir, 'agentA')
    rmSync(join(dirA, 'agent_data.json'))
    const again = await startAgent({ config: agentConfig(tpmA, dirA), deps: defaultAgentDeps(), log })
    running.push(again)
    expect(again.akReused).toBe(false)
    const after = await admin.show(UUID)
    expect(after.aik_tpm).toBe(Buffer.from(again.akPublic).toString('base64'))
    expect(after.aik_tpm).not.toBe(before.aik_tpm)
    expect(after).toMatchObject({ ek_tpm: before.ek_tpm, ip: '127.0.0.1', port: 9777, regcount: 3 })
  })

  it('refuses a second TPM taking over the UUID (403) and keeps the original record', async () => {
    const before = await admin.show(UUID)
    const err = await startAgent({
      config: agentConfig(tpmB, join(workDir, 'agentB')),
      deps: defaultAgentDeps(),
      log,
    }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(RegistrationError)
    expect((err as RegistrationError).httpStatus).toBe(403)
    const after = await admin.show(UUID)
    expect(after.ek_tpm).toBe(before.ek_tpm)
    expect(after.aik_tpm).toBe(before.aik_tpm)
  })

  it('registers with mTLS enabled (mtls_cert is the agent certificate) and uuid = hash_ek', async () => {
    const dirB = join(workDir, 'agentB2')
    const { ensureTlsDir } = await import('../../src/crypto/ca.ts')
    await ensureTlsDir(join(dirB, 'cv_ca'))
    const agent = await startAgent({
      config: agentConfig(tpmB, dirB, {
        uuid: 'hash_ek',
        enable_agent_mtls: 'true',
        enable_insecure_payload: 'false',
      }),
      deps: defaultAgentDeps(),
      log,
    })
    running.push(agent)
    expect(agent.uuid).toMatch(/^[0-9a-f]{64}$/)
    const shown = await admin.show(agent.uuid)
    expect(shown.mtls_cert?.trim()).toBe(agent.mtlsCertPem.trim())
  })

  it('registers and activates with an ECC P-256 EK and an ECDSA AK', async () => {
    for (const a of running.splice(0)) await a.close()
    const eccUuid = 'a0b1c2d3-0000-4000-8000-00000000ecc1'
    const agent = await startAgent({
      config: agentConfig(tpmB, join(workDir, 'agentEcc'), {
        uuid: eccUuid,
        tpm_encryption_alg: 'ecc',
        tpm_signing_alg: 'ecdsa',
      }),
      deps: defaultAgentDeps(),
      log,
    })
    running.push(agent)
    const shown = await admin.show(eccUuid)
    expect(shown.aik_tpm).toBe(Buffer.from(agent.akPublic).toString('base64'))
    expect(shown.ek_tpm).toBe(Buffer.from(agent.ekPublic).toString('base64'))
    // swtpm_setup here provisions only the RSA EK certificate: the ECC one is absent and sent as null
    expect(shown.ekcert ?? null).toBeNull()
  })

  it('gives up after the configured retries when the registrar is unreachable', async () => {
    // swtpm serves one connection at a time: release the TPM the earlier agents hold
    for (const a of running.splice(0)) await a.close()
    const t0 = Date.now()
    const err = await startAgent({
      config: agentConfig(tpmA, join(workDir, 'agentA'), { registrar_port: '1' }),
      deps: defaultAgentDeps(),
      log,
    }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(RegistrationError)
    expect((err as RegistrationError).retryable).toBe(true)
    expect(Date.now() - t0).toBeLessThan(20_000)
  })
})
