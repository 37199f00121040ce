/**
 * `keylime demo`: the whole system on one machine, as an operator would run it. swtpm stands in for the TPMs; the
 * verifier, registrar and two agents run as separate `keylime` processes with the certificates the verifier
 * generates (`tls_dir = generate`). Each agent serves a synthetic UEFI boot log that the demo has extended into its
 * TPM (as firmware would have); the tenant enrolls both agents with a PCR policy, a measured-boot reference state
 * generated from that log, a runtime policy and a certificate payload whose `autorun.sh` writes a marker and whose
 * `action_list` names a revocation action. Then the demo tampers twice: agent1 runs a program outside the runtime
 * policy, and agent2's boot loader "changes" (an extra PCR 4 measurement the boot log does not have); each time the
 * verifier fails the agent, a local webhook receives the signed revocation, and the other agent acts on it.
 */

import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { AgentState } from '../api/verifier/states.ts'
import { extendEventLogIntoTpm } from '../devtools/event-log-replay.ts'
import { waitFor } from '../devtools/local-cluster.ts'
import { syntheticEventLog } from '../devtools/synthetic-event-log.ts'
import { parseEventLog } from '../evidence/mb/index.ts'
import { runTenantCommand } from '../tenant/cli-actions.ts'
import { pcrExtend } from '../tpm/keylime-client.ts'
import { Tpm } from '../tpm/tpm.ts'
import type { DemoOptions, DemoStage } from './demo-stage.ts'
import { keylime, nextRevocation, runOnDemoStage, say, writePrograms } from './demo-stage.ts'

const POLICY_PCR = 15
const RUNTIME_POLICY = 'demo-runtime'
const MB_POLICY = 'demo-boot'
/** Number of records in a log (for the demo's narration). */
const parseEventCount = (bytes: Uint8Array) => parseEventLog(bytes).events.length

/** Payload for an agent: autorun.sh writes a marker; action_list names an action that records revocations. */
function writePayloadDir(dir: string, agentDir: string): { marker: string; revocationMarker: string } {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const marker = join(agentDir, 'payload-ran.txt')
  const revocationMarker = join(agentDir, 'revocation-action-ran.txt')
  writeFileSync(join(dir, 'autorun.sh'), `#!/bin/sh\necho "payload delivered at $(date)" > '${marker}'\n`, {
    mode: 0o700,
  })
  writeFileSync(join(dir, 'action_list'), 'demo_revocation_action.sh\n')
  // The action gets the revocation message as a JSON file; a real one would drop the failed node from a trust list.
  writeFileSync(
    join(dir, 'demo_revocation_action.sh'),
    `#!/bin/sh\ngrep -o '"agent_id": *"[^"]*"' "$1" > '${revocationMarker}'\n`,
    { mode: 0o700 },
  )
  return { marker, revocationMarker }
}

export function runDemo(opts: DemoOptions): Promise<number> {
  return runOnDemoStage(
    opts,
    {
      tempPrefix: 'keylime-demo-',
      intro: (dir) => `work directory ${dir} (logs in ${join(dir, 'logs')})`,
      tenantCaName: 'Keylime TS demo tenant CA',
      // upstream's default measured-boot engine is accept-all; `example` checks the log against the reference state
      verifierEnv: { KEYLIME_VERIFIER_MEASURED_BOOT_POLICY_NAME: 'example' },
      verifierLine: (cluster) =>
        `verifier https://127.0.0.1:${cluster.verifierPort} (generated CA and certificates in ${cluster.cvCa})`,
    },
    (stage) => pullScenario(opts, stage),
  )
}

