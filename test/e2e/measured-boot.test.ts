/**
 * Measured boot end to end on swtpm, with the verifier on the `example` policy engine (upstream's default is
 * accept-all). An event log is extended into each agent's swtpm (so the quote matches the log), the agent serves
 * that log, the tenant enrolls it with a reference state.
 * - A real machine's log (RHEL 8 on GCE): passes with inline `--mb-policy` and with a named policy; an extra PCR-4
 *   extend in the TPM, or one digest changed in the served log, fails with `measured_boot.invalid_pcr_4`.
 * - Synthetic logs (src/devtools/synthetic-event-log.ts): a log that matches the quote but not the reference state
 *   (another kernel build) fails with `measured_boot.policy_example`, and the signed revocation names the reason;
 *   `measured_boot_evaluate = once` does not re-run a changed policy after the first pass, `always` does (a second
 *   cluster); a log with StartupLocality 3 passes on a swtpm started at locality 3.
 * The tests run concurrently: each has its own agent.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, it } from 'vitest'
import { createCa } from '../../src/crypto/ca.ts'
import { extendEventLogIntoTpm, startupAtLocality } from '../../src/devtools/event-log-replay.ts'
import { type ClusterAgent, LocalCluster, portOpen, waitFor } from '../../src/devtools/local-cluster.ts'
import { type RevocationWebhook, startRevocationWebhook } from '../../src/devtools/revocation-webhook.ts'
import { freePort, type SwtpmInstance, startSwtpm } from '../../src/devtools/swtpm.ts'
import {
  createSecureBootKeys,
  type SyntheticEventLog,
  syntheticEventLog,
} from '../../src/devtools/synthetic-event-log.ts'
import { createReferenceState, extendPlan, parseEventLog } from '../../src/evidence/mb/index.ts'
import { createTenant, type TenantRuntime } from '../../src/tenant/wiring.ts'
import { pcrExtend } from '../../src/tpm/keylime-client.ts'
import { Tpm } from '../../src/tpm/tpm.ts'
import { fixture } from '../helpers/fixture.ts'

// A crypto-agile log from a real machine (RHEL 8 on GCE, Secure Boot on): no H-CRTM, default StartupLocality.
const LOG_NAME = 'go-tpm-tools-rhel8-gce.bin'
const BIN = resolve(import.meta.dirname, '../../bin/keylime.js')
const GET_QUOTE = 3
const INVALID_QUOTE = 9

function keylime(...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((done) => {
    const child = spawn(process.execPath, [BIN, ...args])
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    child.on('exit', (status) => done({ status, stdout, stderr }))
  })
}

/** One cluster (verifier + registrar) and an in-process tenant client to watch its agents. */
interface Site {
  cluster: LocalCluster
  tenantRuntime: TenantRuntime
  tenant(...args: string[]): ReturnType<typeof keylime>
}

interface AgentStatus {
  operational_state: number | null
  attestation_count: number
  last_event_id: string | null
}

const status = async (site: Site, uuid: string) =>
  (await site.tenantRuntime.verifier.getAgent(uuid)) as AgentStatus | null

/** Waits for `count` passing attestations; fails at once if the agent fails. */
const waitPassing = (site: Site, uuid: string, count = 2) =>
  waitFor(`${count} passing attestations`, 60, async () => {
    const s = await status(site, uuid)
    if (s?.operational_state === INVALID_QUOTE) throw new Error(`agent failed: ${s.last_event_id}`)
    return s && s.operational_state === GET_QUOTE && s.attestation_count >= count ? s : undefined
  })
const waitFailed = (site: Site, uuid: string) =>
  waitFor('the verifier to fail the agent', 60, async () => {
    const s = await status(site, uuid)
    return s?.operational_state === INVALID_QUOTE ? s : undefined
  })

