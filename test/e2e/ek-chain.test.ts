/**
 * EK CA chain from NV, end to end on swtpm: `keylime devtools provision-ek-chain` re-issues the EK certificate under
 * an intermediate CA stored in the chain NV range; our agent reads the chain and sends it at registration, our
 * registrar stores it, and the tenant's EK check, with only the root in its tpm_cert_store, trusts the EK through
 * that chain and does not without it. RSA 2048 and ECC P-256 EKs (the agent's own templates) and swtpm's persistent
 * high-range RSA 3072 and ECC P-384 EKs (ek_handle; their policy is PolicyOR(PolicyA, PolicyC)).
 */
import { execFile } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadAgentConfig } from '../../src/agent/config.ts'
import { defaultAgentDeps, startAgent } from '../../src/agent/runtime.ts'
import { RegistrarClient } from '../../src/api/registrar/client.ts'
import { createLogger } from '../../src/common/log.ts'
import { loadRegistrarConfig } from '../../src/config/registrar.ts'
import { parsePemCertificates } from '../../src/crypto/ek-trust.ts'
import { type RunningRegistrar, startRegistrar } from '../../src/registrar/server.ts'
import { createIdentityChecker } from '../../src/tenant/identity.ts'
import type { RegistrarAgentRecord } from '../../src/tenant/ports.ts'
import { NvDefineSpace, NvWrite } from '../../src/tpm/commands/nv.ts'
import { EkCaChainNvRange, TpmAlg, TpmaNv, TpmRh } from '../../src/tpm/constants.ts'
import { PasswordSession } from '../../src/tpm/session.ts'
import { Tpm } from '../../src/tpm/tpm.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

const log = createLogger('ek-chain-e2e', 'silent')
const run = promisify(execFile)
let work: string
let registrar: RunningRegistrar
let admin: RegistrarClient
const tpms: SwtpmInstance[] = []

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'ek-chain-e2e-'))
  const env = { KEYLIME_DIR: work }
  const { config } = loadRegistrarConfig({
    configDirs: [],
    env,
    flags: { tls_dir: 'generate', port: 0, tls_port: 0, database_url: 'sqlite', tpm_identity: 'ek_cert' },
  })
  registrar = await startRegistrar(config, log, { env })
  const read = (f: string) => readFileSync(join(work, 'reg_ca', f), 'utf8')
  admin = new RegistrarClient({
    baseUrl: `https://127.0.0.1:${registrar.tlsPort}`,
    tls: { ca: read('cacert.crt'), cert: read('client-cert.crt'), key: read('client-private.pem') },
  })
}, 60_000)

afterAll(async () => {
  await admin?.close()
  await registrar?.close()
  await Promise.all(tpms.map((t) => t.stop()))
  rmSync(work, { recursive: true, force: true })
})

const CASES = [
  { alg: 'rsa', what: 'RSA 2048', ekHandle: '', tail: '00000000c4a1' },
  { alg: 'ecc', what: 'ECC P-256', ekHandle: '', tail: '00000000c4a2' },
  { alg: 'rsa', what: 'RSA 3072 (persistent, high range)', ekHandle: '0x8101001c', tail: '00000000c4a3' },
  { alg: 'ecc', what: 'ECC P-384 (persistent, high range)', ekHandle: '0x81010016', tail: '00000000c4a4' },
] as const

describe('EK CA chain from the TPM', () => {
  it.each(CASES)(
    '$what EK: chain read from NV, stored by the registrar, completes the tenant check',
    async (c) => {
      const swtpm = await startSwtpm({
        ekCertificates: false,
        rsaKeySize: c.ekHandle === '0x8101001c' ? 3072 : 2048,
      })
      tpms.push(swtpm)
      const store = join(work, `store-${c.tail}`)
      mkdirSync(store)
      await run(process.execPath, [
        'bin/keylime.js',
        ...['devtools', 'provision-ek-chain', '--tpm', swtpm.transport, '--alg', c.alg],
        ...['--root-out', join(store, 'root.pem')],
        ...(c.ekHandle ? ['--ek-handle', c.ekHandle] : []),
      ])
      const uuid = `c0ffee00-0000-4000-8000-${c.tail}`
      const agent = await startAgent({
        config: loadAgentConfig({
          configDirs: [],
          env: {},
          overrides: {
            keylime_dir: join(work, `agent-${c.tail}`),
            tpm: swtpm.transport,
            tpm_encryption_alg: c.alg,
            ek_handle: c.ekHandle || 'generate',
            uuid,
            port: '0',
            registrar_port: String(registrar.httpPort),
            enable_agent_mtls: 'false',
            enable_insecure_payload: 'true',
            exponential_backoff_max_retries: '0',
          },
        }),
        deps: defaultAgentDeps(),
        log,
      })
      await agent.close()

      const record = (await admin.show(uuid)) as unknown as RegistrarAgentRecord
      const chain = parsePemCertificates(record.ek_ca_chain ?? '')
      expect(chain.map((cert) => cert.subject.text)).toEqual([
        expect.stringContaining('test EK intermediate CA'),
      ])

      const warnings: string[] = []
      const checker = () =>
        createIdentityChecker({ requireEkCert: true, tpmCertStore: store, warn: (m) => warnings.push(m) })
      expect(await checker().checkEk({ uuid, record })).toBeNull()
      const withoutChain = await checker().checkEk({ uuid, record: { ...record, ek_ca_chain: null } })
      expect(withoutChain).toMatch(/is the issuer "CN=Keylime TS test EK intermediate CA/)
    },
  )
})

describe('an unreadable EK CA chain index', () => {
  it('is reported and the agent registers without a chain', async () => {
    const swtpm = await startSwtpm()
    tpms.push(swtpm)
    const tpm = await Tpm.open(swtpm.transport)
    try {
      // readable only through a policy nobody can satisfy (empty authPolicy)
      await tpm.run(
        NvDefineSpace,
        {
          authHandle: TpmRh.Owner,
          auth: new Uint8Array(0),
          publicInfo: {
            nvIndex: EkCaChainNvRange.first,
            nameAlg: TpmAlg.Sha256,
            attributes: TpmaNv.OwnerWrite | TpmaNv.PolicyRead | TpmaNv.NoDa,
            authPolicy: new Uint8Array(0),
            dataSize: 4,
          },
        },
        [new PasswordSession()],
      )
      await tpm.run(
        NvWrite,
        { authHandle: TpmRh.Owner, nvIndex: EkCaChainNvRange.first, data: Buffer.from('0000'), offset: 0 },
        [new PasswordSession()],
      )
    } finally {
      await tpm.close()
    }
    const uuid = 'c0ffee00-0000-4000-8000-00000000c4a9'
    const warnings: string[] = []
    const agent = await startAgent({
      config: loadAgentConfig({
        configDirs: [],
        env: {},
        overrides: {
          keylime_dir: join(work, 'agent-unreadable'),
          tpm: swtpm.transport,
          uuid,
          port: '0',
          registrar_port: String(registrar.httpPort),
          enable_agent_mtls: 'false',
          enable_insecure_payload: 'true',
          exponential_backoff_max_retries: '0',
        },
      }),
      deps: defaultAgentDeps(),
      log: Object.assign(Object.create(log), { warn: (m: string) => warnings.push(m) }),
    })
    await agent.close()
    expect(warnings.some((w) => w.includes('EK CA chain in NV cannot be read'))).toBe(true)
    const record = (await admin.show(uuid)) as unknown as RegistrarAgentRecord
    expect(record.ek_ca_chain ?? null).toBeNull()
    expect(record.ekcert).not.toBeNull()
  })
})
