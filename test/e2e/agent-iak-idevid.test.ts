/**
 * IAK/IDevID registration end to end on swtpm: the devtools provisioning gives TPM A (with swtpm's EK certificate)
 * an H-1 IAK/IDevID with certificate files, and `keylime devtools provision-identity` gives TPM B (no EK
 * certificate) an H-2 pair with certificates in NV; our agent registers with our registrar in each `tpm_identity`
 * mode. Refused: a mode's missing identity, a certificate from an untrusted CA, and an IAK certification of another
 * AK; the agent itself refuses to start with a certificate that names another key.
 */
import { execFile } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadAgentConfig } from '../../src/agent/config.ts'
import { DeviceIdError } from '../../src/agent/device-id.ts'
import { RegistrationError } from '../../src/agent/registration.ts'
import { defaultAgentDeps, startAgent } from '../../src/agent/runtime.ts'
import { PeerError } from '../../src/api/client.ts'
import { RegistrarClient } from '../../src/api/registrar/client.ts'
import { createLogger } from '../../src/common/log.ts'
import { loadRegistrarConfig } from '../../src/config/registrar.ts'
import {
  createTestCa,
  type DeviceIdentity,
  issueTpmKeyCertificate,
  provisionDeviceIdentity,
  saveTestCa,
  type TestCa,
} from '../../src/devtools/device-identity.ts'
import { type RunningRegistrar, startRegistrar } from '../../src/registrar/server.ts'
import { HierarchyChangeAuth } from '../../src/tpm/commands/hierarchy.ts'
import { TpmRh } from '../../src/tpm/constants.ts'
import {
  certifyObject,
  createAk,
  createDeviceIdKey,
  createEk,
  flushContext,
} from '../../src/tpm/keylime-client.ts'
import { authValue, PasswordSession } from '../../src/tpm/session.ts'
import { Tpm } from '../../src/tpm/tpm.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

const log = createLogger('agent-iak-e2e', 'silent')
const run = promisify(execFile)
const NV = { iak: 0x01c90000, idevid: 0x01c90010 }
type Mode = 'default' | 'ek_cert_or_iak_idevid' | 'ek_cert' | 'iak_idevid'

let work: string
let ca: TestCa
let tpmA: SwtpmInstance
let tpmB: SwtpmInstance
let idA: DeviceIdentity
const registrars = new Map<Mode, RunningRegistrar>()
let agentCount = 0
const extraTpms: SwtpmInstance[] = []

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'agent-iak-e2e-'))
  ;[tpmA, tpmB] = await Promise.all([startSwtpm(), startSwtpm({ ekCertificates: false })])
  ca = await createTestCa('Keylime TS test device identity CA')
  const store = join(work, 'tpm_cert_store')
  saveTestCa(ca, join(work, 'ca'))
  mkdirSync(store)
  writeFileSync(join(store, 'device-id-ca.pem'), ca.certPem)
  idA = await provisionDeviceIdentity({
    tpm: tpmA.transport,
    ca,
    template: 'H-1',
    outDir: join(work, 'certsA'),
  })
  // TPM B through the CLI, with the CA saved above
  const { stdout } = await run(process.execPath, [
    'bin/keylime.js',
    ...['devtools', 'provision-identity', '--tpm', tpmB.transport, '--ca-dir', join(work, 'ca')],
    ...[
      '--template',
      'H-2',
      '--nv-iak',
      `0x${NV.iak.toString(16)}`,
      '--nv-idevid',
      `0x${NV.idevid.toString(16)}`,
    ],
  ])
  expect(JSON.parse(stdout)).toMatchObject({ template: 'H-2', nv: { iak: '0x1c90000', idevid: '0x1c90010' } })
  for (const mode of ['default', 'ek_cert_or_iak_idevid', 'ek_cert', 'iak_idevid'] as const) {
    const env = { KEYLIME_DIR: join(work, `registrar-${mode}`) }
    mkdirSync(env.KEYLIME_DIR)
    const { config } = loadRegistrarConfig({
      configDirs: [],
      env,
      flags: {
        tls_dir: 'generate',
        port: 0,
        tls_port: 0,
        database_url: 'sqlite',
        tpm_identity: mode,
        tpm_cert_store: store,
      },
    })
    registrars.set(mode, await startRegistrar(config, log, { env }))
  }
}, 120_000)

afterAll(async () => {
  for (const r of registrars.values()) await r.close()
  await Promise.all([tpmA?.stop(), tpmB?.stop(), ...extraTpms.map((t) => t.stop())])
  rmSync(work, { recursive: true, force: true })
})