describe.concurrent('measured boot on swtpm', () => {
  let dir: string
  let once: Site
  let always: Site
  const realLog = fixture(`eventlogs/${LOG_NAME}`)
  const realAgents: { agent: ClusterAgent; logPath: string }[] = []
  let realRefstate: string
  let logA: SyntheticEventLog
  let logOtherKernel: SyntheticEventLog
  let logLocality3: SyntheticEventLog
  const synthetic = new Map<string, { uuid: string; site: Site }>()
  let webhook: RevocationWebhook
  let payloadCa: string
  const extraProcesses: ChildProcess[] = []
  let locality3Tpm: SwtpmInstance | undefined

  const refstateFile = (name: string, log: SyntheticEventLog) => {
    const path = join(dir, `${name}.refstate.json`)
    writeFileSync(path, JSON.stringify(createReferenceState(parseEventLog(log.bytes))))
    return path
  }
  const servedLog = (name: string, bytes: Uint8Array) => {
    const path = join(dir, 'logs-served', `${name}.bin`)
    writeFileSync(path, bytes)
    return path
  }

  async function makeSite(name: string, evaluate: 'once' | 'always', webhookUrl: string): Promise<Site> {
    const cluster = new LocalCluster({
      dir: join(dir, name),
      quoteInterval: 1,
      stepTimeout: 90,
      webhookUrl,
      verifierEnv: {
        KEYLIME_VERIFIER_MEASURED_BOOT_POLICY_NAME: 'example',
        KEYLIME_VERIFIER_MEASURED_BOOT_EVALUATE: evaluate,
      },
    })
    await cluster.startServices()
    const tenantRuntime = await createTenant({ config: cluster.tenantConf })
    return {
      cluster,
      tenantRuntime,
      tenant: (...args) => keylime('tenant', '--config', cluster.tenantConf, ...args),
    }
  }

  /** An agent on a LocalCluster whose swtpm holds `bytes` (a boot log it serves). */
  async function bootedAgent(site: Site, name: string, bytes: Uint8Array): Promise<ClusterAgent> {
    const logPath = servedLog(name, bytes)
    const agent = await site.cluster.startAgent(name, ['--measuredboot-ml-path', logPath])
    // Quotes start only after enrollment, so extending now (sharing the swtpm with the registering agent) is like
    // the firmware having measured the boot before the agent ran.
    await extendEventLogIntoTpm(agent.swtpm.transport, bytes)
    return agent
  }

  /**
   * An agent on a swtpm whose TPM2_Startup was sent at locality 3 (LocalCluster's swtpm starts at locality 0), with
   * the same command line LocalCluster gives its agents.
   */
  async function locality3Agent(site: Site, bytes: Uint8Array): Promise<string> {
    const agentDir = join(dir, 'loc3-agent')
    mkdirSync(join(agentDir, 'actions'), { recursive: true, mode: 0o700 })
    locality3Tpm = await startSwtpm({ dir: join(agentDir, 'swtpm'), startup: false })
    await startupAtLocality(locality3Tpm, 3)
    await extendEventLogIntoTpm(locality3Tpm.transport, bytes, { tpmStartupLocality: 3 })
    const conf = join(agentDir, 'empty.conf')
    writeFileSync(conf, '')
    writeFileSync(join(agentDir, 'ima'), '')
    const uuid = randomUUID()
    const port = await freePort()
    const child = spawn(
      process.execPath,
      [
        BIN,
        'agent',
        '--config',
        conf,
        // tests run as root without a keylime account: stay root (the default run_as is keylime:tss)
        '--run-as',
        '',
        '--uuid',
        uuid,
        '--tpm',
        locality3Tpm.transport,
        '--port',
        String(port),
        '--contact-port',
        String(port),
        '--registrar-port',
        String(site.cluster.registrarPort),
        '--keylime-dir',
        agentDir,
        '--trusted-client-ca',
        join(site.cluster.cvCa, 'cacert.crt'),
        '--ima-ml-path',
        join(agentDir, 'ima'),
        '--measuredboot-ml-path',
        servedLog('loc3', bytes),
        '--revocation-actions-dir',
        join(agentDir, 'actions'),
      ],
      { stdio: 'ignore' },
    )
    extraProcesses.push(child)
    await waitFor('the locality-3 agent to listen', 60, () => portOpen(port))
    return uuid
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kl-mb-e2e-'))
    mkdirSync(join(dir, 'logs-served'))
    payloadCa = join(dir, 'payload-ca')
    const keys = createSecureBootKeys()
    await createCa(payloadCa, { commonName: 'measured-boot e2e payload CA' })
    const webhookPort = await freePort()
    webhook = startRevocationWebhook(webhookPort, () =>
      readFileSync(join(payloadCa, 'RevocationNotifier-cert.crt'), 'utf8'),
    )
    const webhookUrl = `http://127.0.0.1:${webhookPort}/revocation`
    once = await makeSite('once', 'once', webhookUrl)
    always = await makeSite('always', 'always', webhookUrl)

    logA = syntheticEventLog({ keys: await keys })
    logOtherKernel = syntheticEventLog({ keys: await keys, kernelBuild: '6.8.0-keylime-rebuilt' })
    logLocality3 = syntheticEventLog({ keys: await keys, startupLocality: 3 })

    // One at a time: swtpm_setup signs EK certificates with a shared local CA that it locks.
    for (const name of ['mbagent1', 'mbagent2']) {
      const agent = await bootedAgent(once, name, realLog)
      realAgents.push({ agent, logPath: join(dir, 'logs-served', `${name}.bin`) })
    }
    for (const [name, site] of [
      ['syn-once', once],
      ['syn-wrong', once],
      ['syn-always', always],
    ] as const) {
      synthetic.set(name, { uuid: (await bootedAgent(site, name, logA.bytes)).uuid, site })
    }
    synthetic.set('syn-loc3', { uuid: await locality3Agent(once, logLocality3.bytes), site: once })

    realRefstate = join(dir, 'rhel8.refstate.json')
    const created = await keylime(
      'policy',
      'create',
      'measured-boot',
      '-e',
      realAgents[0]?.logPath ?? '',
      '-o',
      realRefstate,
    )
    if (created.status !== 0) throw new Error(`policy create failed: ${created.stderr}`)
    for (const { uuid, site } of [
      ...realAgents.map(({ agent }) => ({ uuid: agent.uuid, site: once })),
      ...synthetic.values(),
    ]) {
      await waitFor('registration', 60, async () =>
        (await site.tenantRuntime.registrar.getAgent(uuid)) ? true : undefined,
      )
    }
  }, 180_000)

  afterAll(async () => {
    for (const child of extraProcesses) child.kill('SIGTERM')
    await locality3Tpm?.stop()
    for (const site of [once, always]) {
      await site?.tenantRuntime.close()
      await site?.cluster.stop()
    }
    await webhook?.close()
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  it('real log: passes with the log as --mb-policy reference state, fails when one more digest is extended into PCR 4', async ({
    expect,
  }) => {
    const { agent } = realAgents[0] as { agent: ClusterAgent }
    const add = await once.tenant('-c', 'add', '-u', agent.uuid, '--mb-policy', realRefstate)
    expect(add.status, add.stderr).toBe(0)
    await waitPassing(once, agent.uuid)

    const tpm = await Tpm.open(agent.swtpm.transport)
    try {
      await pcrExtend(tpm, 4, { sha1: Buffer.alloc(20, 0xab), sha256: Buffer.alloc(32, 0xab) })
    } finally {
      await tpm.close()
    }
    const failed = await waitFailed(once, agent.uuid)
    expect(failed.last_event_id).toBe('measured_boot.invalid_pcr_4')
  }, 120_000)

  it('real log: passes with a named policy, fails when one event digest of the served log is changed', async ({
    expect,
  }) => {
    const { agent, logPath } = realAgents[1] as { agent: ClusterAgent; logPath: string }
    const name = `rhel8-gce-${agent.uuid.slice(0, 8)}`
    const upload = await once.tenant(
      '-c',
      'addmbpolicy',
      '--mb-policy-name',
      name,
      '--mb-policy',
      realRefstate,
    )
    expect(upload.status, upload.stderr).toBe(0)
    const add = await once.tenant('-c', 'add', '-u', agent.uuid, '--mb-policy-name', name)
    expect(add.status, add.stderr).toBe(0)
    await waitPassing(once, agent.uuid)

    // Change one byte of the sha256 digest of a PCR-4 event (a boot loader image) in the log the agent serves.
    const step = extendPlan(parseEventLog(realLog)).steps.find((s) => s.pcr === 4 && s.digests.sha256)
    const digest = step?.digests.sha256
    if (!digest) throw new Error('the log has no PCR 4 event')
    const tampered = Buffer.from(readFileSync(logPath))
    const at = tampered.indexOf(Buffer.from(digest))
    expect(at).toBeGreaterThan(0)
    tampered[at] = (tampered[at] as number) ^ 0xff
    writeFileSync(logPath, tampered)

    const failed = await waitFailed(once, agent.uuid)
    expect(failed.last_event_id).toBe('measured_boot.invalid_pcr_4')
  }, 120_000)

  it('a log that matches the quote but not the reference state (another kernel) fails with measured_boot.policy_example; the revocation names the kernel', async ({
    expect,
  }) => {
    const { uuid } = synthetic.get('syn-wrong') as { uuid: string }
    const add = await once.tenant(
      '-c',
      'add',
      '-u',
      uuid,
      '--mb-policy',
      refstateFile('other-kernel', logOtherKernel),
      '--cert',
      payloadCa,
    )
    // The tenant waits for the payload, which a failing agent never receives: it says so instead of "added".
    expect(add.stderr).toMatch(/failed attestation \(.*measured_boot\.policy_example\) before it received V/)
    expect(add.status).toBe(1)
    const failed = await waitFailed(once, uuid)
    expect(failed.last_event_id).toBe('measured_boot.policy_example')
    expect(failed.attestation_count).toBe(0)

    const revocation = await waitFor('the signed revocation', 30, () =>
      webhook.received.find((r) => r.message?.agent_id === uuid),
    )
    expect(revocation.message?.event_id).toBe('measured_boot.policy_example')
    const context = JSON.parse(revocation.message?.context ?? '{}') as { reason?: string; context?: string }
    expect(context.context).toBe('Boot attestation failed')
    expect(context.reason).toBe(
      `no kernel entry matches: [0] boot applications [${logA.digests.shim}, ${logA.digests.grub}, ${logA.digests.kernel}] are not shim, grub, kernel [${logA.digests.shim}, ${logA.digests.grub}, ${logOtherKernel.digests.kernel}]`,
    )
  }, 120_000)

  /** Enrolls the agent started as `agentName` with a named policy generated from log A (which it serves). */
  async function enrollWithNamedPolicy(
    site: Site,
    agentName: string,
  ): Promise<{ uuid: string; name: string }> {
    const { uuid } = synthetic.get(agentName) as { uuid: string }
    const name = `${agentName}-${uuid.slice(0, 8)}`
    const policy = refstateFile(`a-${agentName}`, logA)
    const upload = await site.tenant('-c', 'addmbpolicy', '--mb-policy-name', name, '--mb-policy', policy)
    if (upload.status !== 0) throw new Error(`addmbpolicy failed: ${upload.stderr}`)
    const add = await site.tenant('-c', 'add', '-u', uuid, '--mb-policy-name', name)
    if (add.status !== 0) throw new Error(`add failed: ${add.stderr}`)
    return { uuid, name }
  }

  /** Replaces the named policy with the reference state of another kernel build (which the served log violates). */
  async function swapNamedPolicyToOtherKernel(site: Site, name: string): Promise<void> {
    const policy = refstateFile(`other-kernel-${name}`, logOtherKernel)
    const update = await site.tenant('-c', 'updatembpolicy', '--mb-policy-name', name, '--mb-policy', policy)
    if (update.status !== 0) throw new Error(`updatembpolicy failed: ${update.stderr}`)
  }

  it('measured_boot_evaluate = once: after the first pass, a changed named policy is not evaluated again', async ({
    expect,
  }) => {
    const { uuid, name } = await enrollWithNamedPolicy(once, 'syn-once')
    const passed = await waitPassing(once, uuid)

    // the same reference state that fails `syn-wrong` at its first attestation
    await swapNamedPolicyToOtherKernel(once, name)
    const later = await waitPassing(once, uuid, passed.attestation_count + 3)
    expect(later.last_event_id).toBeNull()
  }, 120_000)

  it('measured_boot_evaluate = always: a changed named policy is evaluated at the next quote and fails', async ({
    expect,
  }) => {
    const { uuid, name } = await enrollWithNamedPolicy(always, 'syn-always')
    await waitPassing(always, uuid, 3)

    await swapNamedPolicyToOtherKernel(always, name)
    const failed = await waitFailed(always, uuid)
    expect(failed.last_event_id).toBe('measured_boot.policy_example')
    expect(failed.attestation_count).toBeGreaterThanOrEqual(3)
  }, 120_000)

  it('a log with StartupLocality 3 passes on a TPM started at locality 3 (PCR 0 starts at 00…03)', async ({
    expect,
  }) => {
    const { uuid } = synthetic.get('syn-loc3') as { uuid: string }
    expect(extendPlan(parseEventLog(logLocality3.bytes)).startupLocality).toBe(3)
    const add = await once.tenant('-c', 'add', '-u', uuid, '--mb-policy', refstateFile('loc3', logLocality3))
    expect(add.status, add.stderr).toBe(0)
    const passed = await waitPassing(once, uuid)
    expect(passed.last_event_id).toBeNull()
  }, 120_000)
})
