/**
 * `keylime demo`: the whole system on one machine, as an operator would run it. swtpm stands in for the TPM; the
 * verifier, registrar and agent run as separate `keylime` processes with the certificates the verifier generates
 * (`tls_dir = generate`); the tenant enrolls the agent with a PCR policy and a certificate payload whose
 * `autorun.sh` writes a marker; then the demo tampers with a policy PCR in the TPM and shows the verifier catch it
 * and send a signed revocation to a local webhook.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import {
  copyFileSync,
  createWriteStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  writeFileSync,
} from 'node:fs'
import { createServer, type Server } from 'node:http'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { basename, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createCa } from '../crypto/ca.ts'
import { type RevocationMessage, verifyRevocation } from '../crypto/revocation.ts'
import {
  freePort,
  type SwtpmInstance,
  startSwtpm,
  swtpmInstalled,
  swtpmLocalCaCertificates,
} from '../devtools/swtpm.ts'
import { runTenantCommand, type TenantCliOptions } from '../tenant/cli-actions.ts'
import { createTenant } from '../tenant/wiring.ts'
import { pcrExtend } from '../tpm/keylime-client.ts'
import { Tpm } from '../tpm/tpm.ts'

export interface DemoOptions {
  /** Leave everything running at the end and print how to use the tenant against it. */
  keep: boolean
  /** Work directory (default: a new temporary directory). */
  dir?: string
  /** Seconds between quotes. */
  quoteInterval: number
  /** Give up on any step after this many seconds. */
  stepTimeout: number
}

const BIN = resolve(fileURLToPath(new URL('../../bin/keylime.js', import.meta.url)))
const POLICY_PCR = 15
const START = Date.now()

function say(line: string): void {
  const t = ((Date.now() - START) / 1000).toFixed(1).padStart(5)
  process.stdout.write(`[${t}s] ${line}\n`)
}

async function waitFor<T>(
  what: string,
  timeoutS: number,
  probe: () => Promise<T | undefined> | T | undefined,
) {
  const deadline = Date.now() + timeoutS * 1000
  for (;;) {
    const value = await probe()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutS}s waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 200))
  }
}

const portOpen = (port: number) =>
  new Promise<true | undefined>((res) => {
    const s = connect({ host: '127.0.0.1', port })
    s.once('connect', () => {
      s.destroy()
      res(true)
    })
    s.once('error', () => res(undefined))
  })

class Services {
  private readonly children: { name: string; child: ChildProcess }[] = []
  constructor(private readonly logDir: string) {}

  start(name: string, args: string[], env: Record<string, string>): ChildProcess {
    const log = createWriteStream(join(this.logDir, `${name}.log`))
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    child.stdout?.pipe(log)
    child.stderr?.pipe(log)
    child.once('exit', (code, signal) => {
      if (!this.stopping) say(`${name} exited (${signal ?? code}); see ${join(this.logDir, `${name}.log`)}`)
    })
    this.children.push({ name, child })
    return child
  }

  stopping = false
  async stopAll(): Promise<void> {
    this.stopping = true
    await Promise.all(
      this.children.map(
        ({ child }) =>
          new Promise<void>((res) => {
            if (child.exitCode !== null || child.signalCode !== null) return res()
            child.once('exit', () => res())
            child.kill('SIGTERM')
            setTimeout(() => child.kill('SIGKILL'), 5000).unref()
          }),
      ),
    )
  }
}

/** Local webhook that receives revocation notifications and checks their signature with the notifier cert. */
function startWebhook(port: number, notifierCertPath: string) {
  const received: { message: RevocationMessage | null; error?: string }[] = []
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      try {
        const wire = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown
        received.push({ message: verifyRevocation(wire, readFileSync(notifierCertPath, 'utf8')) })
      } catch (err) {
        received.push({ message: null, error: (err as Error).message })
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}')
    })
  })
  server.listen(port, '127.0.0.1')
  return { received, close: () => new Promise<void>((r) => server.close(() => r())) }
}