function admin(mode: Mode): RegistrarClient {
  const dir = join(work, `registrar-${mode}`, 'reg_ca')
  const read = (f: string) => readFileSync(join(dir, f), 'utf8')
  return new RegistrarClient({
    baseUrl: `https://127.0.0.1:${registrars.get(mode)?.tlsPort}`,
    tls: { ca: read('cacert.crt'), cert: read('client-cert.crt'), key: read('client-private.pem') },
  })
}

/** Starts (registers, activates) and stops an agent; resolves to what the registrar then shows, or the error. */
async function register(mode: Mode, tpm: SwtpmInstance, extra: Record<string, string>) {
  const n = ++agentCount
  const uuid = `c0ffee00-0000-4000-8000-${String(n).padStart(12, '0')}`
  const config = loadAgentConfig({
    configDirs: [],
    env: {},
    overrides: {
      keylime_dir: join(work, `agent-${n}`),
      tpm: tpm.transport,
      uuid,
      port: '0',
      registrar_port: String(registrars.get(mode)?.httpPort),
      enable_agent_mtls: 'false',
      enable_insecure_payload: 'true',
      exponential_backoff_initial_delay: '10',
      exponential_backoff_max_retries: '0',
      ...extra,
    },
  })
  const agent = await startAgent({ config, deps: defaultAgentDeps(), log })
  await agent.close()
  const client = admin(mode)
  try {
    return { agent, shown: await client.show(uuid) }
  } finally {
    await client.close()
  }
}

const withIdentityA = () => ({
  enable_iak_idevid: 'true',
  iak_cert: join(work, 'certsA', 'iak-cert.crt'),
  idevid_cert: join(work, 'certsA', 'idevid-cert.crt'),
})
const withIdentityB = () => ({
  enable_iak_idevid: 'true',
  iak_idevid_template: 'H-2',
  iak_cert: `nv:0x${NV.iak.toString(16)}`,
  idevid_cert: `nv:0x${NV.idevid.toString(16)}`,
})

async function refusal(p: Promise<unknown>): Promise<RegistrationError> {
  const err = await p.catch((e: unknown) => e)
  expect(err).toBeInstanceOf(RegistrationError)
  return err as RegistrationError
}

describe('IAK/IDevID registration in each tpm_identity mode', () => {
  it('default: accepts the agent with IAK/IDevID (files, template detected) and stores both keys and certificates', async () => {
    const { shown } = await register('default', tpmA, withIdentityA())
    expect(shown.iak_tpm).toBe(Buffer.from(idA.iakPublic).toString('base64'))
    expect(shown.idevid_tpm).toBe(Buffer.from(idA.idevidPublic).toString('base64'))
    const der = (pem: string) =>
      Buffer.from(pem.replace(/-----[^-]+-----|\s/g, ''), 'base64').toString('base64')
    expect(shown.iak_cert).toBe(der(idA.iakCertPem))
    expect(shown.idevid_cert).toBe(der(idA.idevidCertPem))
    expect(shown.ekcert).not.toBeNull()
  })

  it('iak_idevid: accepts IAK/IDevID from NV on a TPM without EK certificate; refuses EK-only', async () => {
    const { shown } = await register('iak_idevid', tpmB, withIdentityB())
    expect(shown.ekcert).toBeNull()
    expect(shown.iak_tpm).toBeTruthy()
    const err = await refusal(register('iak_idevid', tpmA, {}))
    expect(err.httpStatus).toBe(400)
  })

  it('ek_cert: accepts the EK certificate (with or without IAK); refuses IAK/IDevID without EK certificate', async () => {
    expect((await register('ek_cert', tpmA, withIdentityA())).shown.iak_tpm).toBeTruthy()
    expect((await register('ek_cert', tpmA, {})).shown.iak_tpm ?? null).toBeNull()
    const err = await refusal(register('ek_cert', tpmB, withIdentityB()))
    expect(err.httpStatus).toBe(400)
  })

  it('ek_cert_or_iak_idevid: accepts either identity, refuses a TPM with neither', async () => {
    expect((await register('ek_cert_or_iak_idevid', tpmB, withIdentityB())).shown.ekcert).toBeNull()
    expect((await register('ek_cert_or_iak_idevid', tpmA, {})).shown.ekcert).not.toBeNull()
    const err = await refusal(register('ek_cert_or_iak_idevid', tpmB, {}))
    expect(err.httpStatus).toBe(400)
  })
})

