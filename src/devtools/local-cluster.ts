/**
 * A complete Keylime deployment on localhost for development, the demo and end-to-end tests: one verifier and one
 * registrar process (certificates from the verifier's `tls_dir = generate`), and any number of agent processes,
 * each on its own swtpm. Processes are started with `keylime <component>` exactly as an operator would; the
 * returned object knows every port and writes a tenant.conf for driving the cluster.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { copyFileSync, createWriteStream, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { basename, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createTestCa, provisionDeviceIdentity, type TestCa } from './device-identity.ts'
import { freePort, type SwtpmInstance, startSwtpm, swtpmLocalCaCertificates } from './swtpm.ts'

const BIN = resolve(fileURLToPath(new URL('../../bin/keylime.js', import.meta.url)))

export async function waitFor<T>(
  what: string,
  timeoutS: number,
  probe: () => Promise<T | undefined> | T | undefined,
): Promise<T> {
  const deadline = Date.now() + timeoutS * 1000
  for (;;) {
    const value = await probe()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutS}s waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 200))
  }
}

export const portOpen = (port: number) =>
  new Promise<true | undefined>((res) => {
    const s = connect({ host: '127.0.0.1', port })
    s.once('connect', () => {
      s.destroy()
      res(true)
    })
    s.once('error', () => res(undefined))
  })

export interface ClusterAgent {
  uuid: string
  port: number
  dir: string
  swtpm: SwtpmInstance
  imaList: string
  process: ChildProcess
  stop(): Promise<void>
}

/** A push agent: a process with no listening port, on its own swtpm. */
export type ClusterPushAgent = Omit<ClusterAgent, 'port'>

export interface LocalClusterOptions {
  dir: string
  quoteInterval: number
  stepTimeout: number
  /** Revocation webhook URL for the verifier (optional). */
  webhookUrl?: string
  /** Extra `KEYLIME_VERIFIER_*` settings for the verifier process (e.g. its measured-boot policy engine). */
  verifierEnv?: Record<string, string>
  /** Called when a process exits unexpectedly. */
  onExit?: (name: string, logFile: string) => void
}

export class LocalCluster {
  readonly children: { name: string; child: ChildProcess }[] = []
  readonly agents: ClusterAgent[] = []
  readonly pushAgents: ClusterPushAgent[] = []
  private stopping = false
  private deviceIdCa: TestCa | undefined
  verifierPort = 0
  registrarPort = 0
  registrarTlsPort = 0
  readonly cvCa: string
  readonly tenantConf: string
  readonly logDir: string
  private readonly emptyConf: string

  constructor(readonly opts: LocalClusterOptions) {
    this.cvCa = join(opts.dir, 'verifier', 'cv_ca')
    this.tenantConf = join(opts.dir, 'tenant', 'tenant.conf')
    this.logDir = join(opts.dir, 'logs')
    this.emptyConf = join(opts.dir, 'empty.conf')
    for (const sub of ['verifier', 'registrar', 'tenant', 'logs', 'cert-store']) {
      mkdirSync(join(opts.dir, sub), { recursive: true, mode: 0o700 })
    }
    writeFileSync(this.emptyConf, '')
  }

  /** Agents run with the V8 flags of their systemd units (packaging/systemd), so the demo exercises them. */
  private static readonly AGENT_NODE_OPTIONS = '--max-semi-space-size=1 --v8-pool-size=1 --jitless'

  private spawn(name: string, args: string[], env: Record<string, string> = {}): ChildProcess {
    const logFile = join(this.logDir, `${name}.log`)
    const log = createWriteStream(logFile, { flags: 'a' })
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    child.stdout?.pipe(log)
    child.stderr?.pipe(log)
    child.once('exit', () => {
      if (!this.stopping && !(child as { expectedExit?: boolean }).expectedExit)
        this.opts.onExit?.(name, logFile)
    })
    this.children.push({ name, child })
    return child
  }