/** Two pull agents: enrolled with PCR, measured-boot and runtime policies and a payload, then tampered twice. */
async function pullScenario(opts: DemoOptions, stage: DemoStage): Promise<string[]> {
  const { dir, tenantCa, cluster, webhook, tenantBase, tenant } = stage
  const bootLog = syntheticEventLog({ keys: await stage.secureBootKeys })
  const bootLogPath = (name: string) => join(dir, 'boot-logs', `${name}-binary_bios_measurements`)
  mkdirSync(join(dir, 'boot-logs'), { recursive: true, mode: 0o700 })
  for (const name of ['agent1', 'agent2']) writeFileSync(bootLogPath(name), bootLog.bytes)
  // One at a time: swtpm_setup signs EK certificates with a shared local CA that it locks.
  const web = await cluster.startAgent('agent1', ['--measuredboot-ml-path', bootLogPath('agent1')], {
    deviceIdentity: true,
  })
  const db = await cluster.startAgent('agent2', ['--measuredboot-ml-path', bootLogPath('agent2')])
  say(`agents started on two swtpm instances: ${web.uuid} (agent1) and ${db.uuid} (agent2)`)
  for (const agent of [web, db]) {
    await waitFor('the agents to register and activate', opts.stepTimeout, async () =>
      (await tenant.registrar.getAgent(agent.uuid)) ? true : undefined,
    )
  }
  say('both agents registered with the registrar (EK certificate, AK, credential activation)')
  const webRecord = (await tenant.registrar.getAgent(web.uuid)) as { iak_tpm?: string | null } | null
  if (webRecord?.iak_tpm) {
    say(
      'agent1 also registered its IAK and IDevID (TCG device identity, development CA); its AK is certified by the IAK',
    )
  }

  // Measured boot: what firmware, shim and grub would have measured before the agent ran. Quotes only start
  // after enrollment, so extending now is indistinguishable from a real boot.
  for (const agent of [web, db]) await extendEventLogIntoTpm(agent.swtpm.transport, bootLog.bytes)
  say(
    `measured boot: each agent serves a synthetic UEFI boot log (${parseEventCount(bootLog.bytes)} events, Secure Boot on, shim → grub → kernel ${bootLog.digests.kernel.slice(0, 12)}…), extended into its TPM's PCRs 0-9 and 14`,
  )

  // Runtime integrity: each agent "runs" two programs; the IMA emulator measures them into its IMA list and
  // PCR 10, as kernel IMA would. The runtime policy is generated from agent1's list.
  const programs = writePrograms(join(dir, 'programs'))
  for (const agent of [web, db]) {
    await keylime([
      'agent',
      'ima-emulate',
      '--tpm',
      agent.swtpm.transport,
      '--list',
      agent.imaList,
      ...programs,
    ])
  }
  const policyPath = join(dir, 'runtime-policy.json')
  await keylime(['policy', 'create', 'runtime', '-m', web.imaList, '-o', policyPath])
  say(`runtime policy generated from agent1's IMA list (${programs.length} programs + boot_aggregate)`)
  await runTenantCommand('addruntimepolicy', {
    ...tenantBase,
    runtimePolicyName: RUNTIME_POLICY,
    runtimePolicy: policyPath,
  })

  // Measured-boot reference state, generated from the boot log as an operator would from a known-good machine.
  const refstatePath = join(dir, 'mb-refstate.json')
  await keylime(['policy', 'create', 'measured-boot', '-e', bootLogPath('agent1'), '-o', refstatePath])
  await runTenantCommand('addmbpolicy', { ...tenantBase, mbPolicyName: MB_POLICY, mbPolicy: refstatePath })
  say(
    `measured-boot policy ${MB_POLICY} generated from agent1's boot log (Secure Boot keys, shim/grub/kernel digests, kernel command line)`,
  )

  const zeros = '0'.repeat(64)
  const markers = new Map<string, { marker: string; revocationMarker: string }>()
  for (const agent of [web, db]) {
    const payloadDir = join(dir, 'payloads', agent.uuid)
    markers.set(agent.uuid, writePayloadDir(payloadDir, agent.dir))
    say(
      `tenant add ${agent.uuid}: tpm_policy {"${POLICY_PCR}": [0…0]}, measured-boot policy ${MB_POLICY}, runtime policy ${RUNTIME_POLICY}, certificate payload with autorun.sh`,
    )
    await runTenantCommand('add', {
      ...tenantBase,
      uuid: agent.uuid,
      tpmPolicy: JSON.stringify({ [POLICY_PCR]: [zeros] }),
      runtimePolicyName: RUNTIME_POLICY,
      mbPolicyName: MB_POLICY,
      cert: tenantCa,
      include: payloadDir,
      verify: true,
    })
  }

  const status = (uuid: string) => tenant.service.cvstatus(uuid)
  let seen = 0
  await waitFor('three good attestations', opts.stepTimeout, async () => {
    const s = await status(web.uuid)
    if (s.operational_state === AgentState.INVALID_QUOTE)
      throw new Error(`agent1 failed attestation: ${s.last_event_id}`)
    const count = Number(s.attestation_count ?? 0)
    if (count > seen) {
      seen = count
      say(
        `agent1: attestation #${count} passed (${s.operational_state_name}: quote, PCR policy, measured boot, IMA list)`,
      )
    }
    return count >= 3 ? true : undefined
  })
  await waitFor('agent2 to attest', opts.stepTimeout, async () => {
    const s = await status(db.uuid)
    if (s.operational_state === AgentState.INVALID_QUOTE)
      throw new Error(`agent2 failed attestation: ${s.last_event_id}`)
    return Number(s.attestation_count ?? 0) >= 1 ? true : undefined
  })
  say(
    'measured boot passes on both agents: the boot log replays to the quoted PCRs 0-9 and 14, and matches the reference state',
  )
  const { marker } = markers.get(web.uuid) as { marker: string }
  await waitFor('the payload to run', opts.stepTimeout, () => (markerWritten(marker) ? true : undefined))
  say(`agent1: payload ran after the first good attestation: ${readFileSync(marker, 'utf8').trim()}`)

  // Tampering 1: agent1 runs a program that is not in the runtime policy.
  const intruder = join(web.dir, 'cryptominer.sh')
  writeFileSync(intruder, '#!/bin/sh\necho mining\n', { mode: 0o700 })
  say(`tampering 1: agent1 executes ${intruder}, which is not in the runtime policy`)
  await keylime(['agent', 'ima-emulate', '--tpm', web.swtpm.transport, '--list', web.imaList, intruder])
  const imaFailure = await waitFor(
    'the verifier to detect the unknown program',
    opts.stepTimeout,
    async () => {
      const s = await status(web.uuid)
      return s.operational_state === AgentState.INVALID_QUOTE ? s : undefined
    },
  )
  say(`verifier: agent1 ${imaFailure.operational_state_name}, event ${imaFailure.last_event_id}`)
  const first = await nextRevocation(webhook, 0, opts.stepTimeout)
  say(`webhook: signed revocation for ${first.agent_id} verified; context: ${first.context ?? '(none)'}`)
  const { revocationMarker } = markers.get(db.uuid) as { revocationMarker: string }
  await waitFor("agent2's revocation action", opts.stepTimeout, () =>
    markerWritten(revocationMarker) ? true : undefined,
  )
  say(`agent2: verified the revocation and ran its action: ${readFileSync(revocationMarker, 'utf8').trim()}`)

  // Tampering 2: agent2's boot loader changed. Its TPM gets a PCR 4 measurement (an EFI application's digest)
  // that the boot log it serves does not contain, so the log no longer replays to the quoted PCRs.
  say(
    "tampering 2: agent2's boot loader changed: its TPM's PCR 4 gets a measurement its boot log does not have",
  )
  const modifiedBootloader = createHash('sha256').update('a modified grubx64.efi').digest()
  const tpm = await Tpm.open(db.swtpm.transport)
  try {
    await pcrExtend(tpm, 4, {
      sha256: modifiedBootloader,
      sha1: createHash('sha1').update('a modified grubx64.efi').digest(),
    })
  } finally {
    await tpm.close()
  }
  const tamperedAt = Date.now()
  const bootFailure = await waitFor('the verifier to detect the boot change', opts.stepTimeout, async () => {
    const s = await status(db.uuid)
    return s.operational_state === AgentState.INVALID_QUOTE ? s : undefined
  })
  say(
    `verifier detected it after ${((Date.now() - tamperedAt) / 1000).toFixed(1)}s: agent2 ${bootFailure.operational_state_name}, event ${bootFailure.last_event_id}`,
  )
  const second = await nextRevocation(webhook, 1, opts.stepTimeout)
  say(`webhook: signed revocation for ${second.agent_id} verified; event ${second.event_id ?? '(none)'}`)

  say(
    'summary: enrolled, attested (PCRs + measured boot + IMA), payload delivered, both tamperings detected, revocations signed and acted on',
  )
  return [
    `npx keylime tenant -c cvstatus -u ${web.uuid} --config ${cluster.tenantConf}`,
    `npx keylime tenant -c reglist --config ${cluster.tenantConf}`,
    `npx keylime tenant -c reactivate -u ${web.uuid} --config ${cluster.tenantConf}`,
  ]
}

/** A marker file a script writes with `echo … > file`: the shell creates it before the text arrives. */
function markerWritten(path: string): boolean {
  return existsSync(path) && readFileSync(path, 'utf8').endsWith('\n')
}
