/**
 * The verifier with the real pieces: swtpm, our registrar and agent as processes, enrollment through the tenant.
 * Checks the §D state machine end to end: pass, stop + reactivate, agent unreachable then back, verifier SIGKILL +
 * restart (resumes, nobody falsely failed), tampering with a policy PCR (INVALID_QUOTE), delete.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { copyFileSync, createWriteStream, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { basename, join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AgentState } from '../../src/api/verifier/states.ts'
import {
  freePort,
  type SwtpmInstance,
  startSwtpm,
  swtpmLocalCaCertificates,
} from '../../src/devtools/swtpm.ts'
import { removeWorkDir } from '../../src/devtools/work-dir.ts'
import { runTenantCommand, type TenantCliOptions } from '../../src/tenant/cli-actions.ts'
import { createTenant } from '../../src/tenant/wiring.ts'
import { pcrExtend } from '../../src/tpm/keylime-client.ts'
import { Tpm } from '../../src/tpm/tpm.ts'
import { waitFor } from '../unit/verifier/harness.ts'

const BIN = resolve(import.meta.dirname, '../../bin/keylime.js')
const dir = mkdtempSync(join(tmpdir(), 'kl-ver-swtpm-'))
const uuid = randomUUID()
const procs = new Map<string, ChildProcess>()
let swtpm: SwtpmInstance
let ports: { verifier: number; registrar: number; registrarTls: number; agent: number }
let tenant: Awaited<ReturnType<typeof createTenant>>
let tenantBase: TenantCliOptions

function start(name: string, args: string[], env: Record<string, string> = {}): ChildProcess {
  const log = createWriteStream(join(dir, `${name}.log`), { flags: 'a' })
  const child = spawn(process.execPath, [BIN, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  child.stdout?.pipe(log)
  child.stderr?.pipe(log)
  procs.set(name, child)
  return child
}

async function kill(name: string, signal: NodeJS.Signals): Promise<void> {
  const child = procs.get(name)
  if (!child || child.exitCode !== null || child.signalCode !== null) return
  await new Promise<void>((r) => {
    child.once('exit', () => r())
    child.kill(signal)
  })
}

const emptyConf = join(dir, 'empty.conf')
const startVerifier = () =>
  start(
    'verifier',
    [
      'verifier',
      '--config',
      emptyConf,
      '--port',
      String(ports.verifier),
      '--quote-interval',
      '0.5',
      '--retry-interval',
      '1',
      '--max-retries',
      '20',
      '--request-timeout',
      '5',
    ],
    { KEYLIME_DIR: join(dir, 'verifier'), KEYLIME_VERIFIER_EXPONENTIAL_BACKOFF: 'false' },
  )
const startAgent = () =>
  start('agent', [
    'agent',
    '--config',
    emptyConf,
    // tests run as root without a keylime account: stay root (the default run_as is keylime:tss)
    '--run-as',
    '',
    '--uuid',
    uuid,
    '--tpm',
    swtpm.transport,
    '--port',
    String(ports.agent),
    '--contact-port',
    String(ports.agent),
    '--registrar-port',
    String(ports.registrar),
    '--keylime-dir',
    join(dir, 'agent'),
    '--trusted-client-ca',
    join(dir, 'verifier/cv_ca/cacert.crt'),
    '--ima-ml-path',
    join(dir, 'agent/ima'),
    '--measuredboot-ml-path',
    join(dir, 'agent/no-boot-log'),
    '--revocation-actions-dir',
    join(dir, 'agent/actions'),
  ])

const status = async () => (await tenant.verifier.getAgent(uuid)) as Record<string, unknown> | null
const state = async () => (await status())?.operational_state
const count = async () => Number((await status())?.attestation_count ?? 0)
async function attestsBeyond(n: number, what: string): Promise<void> {
  await waitFor(
    async () => {
      try {
        const s = await status()
        return Number(s?.attestation_count ?? 0) > n && s?.operational_state === 3
      } catch {
        return false // verifier restarting
      }
    },
    60_000,
    what,
  )
}

beforeAll(async () => {
  for (const sub of ['verifier', 'registrar', 'agent', 'cert-store', 'swtpm'])
    mkdirSync(join(dir, sub), { recursive: true })
  writeFileSync(emptyConf, '')
  writeFileSync(join(dir, 'agent/ima'), '')
  swtpm = await startSwtpm({ dir: join(dir, 'swtpm') })
  const [verifier, registrar, registrarTls, agent] = await Promise.all([
    freePort(),
    freePort(),
    freePort(),
    freePort(),
  ])
  ports = {
    verifier: verifier as number,
    registrar: registrar as number,
    registrarTls: registrarTls as number,
    agent: agent as number,
  }
  startVerifier()
  await waitFor(
    async () => {
      try {
        return (await import('node:fs')).existsSync(join(dir, 'verifier/cv_ca/client-private.pem'))
      } catch {
        return false
      }
    },
    60_000,
    'verifier CA',
  )
  start(
    'registrar',
    [
      'registrar',
      '--config',
      emptyConf,
      '--port',
      String(ports.registrar),
      '--tls-port',
      String(ports.registrarTls),
      '--tls-dir',
      join(dir, 'verifier/cv_ca'),
    ],
    { KEYLIME_DIR: join(dir, 'registrar') },
  )
  startAgent()
  for (const pem of swtpmLocalCaCertificates()) copyFileSync(pem, join(dir, 'cert-store', basename(pem)))
  const tenantConf = join(dir, 'tenant.conf')
  writeFileSync(
    tenantConf,
    [
      '[tenant]',
      'verifier_ip = 127.0.0.1',
      `verifier_port = ${ports.verifier}`,
      'registrar_ip = 127.0.0.1',
      `registrar_port = ${ports.registrarTls}`,
      `tls_dir = ${join(dir, 'verifier/cv_ca')}`,
      `tpm_cert_store = ${join(dir, 'cert-store')}`,
      "accept_tpm_signing_algs = ['ecschnorr', 'rsassa']",
      'retry_interval = 1',
      'max_retries = 30',
      '',
    ].join('\n'),
  )
  tenantBase = { config: tenantConf, uuid }
  await waitFor(
    async () => {
      try {
        tenant ??= await createTenant(tenantBase)
        return (await tenant.registrar.getAgent(uuid)) !== null
      } catch {
        return false
      }
    },
    90_000,
    'agent registered',
  )
}, 180_000)

afterAll(async () => {
  await tenant?.close().catch(() => undefined)
  for (const name of [...procs.keys()]) await kill(name, 'SIGKILL')
  await swtpm?.stop()
  if (!process.env.KEYLIME_KEEP_E2E) removeWorkDir(dir)
})

describe('verifier with swtpm, registrar and agent', () => {
  it('enrolls and attests; stop + reactivate; agent down and back; verifier SIGKILL + restart; tamper; delete', async () => {
    await runTenantCommand('add', { ...tenantBase, tpmPolicy: JSON.stringify({ '15': ['0'.repeat(64)] }) })
    await attestsBeyond(2, 'first attestations')

    await tenant.verifier.stopAgent(uuid)
    expect(await state()).toBe(AgentState.TENANT_FAILED)
    await tenant.verifier.reactivateAgent(uuid)
    let n = await count()
    await attestsBeyond(n + 1, 'attestations after reactivate')

    // agent unreachable (frozen: connections hang until request_timeout), then back: retries, never FAILED
    procs.get('agent')?.kill('SIGSTOP')
    await waitFor(async () => (await state()) === AgentState.GET_QUOTE_RETRY, 30_000, 'GET_QUOTE_RETRY')
    procs.get('agent')?.kill('SIGCONT')
    n = await count()
    await attestsBeyond(n + 1, 'attestations after the agent came back')

    // verifier killed hard and restarted: the agent resumes from the database, not failed
    n = await count()
    await kill('verifier', 'SIGKILL')
    startVerifier()
    await attestsBeyond(n + 1, 'attestations after verifier restart')
    expect((await status())?.attestation_status).toBe('PASS')

    // tamper with the policy PCR
    const tpm = await Tpm.open(swtpm.transport)
    try {
      await pcrExtend(tpm, 15, { sha256: new Uint8Array(32).fill(7) })
    } finally {
      await tpm.close()
    }
    await waitFor(async () => (await state()) === AgentState.INVALID_QUOTE, 30_000, 'INVALID_QUOTE')
    expect((await status())?.last_event_id).toBe('pcr_validation.invalid_pcr_15')

    expect(await tenant.verifier.deleteAgent(uuid)).toBe('deleted')
    expect(await status()).toBeNull()
  }, 300_000)
})