  private async startListening(
    name: string,
    start: () => Promise<{ child: ChildProcess; port: number }>,
  ): Promise<number> {
    for (let attempt = 1; ; attempt++) {
      const { child, port } = await start()
      ;(child as { expectedExit?: boolean }).expectedExit = true
      const up = await waitFor(`the ${name}`, this.opts.stepTimeout, async () => {
        if (child.exitCode !== null || child.signalCode !== null) return false
        return (await portOpen(port)) ? true : undefined
      })
      if (up) {
        ;(child as { expectedExit?: boolean }).expectedExit = false
        return port
      }
      if (attempt >= 3) {
        const log = readFileSync(join(this.logDir, `${name}.log`), 'utf8').slice(-2000)
        throw new Error(`the ${name} exited before listening (3 attempts); its log ends with:\n${log}`)
      }
    }
  }

  /** Starts the verifier and the registrar and writes tenant.conf. */
  async startServices(): Promise<void> {
    const { dir } = this.opts
    // The development CA of the agents' IAK/IDevID certificates: in the store before the registrar loads it.
    this.deviceIdCa = await createTestCa('Keylime TS demo device identity CA')
    writeFileSync(join(dir, 'cert-store', 'device-identity-ca.pem'), this.deviceIdCa.certPem)
    // A port found free can be taken by another process before the service binds it: start again on new ports
    // when the service exits before listening, and show its log when it keeps failing.
    this.verifierPort = await this.startListening('verifier', async () => {
      const port = await freePort()
      const child = this.spawn(
        'verifier',
        [
          'verifier',
          '--config',
          this.emptyConf,
          '--port',
          String(port),
          '--tls-dir',
          'generate',
          '--quote-interval',
          String(this.opts.quoteInterval),
          '--retry-interval',
          '1',
          ...(this.opts.webhookUrl
            ? [
                '--webhook-url',
                this.opts.webhookUrl,
                '--enabled-revocation-notifications',
                "['agent', 'webhook']",
              ]
            : []),
        ],
        { ...this.opts.verifierEnv, KEYLIME_DIR: join(dir, 'verifier') },
      )
      return { child, port }
    })
    await this.startListening('registrar', async () => {
      const [port, tlsPort] = [await freePort(), await freePort()]
      this.registrarPort = port
      this.registrarTlsPort = tlsPort
      const child = this.spawn(
        'registrar',
        [
          'registrar',
          '--config',
          this.emptyConf,
          '--port',
          String(port),
          '--tls-port',
          String(tlsPort),
          '--tls-dir',
          this.cvCa,
        ],
        // IAK/IDevID certificates are checked against the tenant's store (upstream reads [tenant] tpm_cert_store)
        {
          KEYLIME_DIR: join(dir, 'registrar'),
          KEYLIME_REGISTRAR_TENANT_TPM_CERT_STORE: join(dir, 'cert-store'),
        },
      )
      return { child, port: tlsPort }
    })

    // EK trust store for development: swtpm's local CA (root and intermediate).
    for (const pem of swtpmLocalCaCertificates()) copyFileSync(pem, join(dir, 'cert-store', basename(pem)))
    writeFileSync(
      this.tenantConf,
      [
        '[tenant]',
        'verifier_ip = 127.0.0.1',
        `verifier_port = ${this.verifierPort}`,
        'registrar_ip = 127.0.0.1',
        `registrar_port = ${this.registrarTlsPort}`,
        `tls_dir = ${this.cvCa}`,
        `tpm_cert_store = ${join(dir, 'cert-store')}`,
        'retry_interval = 1',
        'exponential_backoff = False',
        'max_retries = 20',
        '',
      ].join('\n'),
    )
  }

  /**
   * Starts an agent process on a fresh swtpm; it registers and activates by itself. With `deviceIdentity` the swtpm
   * first gets an IAK/IDevID certified by the cluster's development CA, and the agent registers them too.
   */
  async startAgent(
    name = `agent${this.agents.length + 1}`,
    extraArgs: string[] = [],
    opts: { deviceIdentity?: boolean } = {},
  ): Promise<ClusterAgent> {
    const agent = await this.launchAgent('pull', name, extraArgs, opts)
    this.agents.push(agent)
    return agent
  }

  /**
   * Starts a push agent (`keylime push-agent`) on a fresh swtpm: it registers by itself, then attests to the
   * verifier (which must run with `mode = push`, e.g. `verifierEnv: { KEYLIME_VERIFIER_MODE: 'push' }`). It opens no
   * port, so this returns once the process runs; wait for its registration at the registrar.
   */
  async startPushAgent(
    name = `push-agent${this.pushAgents.length + 1}`,
    extraArgs: string[] = [],
  ): Promise<ClusterPushAgent> {
    const { port: _none, ...agent } = await this.launchAgent('push', name, extraArgs, {})
    this.pushAgents.push(agent)
    return agent
  }

