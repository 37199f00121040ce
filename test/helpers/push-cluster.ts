/**
 * A push-mode deployment for the end-to-end tests: verifier processes with `mode = push` (restartable, sharing one
 * database and one generated CA), our registrar in-process, a tenant driving `--push-model` enrolment, and push
 * agents run in-process on swtpm so a test can read their counters and stop them.
 */
import type { ChildProcess } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { basename, join } from 'node:path'
import { Agent } from 'undici'
import { loadAgentConfig } from '../../src/agent/config.ts'
import { imaNgFormatter } from '../../src/agent/ima-emulator.ts'
import { type RunningPushAgent, startPushAgent } from '../../src/agent/push/push-agent.ts'
import { defaultAgentDeps } from '../../src/agent/runtime.ts'
import { createLogger } from '../../src/common/log.ts'
import { loadRegistrarConfig } from '../../src/config/registrar.ts'
import { portOpen, waitFor } from '../../src/devtools/local-cluster.ts'
import { type RevocationWebhook, startRevocationWebhook } from '../../src/devtools/revocation-webhook.ts'
import { createRuntimePolicy } from '../../src/evidence/ima/create-policy.ts'
import { type RunningRegistrar, startRegistrar } from '../../src/registrar/server.ts'
import { runTenantCommand } from '../../src/tenant/cli-actions.ts'
import { createTenant, type TenantRuntime } from '../../src/tenant/wiring.ts'
import { freePort, type SwtpmInstance, startSwtpm, swtpmLocalCaCertificates } from './swtpm.ts'
import { spawnVerifierFromSource } from './verifier-process.ts'

export const log = createLogger('push-e2e', 'silent')

export interface PushVerifier {
  port: number
  proc: ChildProcess
  /** stderr and log lines, for failure messages. */
  output(): string
  kill(signal: NodeJS.Signals): Promise<void>
  /** Starts it again on the same port and database; `env` adds or changes `KEYLIME_VERIFIER_*` settings. */
  restart(env?: Record<string, string>): Promise<void>
}

export interface PushCluster {
  work: string
  cvCa: string
  tenantConf: string
  registrar: RunningRegistrar
  webhook: RevocationWebhook
  tenant: TenantRuntime
  verifiers: PushVerifier[]
  startVerifier(opts?: { port?: number }): Promise<PushVerifier>
  /** Admin GET of a verifier path (JSON:API or v2), with the tenant's client certificate. */
  // biome-ignore lint/suspicious/noExplicitAny: JSON bodies of several shapes, read field by field by the tests
  adminGet(port: number, path: string): Promise<{ status: number; body: any }>
  startAgent(
    name: string,
    opts?: { verifierPort?: number; emulate?: string[]; extra?: Record<string, string> },
  ): Promise<{
    agent: RunningPushAgent
    swtpm: SwtpmInstance
    imaList: string
    dir: string
  }>
  /** `tenant -c add --push-model` with a runtime policy made from the agent's IMA list. */
  enroll(uuid: string, imaList: string, cert?: string): Promise<void>
  close(): Promise<void>
}