export async function runDemo(opts: DemoOptions): Promise<number> {
  if (!swtpmInstalled()) {
    process.stderr.write(
      'keylime demo needs swtpm: install it with `sudo apt-get install -y swtpm swtpm-tools tpm2-tools`\n',
    )
    return 1
  }
  const dir = opts.dir ? resolve(opts.dir) : mkdtempSync(join(tmpdir(), 'keylime-demo-'))
  for (const sub of ['verifier', 'registrar', 'agent', 'tenant', 'logs', 'swtpm', 'cert-store', 'payload']) {
    mkdirSync(join(dir, sub), { recursive: true, mode: 0o700 })
  }
  say(`work directory ${dir} (logs in ${join(dir, 'logs')})`)
  const services = new Services(join(dir, 'logs'))
  let swtpm: SwtpmInstance | undefined
  let webhook: ReturnType<typeof startWebhook> | undefined
  let closeTenant: (() => Promise<void>) | undefined
  const uuid = randomUUID()
  const emptyConf = join(dir, 'empty.conf')
  writeFileSync(emptyConf, '')
  try {
    swtpm = await startSwtpm({ dir: join(dir, 'swtpm') })
    say(`swtpm running (${swtpm.transport}) with an EK certificate from swtpm's local CA`)

    const [verifierPort, registrarPort, registrarTlsPort, agentPort, webhookPort] = await Promise.all(
      [0, 1, 2, 3, 4].map(() => freePort()),
    )
    const cvCa = join(dir, 'verifier', 'cv_ca')

    // Tenant-side CA for the payload package (agent certificate + RevocationNotifier key/cert).
    const tenantCa = join(dir, 'tenant', 'ca')
    await createCa(tenantCa, { commonName: 'Keylime TS demo tenant CA' })
    webhook = startWebhook(webhookPort as number, join(tenantCa, 'RevocationNotifier-cert.crt'))

    services.start(
      'verifier',
      [
        'verifier',
        '--config',
        emptyConf,
        '--port',
        String(verifierPort),
        '--tls-dir',
        'generate',
        '--quote-interval',
        String(opts.quoteInterval),
        '--webhook-url',
        `http://127.0.0.1:${webhookPort}/revocation`,
        '--enabled-revocation-notifications',
        "['agent', 'webhook']",
      ],
      { KEYLIME_DIR: join(dir, 'verifier') },
    )
    await waitFor('the verifier', opts.stepTimeout, () => portOpen(verifierPort as number))
    say(`verifier listening on https://127.0.0.1:${verifierPort} (generated CA and certificates in ${cvCa})`)

    services.start(
      'registrar',
      [
        'registrar',
        '--config',
        emptyConf,
        '--port',
        String(registrarPort),
        '--tls-port',
        String(registrarTlsPort),
        '--tls-dir',
        cvCa,
      ],
      { KEYLIME_DIR: join(dir, 'registrar') },
    )
    await waitFor('the registrar', opts.stepTimeout, () => portOpen(registrarTlsPort as number))
    say(`registrar listening on http://127.0.0.1:${registrarPort} and https://127.0.0.1:${registrarTlsPort}`)

    const imaList = join(dir, 'agent', 'ascii_runtime_measurements')
    writeFileSync(imaList, '')
    services.start(
      'agent',
      [
        'agent',
        '--config',
        emptyConf,
        '--uuid',
        uuid,
        '--tpm',
        swtpm.transport,
        '--port',
        String(agentPort),
        '--contact-port',
        String(agentPort),
        '--registrar-port',
        String(registrarPort),
        '--keylime-dir',
        join(dir, 'agent'),
        '--trusted-client-ca',
        join(cvCa, 'cacert.crt'),
        '--ima-ml-path',
        imaList,
        '--measuredboot-ml-path',
        join(dir, 'agent', 'no-boot-log'),
        '--revocation-actions-dir',
        join(dir, 'agent', 'actions'),
      ],
      {},
    )

    // Tenant configuration: the verifier's generated client certificate and the swtpm local CA as EK trust store.
    for (const pem of swtpmLocalCaCertificates()) copyFileSync(pem, join(dir, 'cert-store', basename(pem)))
    const tenantConf = join(dir, 'tenant', 'tenant.conf')
    writeFileSync(
      tenantConf,
      [
        '[tenant]',
        'verifier_ip = 127.0.0.1',
        `verifier_port = ${verifierPort}`,
        'registrar_ip = 127.0.0.1',
        `registrar_port = ${registrarTlsPort}`,
        `tls_dir = ${cvCa}`,
        `tpm_cert_store = ${join(dir, 'cert-store')}`,
        "accept_tpm_signing_algs = ['ecschnorr', 'rsassa']",
        'retry_interval = 1',
        'max_retries = 10',
        '',
      ].join('\n'),
    )
    const tenantBase: TenantCliOptions = { config: tenantConf, uuid }
    const tenantRuntime = await createTenant(tenantBase)
    closeTenant = () => tenantRuntime.close()

    await waitFor('the agent to register and activate', opts.stepTimeout, async () =>
      (await tenantRuntime.registrar.getAgent(uuid)) ? true : undefined,
    )
    say(`agent ${uuid} registered with the registrar (EK, AK, credential activation)`)

    const payloadDir = join(dir, 'payload')
    const marker = join(dir, 'agent', 'payload-ran.txt')
    writeFileSync(
      join(payloadDir, 'autorun.sh'),
      `#!/bin/sh\necho "payload delivered to $(hostname) at $(date)" > '${marker}'\n`,
      {
        mode: 0o700,
      },
    )
    const zeros = '0'.repeat(64)
    say(`tenant: enrolling the agent with tpm_policy {"${POLICY_PCR}": [0…0]} and a certificate payload`)
    await runTenantCommand('add', {
      ...tenantBase,
      tpmPolicy: JSON.stringify({ [POLICY_PCR]: [zeros] }),
      cert: tenantCa,
      include: payloadDir,
      verify: true,
    })
    say('tenant: agent enrolled; the agent proved it derived the payload key K (--verify)')

    const status = () => tenantRuntime.service.cvstatus(uuid)

    let seen = 0
    await waitFor('three good attestations', opts.stepTimeout, async () => {
      const s = await status()
      const count = Number(s.attestation_count ?? 0)
      if (count > seen) {
        seen = count
        say(`attestation #${count} passed (state ${s.operational_state})`)
      }
      return count >= 3 ? true : undefined
    })
    await waitFor('the payload to run', opts.stepTimeout, () => (existsSync(marker) ? true : undefined))
    say(`payload ran on the agent after the first good attestation: ${readFileSync(marker, 'utf8').trim()}`)

    say(`tampering: extending PCR ${POLICY_PCR} in the TPM (as a modified boot component would)`)
    const tpm = await Tpm.open(swtpm.transport)
    try {
      await pcrExtend(tpm, POLICY_PCR, { sha256: Buffer.alloc(32, 0xee), sha1: Buffer.alloc(20, 0xee) })
    } finally {
      await tpm.close()
    }
    const tamperedAt = Date.now()
    const failed = await waitFor('the verifier to detect the tampering', opts.stepTimeout, async () => {
      const s = await status()
      return s.operational_state === 9 ? s : undefined
    })
    say(
      `verifier detected it after ${((Date.now() - tamperedAt) / 1000).toFixed(1)}s: state Invalid Quote, event ${failed.last_event_id}`,
    )
    const revocation = await waitFor('the revocation notification', opts.stepTimeout, () =>
      webhook && webhook.received.length > 0 ? webhook.received[0] : undefined,
    )
    if (!revocation?.message)
      throw new Error(`webhook got a revocation it could not verify: ${revocation?.error}`)
    say(
      `webhook received a revocation signed by the RevocationNotifier key (signature verified): type ${revocation.message.type}, agent ${revocation.message.agent_id}`,
    )

    say('summary: enrolled, attested, payload delivered, tampering detected and revoked')
    if (opts.keep) {
      process.stdout.write(
        [
          '',
          'Everything is still running (Ctrl-C to stop). Try the tenant:',
          `  npx keylime tenant -c cvstatus -u ${uuid} --config ${tenantConf}`,
          `  npx keylime tenant -c reglist --config ${tenantConf}`,
          `  npx keylime tenant -c reactivate -u ${uuid} --config ${tenantConf}`,
          '',
        ].join('\n'),
      )
      await new Promise<void>((r) => {
        process.once('SIGINT', () => r())
        process.once('SIGTERM', () => r())
      })
    }
    return 0
  } catch (err) {
    say(`demo failed: ${(err as Error).message}`)
    return 1
  } finally {
    await closeTenant?.()
    await services.stopAll()
    await webhook?.close()
    await swtpm?.stop()
  }
}