  /**
   * An agent process of either model on its own swtpm, with its folder and IMA list. A pull agent listens on a
   * free port (started again on another one if it was taken); a push agent listens on none (port 0).
   */
  private async launchAgent(
    mode: 'pull' | 'push',
    name: string,
    extraArgs: string[],
    opts: { deviceIdentity?: boolean },
  ): Promise<ClusterAgent> {
    const agentDir = join(this.opts.dir, name)
    mkdirSync(join(agentDir, 'actions'), { recursive: true, mode: 0o700 })
    const swtpm = await startSwtpm({ dir: join(agentDir, 'swtpm') })
    if (opts.deviceIdentity) {
      if (!this.deviceIdCa) throw new Error('startServices() first: it creates the device identity CA')
      // iak-cert.crt and idevid-cert.crt in keylime_dir: the agent's default certificate paths
      await provisionDeviceIdentity({
        tpm: swtpm.transport,
        ca: this.deviceIdCa,
        template: 'H-1',
        outDir: agentDir,
      })
      extraArgs = ['--enable-iak-idevid', 'true', ...extraArgs]
    }
    const uuid = randomUUID()
    const imaList = join(agentDir, 'ascii_runtime_measurements')
    writeFileSync(imaList, '')
    const common = [
      '--config',
      this.emptyConf,
      '--uuid',
      uuid,
      '--tpm',
      swtpm.transport,
      '--registrar-port',
      String(this.registrarPort),
      '--keylime-dir',
      agentDir,
      '--ima-ml-path',
      imaList,
      '--measuredboot-ml-path',
      join(agentDir, 'no-boot-log'),
      // cluster processes run as the invoking user (root in CI) and there is no `keylime` account to switch to
      '--run-as',
      '',
    ]
    let child!: ChildProcess
    let port = 0
    const agentEnv = {
      NODE_OPTIONS: [process.env.NODE_OPTIONS, LocalCluster.AGENT_NODE_OPTIONS].filter(Boolean).join(' '),
    }
    if (mode === 'push') {
      child = this.spawn(
        name,
        [
          'push-agent',
          ...common,
          '--verifier-url',
          `https://127.0.0.1:${this.verifierPort}`,
          '--ca-certificate',
          join(this.cvCa, 'cacert.crt'),
          '--attestation-interval-seconds',
          String(this.opts.quoteInterval),
          '--exponential-backoff-initial-delay',
          '500',
          '--exponential-backoff-max-delay',
          String(Math.max(1000, this.opts.quoteInterval * 1000)),
          ...extraArgs,
        ],
        agentEnv,
      )
    } else {
      port = await this.startListening(name, async () => {
        const port = await freePort()
        child = this.spawn(
          name,
          [
            'agent',
            ...common,
            '--port',
            String(port),
            '--contact-port',
            String(port),
            '--trusted-client-ca',
            join(this.cvCa, 'cacert.crt'),
            '--revocation-actions-dir',
            join(agentDir, 'actions'),
            // root (CI) gets the real tmpfs for the secure directory; without root only a disk directory is possible
            '--secure-dir-allow-disk',
            String(process.geteuid?.() !== 0),
            ...extraArgs,
          ],
          agentEnv,
        )
        return { child, port }
      })
    }
    return {
      uuid,
      port,
      dir: agentDir,
      swtpm,
      imaList,
      process: child,
      stop: async () => {
        ;(child as { expectedExit?: boolean }).expectedExit = true
        await stopChild(child)
      },
    }
  }

  async stop(): Promise<void> {
    this.stopping = true
    await Promise.all(this.children.map(({ child }) => stopChild(child)))
    await Promise.all([...this.agents, ...this.pushAgents].map((a) => a.swtpm.stop()))
  }
}

function stopChild(child: ChildProcess): Promise<void> {
  return new Promise<void>((res) => {
    if (child.exitCode !== null || child.signalCode !== null) return res()
    child.once('exit', () => res())
    child.kill('SIGTERM')
    setTimeout(() => child.kill('SIGKILL'), 5000).unref()
  })
}