export async function startPushCluster(opts: {
  work: string
  dbUrl: string
  /** `KEYLIME_VERIFIER_*` settings of every verifier. */
  verifierEnv: Record<string, string>
  quoteInterval: number
  webhookCertPem?: () => string
}): Promise<PushCluster> {
  const { work } = opts
  const verifierDir = join(work, 'verifier')
  const cvCa = join(verifierDir, 'cv_ca')
  mkdirSync(verifierDir, { recursive: true })
  writeFileSync(join(work, 'none.conf'), '')
  const webhookPort = await freePort()
  const webhook = startRevocationWebhook(webhookPort, opts.webhookCertPem ?? (() => ''))
  const verifiers: PushVerifier[] = []
  const swtpms: SwtpmInstance[] = []
  const agents: RunningPushAgent[] = []

  function spawnOne(
    port: number,
    env: Record<string, string> = {},
  ): { proc: ChildProcess; out: { text: string } } {
    const proc = spawnVerifierFromSource(
      [
        '--port',
        String(port),
        '--tls-dir',
        'generate',
        '--quote-interval',
        String(opts.quoteInterval),
        '--database-url',
        opts.dbUrl,
        '--enabled-revocation-notifications',
        "['webhook']",
        '--webhook-url',
        `http://127.0.0.1:${webhookPort}/revocation`,
      ],
      {
        KEYLIME_DIR: verifierDir,
        KEYLIME_VERIFIER_CONFIG: join(work, 'none.conf'),
        KEYLIME_VERIFIER_MODE: 'push',
        KEYLIME_LOG_LEVEL: 'warn',
        ...opts.verifierEnv,
        ...env,
      },
      ['ignore', 'pipe', 'pipe'],
    )
    const out = { text: '' }
    const keep = (d: Buffer) => {
      out.text = (out.text + d.toString()).slice(-20_000)
    }
    proc.stdout?.on('data', keep)
    proc.stderr?.on('data', keep)
    return { proc, out }
  }

  async function startVerifier(o: { port?: number } = {}): Promise<PushVerifier> {
    const port = o.port ?? (await freePort())
    let current = spawnOne(port)
    const up = async () => {
      await waitFor(`verifier on ${port}`, 60, async () => {
        if (current.proc.exitCode !== null) throw new Error(`verifier exited:\n${current.out.text}`)
        return (await portOpen(port)) ? true : undefined
      })
    }
    await up()
    const v: PushVerifier = {
      port,
      get proc() {
        return current.proc
      },
      output: () => current.out.text,
      async kill(signal) {
        if (current.proc.exitCode !== null || current.proc.signalCode !== null) return
        const gone = new Promise((r) => current.proc.once('exit', r))
        current.proc.kill(signal)
        await gone
      },
      async restart(env) {
        current = spawnOne(port, env)
        await up()
      },
    }
    verifiers.push(v)
    return v
  }

  const first = await startVerifier()
  await waitFor('the generated CA', 30, () =>
    existsSync(join(cvCa, 'client-private.pem')) ? true : undefined,
  )
  const { config: regConfig } = loadRegistrarConfig({
    configDirs: [],
    env: { KEYLIME_DIR: work },
    flags: { tls_dir: cvCa, port: 0, tls_port: 0, database_url: 'sqlite' },
  })
  const registrar = await startRegistrar(regConfig, log, { env: { KEYLIME_DIR: work } })
  const certStore = join(work, 'cert-store')
  mkdirSync(certStore, { recursive: true })
  for (const pem of swtpmLocalCaCertificates()) copyFileSync(pem, join(certStore, basename(pem)))
  const tenantConf = join(work, 'tenant.conf')
  writeFileSync(
    tenantConf,
    [
      '[tenant]',
      'verifier_ip = 127.0.0.1',
      `verifier_port = ${first.port}`,
      'registrar_ip = 127.0.0.1',
      `registrar_port = ${registrar.tlsPort}`,
      `tls_dir = ${cvCa}`,
      `tpm_cert_store = ${certStore}`,
      'retry_interval = 0.2',
      'exponential_backoff = False',
      'max_retries = 10',
      '',
    ].join('\n'),
  )
  const tenant = await createTenant({ config: tenantConf })
  const read = (f: string) => readFileSync(join(cvCa, f), 'utf8')
  const adminDispatcher = new Agent({
    connect: {
      ca: read('cacert.crt'),
      cert: read('client-cert.crt'),
      key: read('client-private.pem'),
      checkServerIdentity: () => undefined,
    },
  })

  return {
    work,
    cvCa,
    tenantConf,
    registrar,
    webhook,
    tenant,
    verifiers,
    startVerifier,
    async adminGet(port, path) {
      const res = await adminDispatcher.request({ origin: `https://127.0.0.1:${port}`, path, method: 'GET' })
      const text = await res.body.text()
      return { status: res.statusCode, body: text === '' ? null : JSON.parse(text) }
    },
    async startAgent(name, o = {}) {
      const dir = join(work, name)
      mkdirSync(dir, { recursive: true })
      const swtpm = await startSwtpm({ dir: join(dir, 'swtpm') })
      swtpms.push(swtpm)
      const imaList = join(dir, 'ima.txt')
      writeFileSync(imaList, '')
      const config = loadAgentConfig({
        configDirs: [],
        env: {},
        overrides: {
          keylime_dir: dir,
          tpm: swtpm.transport,
          uuid: 'generate',
          registrar_port: String(registrar.httpPort),
          verifier_url: `https://127.0.0.1:${o.verifierPort ?? first.port}`,
          verifier_tls_ca_cert: join(cvCa, 'cacert.crt'),
          ima_ml_path: imaList,
          measuredboot_ml_path: join(dir, 'no-boot-log'),
          ima_emulator_paths: (o.emulate ?? []).join(','),
          attestation_interval_seconds: String(opts.quoteInterval),
          exponential_backoff_initial_delay: '200',
          exponential_backoff_max_delay: '1000',
          exponential_backoff_max_retries: '3',
          run_as: '',
          ...o.extra,
        },
      })
      const agent = await startPushAgent({
        config,
        deps: defaultAgentDeps(),
        log,
        imaFormatter: imaNgFormatter,
        timeoutMs: 3000,
      })
      agents.push(agent)
      return { agent, swtpm, imaList, dir }
    },
    async enroll(uuid, imaList, cert) {
      const policy = join(work, `policy-${uuid}.json`)
      const made = createRuntimePolicy({ imaListText: readFileSync(imaList, 'utf8'), now: new Date() })
      writeFileSync(policy, JSON.stringify(made))
      await runTenantCommand('add', {
        config: tenantConf,
        uuid,
        pushModel: true,
        runtimePolicy: policy,
        ...(cert ? { cert } : {}),
      })
    },
    async close() {
      for (const a of agents) await a.close().catch(() => undefined)
      for (const v of verifiers) await v.kill('SIGTERM').catch(() => undefined)
      await tenant.close()
      await adminDispatcher.close()
      await registrar.close()
      await webhook.close()
      await Promise.all(swtpms.map((s) => s.stop()))
    },
  }
}