describe('endorsement hierarchy with a password', () => {
  it('tpm_ownerpassword authorises the EK, IAK and IDevID; without it the agent stops with the TPM error', async () => {
    const tpmC = await startSwtpm()
    extraTpms.push(tpmC)
    const password = 'hex:6b65796c696d65'
    const tpm = await Tpm.open(tpmC.transport)
    try {
      await tpm.run(HierarchyChangeAuth, { authHandle: TpmRh.Endorsement, newAuth: authValue(password) }, [
        new PasswordSession(),
      ])
    } finally {
      await tpm.close()
    }
    const certs = join(work, 'certsC')
    await provisionDeviceIdentity({
      tpm: tpmC.transport,
      ca,
      template: 'H-3',
      outDir: certs,
      endorsementPassword: password,
    })
    const files = {
      enable_iak_idevid: 'true',
      iak_cert: join(certs, 'iak-cert.crt'),
      idevid_cert: join(certs, 'idevid-cert.crt'),
    }
    const { shown } = await register('iak_idevid', tpmC, { ...files, tpm_ownerpassword: password })
    expect(shown.iak_tpm).toBeTruthy()
    const err = await register('iak_idevid', tpmC, files).catch((e: unknown) => e)
    expect((err as Error).message).toMatch(/TPM_RC_BAD_AUTH/)
  })
})

describe('wrong identities', () => {
  it('refuses IAK/IDevID certificates from a CA outside tpm_cert_store', async () => {
    const rogue = await createTestCa('rogue CA')
    const dir = join(work, 'rogue')
    mkdirSync(dir)
    writeFileSync(
      join(dir, 'iak.crt'),
      await issueTpmKeyCertificate(rogue, idA.iakPublic, 'CN=IAK', 'identity'),
    )
    writeFileSync(
      join(dir, 'idevid.crt'),
      await issueTpmKeyCertificate(rogue, idA.idevidPublic, 'CN=IDevID', 'identity'),
    )
    const err = await refusal(
      register('default', tpmA, {
        enable_iak_idevid: 'true',
        iak_cert: join(dir, 'iak.crt'),
        idevid_cert: join(dir, 'idevid.crt'),
      }),
    )
    expect(err.httpStatus).toBe(400)
  })

  it('the agent refuses to start when a certificate names another key (wrong template or certificate)', async () => {
    const err = await register('default', tpmA, { ...withIdentityA(), iak_idevid_template: 'H-2' }).catch(
      (e: unknown) => e,
    )
    expect(err).toBeInstanceOf(DeviceIdError)
    expect((err as Error).message).toMatch(
      /IAK this TPM creates from template H-2 is not the key of its certificate/,
    )
  })

  it('the registrar refuses an IAK certification of another AK, and accepts the same request certifying its AK', async () => {
    const uuid = 'c0ffee00-0000-4000-8000-00000000beef'
    const tpm = await Tpm.open(tpmA.transport)
    const body = async (certifyOther: boolean) => {
      const ek = await createEk(tpm, 'rsa')
      const ak = await createAk(tpm, ek.handle, { hashAlg: 'sha256', signAlg: 'rsassa' })
      const other = await createAk(tpm, ek.handle, { hashAlg: 'sha256', signAlg: 'rsassa' })
      await flushContext(tpm, ek.handle)
      const iak = await createDeviceIdKey(tpm, 'iak', 'H-1')
      const { createHash } = await import('node:crypto')
      const { attest, signature } = await certifyObject(tpm, {
        objectHandle: certifyOther ? other.handle : ak.handle,
        signHandle: iak.handle,
        qualifyingData: createHash('sha256').update(uuid).digest(),
      })
      for (const h of [iak.handle, ak.handle, other.handle]) await flushContext(tpm, h)
      return {
        aik_tpm: Buffer.from(ak.publicArea).toString('base64'),
        ek_tpm: Buffer.from(ek.publicArea).toString('base64'),
        iak_tpm: Buffer.from(idA.iakPublic).toString('base64'),
        idevid_tpm: Buffer.from(idA.idevidPublic).toString('base64'),
        iak_cert: idA.iakCertPem,
        idevid_cert: idA.idevidCertPem,
        iak_attest: Buffer.from(attest).toString('base64'),
        iak_sign: Buffer.from(signature).toString('base64'),
        mtls_cert: 'disabled',
        ip: '127.0.0.1',
        port: 9002,
      }
    }
    const client = new RegistrarClient({
      baseUrl: `http://127.0.0.1:${registrars.get('iak_idevid')?.httpPort}`,
    })
    try {
      const forged = await body(true)
      const err = await client.register(uuid, forged).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(PeerError)
      expect((err as PeerError).status).toBe(400)
      expect((await client.register(uuid, await body(false))).blob).toBeTruthy()
    } finally {
      await client.close()
      await tpm.close()
    }
  })
})
