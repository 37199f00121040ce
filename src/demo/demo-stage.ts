/**
 * What `keylime demo` and `keylime demo --push` share: the work directory, the tenant CA, the revocation webhook,
 * the local cluster (verifier and registrar processes), the tenant, narration and clean-up on exit or Ctrl-C. Each
 * demo passes its scenario, which enrolls, attests and tampers on the stage set here.
 */
import { execFile } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { CliError, EXIT } from '../cli/errors.ts'
import { createCa } from '../crypto/ca.ts'
import type { RevocationMessage } from '../crypto/revocation.ts'
import { LocalCluster, waitFor } from '../devtools/local-cluster.ts'
import { type RevocationWebhook, startRevocationWebhook } from '../devtools/revocation-webhook.ts'
import { freePort, swtpmInstalled } from '../devtools/swtpm.ts'
import { createSecureBootKeys, type SecureBootKeys } from '../devtools/synthetic-event-log.ts'
import type { TenantCliOptions } from '../tenant/cli-actions.ts'
import { createTenant, type TenantRuntime } from '../tenant/wiring.ts'

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

/** How one demo sets the stage: the parts that differ between the pull and the push demo. */
export interface DemoSetup {
  /** Prefix of the temporary work directory. */
  tempPrefix: string
  /** First line of narration, given the work directory. */
  intro(dir: string): string
  /** Common name of the tenant CA that signs the payload certificates and the revocation key. */
  tenantCaName: string
  /** `KEYLIME_VERIFIER_*` settings of the verifier process. */
  verifierEnv: Record<string, string>
  /** Narration line for the verifier once it listens. */
  verifierLine(cluster: LocalCluster): string
}

/** Everything a scenario runs against; the stage stops and removes it afterwards. */
export interface DemoStage {
  dir: string
  /** Tenant-side CA folder (agent certificates and the RevocationNotifier key and certificate). */
  tenantCa: string
  cluster: LocalCluster
  webhook: RevocationWebhook
  tenantBase: TenantCliOptions
  tenant: TenantRuntime
  /** Secure Boot keys of the synthetic boot log, generated while the services start. */
  secureBootKeys: Promise<SecureBootKeys>
}

const BIN = resolve(fileURLToPath(new URL('../../bin/keylime.js', import.meta.url)))
const START = Date.now()

/** A line of narration, stamped with the seconds since the demo started. */
export function say(line: string): void {
  const t = ((Date.now() - START) / 1000).toFixed(1).padStart(5)
  process.stdout.write(`[${t}s] ${line}\n`)
}

/** Runs a `keylime` subcommand as a separate process (as an operator would); rejects with its output on failure. */
export function keylime(args: string[]): Promise<string> {
  return new Promise((res, rej) => {
    execFile(process.execPath, [BIN, ...args], { timeout: 120_000 }, (err, stdout, stderr) =>
      err
        ? rej(new Error(`keylime ${args.slice(0, 3).join(' ')} failed: ${stderr || err.message}`))
        : res(stdout),
    )
  })
}

/** Two small "programs" the agents run; their digests go into the runtime policy. Returns their paths. */
export function writePrograms(dir: string): [backup: string, healthcheck: string] {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const write = (name: string, text: string) => {
    const path = join(dir, name)
    writeFileSync(path, text, { mode: 0o700 })
    return path
  }
  return [
    write('backup.sh', '#!/bin/sh\ntar czf /tmp/backup.tgz /etc\n'),
    write('healthcheck.sh', '#!/bin/sh\nexit 0\n'),
  ]
}

/** The index-th revocation the webhook received, once it arrives; fails when its signature did not verify. */
export async function nextRevocation(
  webhook: RevocationWebhook,
  index: number,
  timeoutS: number,
): Promise<RevocationMessage> {
  const got = await waitFor('a revocation at the webhook', timeoutS, () => webhook.received[index])
  if (!got.message) throw new Error(`webhook got a revocation it could not verify: ${got.error}`)
  return got.message
}

/**
 * Sets the stage, runs the scenario on it and tears it down; the exit code of the demo. The scenario returns the
 * tenant commands to suggest when `--keep` leaves everything running.
 */
export async function runOnDemoStage(
  opts: DemoOptions,
  setup: DemoSetup,
  scenario: (stage: DemoStage) => Promise<string[]>,
): Promise<number> {
  if (!swtpmInstalled()) {
    process.stderr.write(
      'keylime demo needs swtpm: install it with `sudo apt-get install -y swtpm swtpm-tools tpm2-tools`\n',
    )
    return 1
  }
  if (opts.dir !== undefined && existsSync(opts.dir) && readdirSync(opts.dir).length > 0) {
    throw new CliError(
      `--dir ${opts.dir} is not empty: the CA and agents of an earlier run would clash`,
      EXIT.usage,
      'give a new or empty folder, or remove that one',
    )
  }
  // A folder of its own is the operator's to keep; a temporary one (private keys inside) goes unless --keep.
  const temporary = opts.dir === undefined
  const dir = opts.dir ? resolve(opts.dir) : mkdtempSync(join(tmpdir(), setup.tempPrefix))
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  say(setup.intro(dir))
  let webhook: RevocationWebhook | undefined
  let cluster: LocalCluster | undefined
  let tenant: TenantRuntime | undefined
  let cleaned = false
  const cleanUp = async () => {
    if (cleaned) return
    cleaned = true
    await tenant?.close()
    await cluster?.stop()
    await webhook?.close()
    if (temporary && !opts.keep) rmSync(dir, { recursive: true, force: true })
  }
  // Ctrl-C in the middle of the run stops the processes and removes the temporary folder too.
  const interrupted = () => {
    say('interrupted: stopping')
    cleanUp().finally(() => process.exit(130))
  }
  if (!opts.keep) process.once('SIGINT', interrupted)
  try {
    const tenantCa = join(dir, 'tenant-ca')
    await createCa(tenantCa, { commonName: setup.tenantCaName })
    const webhookPort = await freePort()
    webhook = startRevocationWebhook(webhookPort, () =>
      readFileSync(join(tenantCa, 'RevocationNotifier-cert.crt'), 'utf8'),
    )
    // The keys of the boot log the agents serve: generated while the services start.
    const secureBootKeys = createSecureBootKeys()
    // A rejection before the scenario awaits it is reported there, not as an unhandled rejection.
    secureBootKeys.catch(() => {})
    cluster = new LocalCluster({
      dir,
      quoteInterval: opts.quoteInterval,
      stepTimeout: opts.stepTimeout,
      webhookUrl: `http://127.0.0.1:${webhookPort}/revocation`,
      verifierEnv: setup.verifierEnv,
      onExit: (name, log) => say(`${name} exited unexpectedly; see ${log}`),
    })
    await cluster.startServices()
    say(setup.verifierLine(cluster))
    say(
      `registrar http://127.0.0.1:${cluster.registrarPort} and https://127.0.0.1:${cluster.registrarTlsPort}`,
    )
    const tenantBase: TenantCliOptions = { config: cluster.tenantConf }
    tenant = await createTenant(tenantBase)
    const keepHints = await scenario({ dir, tenantCa, cluster, webhook, tenantBase, tenant, secureBootKeys })
    if (opts.keep) {
      process.stdout.write(
        [
          '',
          'Everything is still running (Ctrl-C to stop). Try the tenant:',
          ...keepHints.map((command) => `  ${command}`),
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
    if (temporary) say('rerun with --dir DIR to keep the logs and files of the run')
    return 1
  } finally {
    process.removeListener('SIGINT', interrupted)
    await cleanUp()
  }
}
