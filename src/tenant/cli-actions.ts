/**
 * `keylime tenant <command>`: turns CLI options into TenantService calls and prints the results, human-readable by
 * default and as one JSON document with `--json`.
 */
import { OPERATIONAL_STATE_NAMES } from '../api/verifier/states.ts'
import { TENANT_COMMANDS, type TenantCliOptions } from './cli-options.ts'
import { EXIT_USAGE, TenantError } from './errors.ts'
import {
  checkPolicyOptions,
  mbPolicySource,
  runtimePolicySource,
  verificationKeyring,
} from './policy-sources.ts'
import { pythonJsonDumps, pythonRepr } from './python-format.ts'
import type { AddRequest, TenantService } from './tenant-service.ts'
import { createTenant, type TenantRuntime } from './wiring.ts'

export { TENANT_COMMANDS, type TenantCliOptions }

const AGENT_ID = /^[\w.-]+$/

/** Upstream's agent id when `-u` is not given (with a warning). */
export const DEFAULT_AGENT_UUID = 'd432fbb3-d2f1-4a97-9ef7-75bd81c00000'

function requireUuid(opts: TenantCliOptions): string {
  if (!opts.uuid) {
    process.stderr.write(`warning: Using default UUID ${DEFAULT_AGENT_UUID}\n`)
    return DEFAULT_AGENT_UUID
  }
  if (!AGENT_ID.test(opts.uuid))
    throw new TenantError(`agent id "${opts.uuid}" is not valid ([\\w.-]+)`, EXIT_USAGE)
  return opts.uuid
}

function print(runtime: TenantRuntime, human: string, data: unknown): void {
  if (runtime.json) process.stdout.write(`${JSON.stringify(data, null, 2)}\n`)
  else process.stdout.write(`${human}\n`)
}

/**
 * A verifier status as upstream's tenant prints it: `operational_state` by name, left out for `--push-model`
 * (a pull-mode field), and without our own `operational_state_name`.
 */
function upstreamStatus(status: Record<string, unknown>, opts: TenantCliOptions): Record<string, unknown> {
  const { operational_state_name: name, operational_state: code, ...rest } = status
  if (opts.pushModel) return rest
  return { operational_state: code === null ? null : (name ?? code), ...rest }
}

/**
 * What upstream's tenant prints for the policy show/list commands: `<what>: 200.` and the verifier's answer as a
 * Python dict (`{'code': 200, 'status': 'Success', 'results': {...}}`).
 */
function upstreamAnswer(what: string, results: unknown): string {
  return `${what}: 200.\n${pythonRepr({ code: 200, status: 'Success', results })}`
}

/** Upstream's `Agent Info from <peer>:` line followed by `{"<uuid>": {...}}` as Python prints it. */
function agentInfo(peer: string, uuid: string, record: Record<string, unknown>): string {
  return `Agent Info from ${peer}:\n${pythonJsonDumps({ [uuid]: record })}`
}

function registrarInfo(runtime: TenantRuntime, uuid: string, record: object): string {
  return agentInfo(runtime.peerNames.registrar, uuid, { ...record, operational_state: 'Registered' })
}

async function buildAddRequest(
  runtime: TenantRuntime,
  opts: TenantCliOptions,
  uuid: string,
): Promise<AddRequest> {
  const runtimePolicy = await runtimePolicySource(opts, runtime.sources)
  const mbPolicy = await mbPolicySource(opts, runtime.sources)
  const imaSignVerificationKeys = await verificationKeyring(opts, runtime.sources)
  const runtimePolicyName = opts.runtimePolicyName ?? opts.allowlistName
  const tpmPolicy = runtime.buildTpmPolicy(opts.tpmPolicy, {
    // a verification keyring needs the IMA PCR quoted too (upstream sets it in the mask)
    runtimePolicy:
      runtimePolicy !== undefined || runtimePolicyName !== undefined || imaSignVerificationKeys !== '',
    mbPolicy: mbPolicy !== undefined || opts.mbPolicyName !== undefined,
  })
  const payloadModes = [opts.file, opts.key, opts.cert].filter((x) => x !== undefined).length
  if (payloadModes > 1) throw new TenantError('use only one of -f, -k/-p and --cert', EXIT_USAGE)
  if (opts.key && !opts.payload) throw new TenantError('-k needs -p (the encrypted payload)', EXIT_USAGE)
  if (opts.pushModel && payloadModes > 0)
    throw new TenantError('push-model agents take no payload', EXIT_USAGE)
  const payload = await runtime.preparePayload(opts, uuid)
  return {
    uuid,
    ...(opts.targethost === undefined ? {} : { targetHost: opts.targethost }),
    ...(opts.targetport === undefined ? {} : { targetPort: opts.targetport }),
    ...(opts.cvTargethost === undefined ? {} : { cvTargetHost: opts.cvTargethost }),
    ...(opts.agentApiVersion === undefined ? {} : { agentApiVersion: opts.agentApiVersion }),
    tpmPolicy,
    ...(runtimePolicy
      ? { runtimePolicy: runtimePolicy.policyB64, runtimePolicyKey: runtimePolicy.keyB64 }
      : {}),
    ...(runtimePolicyName === undefined ? {} : { runtimePolicyName }),
    ...(imaSignVerificationKeys === '' ? {} : { imaSignVerificationKeys }),
    ...(mbPolicy === undefined ? {} : { mbPolicy }),
    ...(opts.mbPolicyName === undefined ? {} : { mbPolicyName: opts.mbPolicyName }),
    ...(payload === undefined ? {} : { payload }),
    verify: opts.verify === true,
    pushModel: opts.pushModel === true,
  }
}

/**
 * `update` deletes the agent at the verifier and adds it again, so whatever is not given again would be dropped:
 * an agent in Invalid Quote would come back without its policies and pass. The PCR policy is kept from the
 * verifier's record unless --tpm-policy replaces it; runtime and measured-boot policies cannot be read back from
 * the verifier, so an update of an agent that has one must name it again, or is refused.
 */
export function keepCurrentPolicies(
  uuid: string,
  current: Record<string, unknown>,
  opts: TenantCliOptions,
): TenantCliOptions {
  const missing: string[] = []
  const runtimeGiven =
    opts.runtimePolicy ||
    opts.runtimePolicyUrl ||
    opts.runtimePolicyName ||
    opts.allowlist ||
    opts.allowlistUrl ||
    opts.allowlistName
  if (Number(current.has_runtime_policy) === 1 && !runtimeGiven) {
    missing.push('its runtime policy (--runtime-policy FILE or --runtime-policy-name NAME)')
  }
  if (Number(current.has_mb_refstate) === 1 && !opts.mbPolicy && !opts.mbPolicyName) {
    missing.push('its measured-boot policy (--mb-policy FILE or --mb-policy-name NAME)')
  }
  if (missing.length > 0) {
    throw new TenantError(
      `update would drop the policies of agent ${uuid}: give ${missing.join(' and ')} again; to remove a policy, delete the agent and add it without one`,
      EXIT_USAGE,
    )
  }
  const tpmPolicy = typeof current.tpm_policy === 'string' ? current.tpm_policy : undefined
  return opts.tpmPolicy === undefined && tpmPolicy !== undefined ? { ...opts, tpmPolicy } : opts
}

function requireName(opts: TenantCliOptions, kind: 'runtime' | 'mb'): string {
  const name = kind === 'runtime' ? (opts.runtimePolicyName ?? opts.allowlistName) : opts.mbPolicyName
  if (!name)
    throw new TenantError(
      `this command needs --${kind === 'runtime' ? 'runtime' : 'mb'}-policy-name`,
      EXIT_USAGE,
    )
  return name
}

async function dispatch(
  service: TenantService,
  runtime: TenantRuntime,
  command: string,
  opts: TenantCliOptions,
) {
  const v = runtime.verifier
  switch (command) {
    case 'add':
    case 'update': {
      const uuid = requireUuid(opts)
      const given =
        command === 'update' ? keepCurrentPolicies(uuid, await service.cvstatus(uuid), opts) : opts
      const req = await buildAddRequest(runtime, given, uuid)
      const result =
        command === 'add' ? await service.add(req) : await service.update(req, opts.verifierCheck !== false)
      print(
        runtime,
        `agent ${uuid} ${command === 'add' ? 'added' : 'updated'}${result.verified ? ' and verified' : ''}`,
        {
          agent_id: uuid,
          ...result,
        },
      )
      return
    }
    case 'delete': {
      const uuid = requireUuid(opts)
      const outcome = await service.delete(uuid, opts.verifierCheck !== false)
      print(
        runtime,
        outcome === 'absent'
          ? `Agent ${uuid} is already absent from the CV`
          : `Agent ${uuid} deleted from the CV`,
        { agent_id: uuid, outcome },
      )
      return
    }
    case 'cvstatus': {
      const uuid = requireUuid(opts)
      const status = await service.cvstatus(uuid)
      print(runtime, agentInfo(runtime.peerNames.verifier, uuid, upstreamStatus(status, opts)), {
        [uuid]: status,
      })
      return
    }
    case 'regstatus': {
      const uuid = requireUuid(opts)
      const record = await service.regstatus(uuid)
      print(runtime, registrarInfo(runtime, uuid, record), { [uuid]: record })
      return
    }
    case 'status': {
      const uuid = requireUuid(opts)
      const both = await service.status(uuid)
      const human = [
        both.registrar
          ? registrarInfo(runtime, uuid, both.registrar)
          : `Agent ${uuid} does not exist on the registrar.`,
        both.verifier
          ? agentInfo(runtime.peerNames.verifier, uuid, upstreamStatus(both.verifier, opts))
          : `${runtime.peerNames.verifier} does not have agent ${uuid}.`,
      ].join('\n')
      print(runtime, human, { [uuid]: both })
      return
    }
    case 'cvlist': {
      const uuids = await v.listAgents(opts.cvid)
      // upstream prints the verifier's results: one-element lists of ids
      print(
        runtime,
        `Agent list from ${runtime.peerNames.verifier} retrieved: \n${pythonJsonDumps({ uuids: uuids.map((u) => [u]) })}`,
        { uuids },
      )
      return
    }
    case 'bulkinfo': {
      const info = await v.bulkInfo(opts.cvid)
      const named = Object.fromEntries(
        Object.entries(info).map(([id, s]) => [
          id,
          {
            ...s,
            operational_state:
              s.operational_state === null
                ? 'Not applicable (Push Mode)'
                : (OPERATIONAL_STATE_NAMES[s.operational_state] ?? s.operational_state),
          },
        ]),
      )
      print(runtime, `Bulk Agent Info:\n${pythonJsonDumps(named)}`, info)
      return
    }
    case 'reactivate': {
      const uuid = requireUuid(opts)
      await service.reactivate(uuid, opts.verifierCheck !== false)
      print(runtime, `agent ${uuid} reactivated`, { agent_id: uuid, reactivated: true })
      return
    }
    case 'reglist': {
      const uuids = await runtime.registrar.listAgents()
      print(
        runtime,
        `Agent list from ${runtime.peerNames.registrar} retrieved: \n${pythonJsonDumps({ uuids })}`,
        { uuids },
      )
      return
    }
    case 'regdelete': {
      const uuid = requireUuid(opts)
      await service.regdelete(uuid)
      print(runtime, `agent ${uuid} deleted from the registrar`, { agent_id: uuid, deleted: true })
      return
    }
    case 'addruntimepolicy':
    case 'updateruntimepolicy':
    case 'addallowlist': {
      const name = requireName(opts, 'runtime')
      const policy = await runtimePolicySource(opts, runtime.sources)
      if (!policy) throw new TenantError('this command needs --runtime-policy', EXIT_USAGE)
      await v.addRuntimePolicy(
        name,
        {
          runtime_policy: policy.policyB64,
          runtime_policy_key: policy.keyB64,
          tpm_policy: opts.tpmPolicy ?? '',
        },
        command === 'updateruntimepolicy',
      )
      print(runtime, `runtime policy ${name} stored`, { name, stored: true })
      return
    }
    case 'showruntimepolicy':
    case 'showallowlist': {
      const name = requireName(opts, 'runtime')
      const policy = await v.getRuntimePolicy(name)
      if (!policy) throw new TenantError(`runtime policy ${name} not found`)
      print(runtime, upstreamAnswer('Show allowlist command response', policy), policy)
      return
    }
    case 'deleteruntimepolicy':
    case 'deleteallowlist': {
      const name = requireName(opts, 'runtime')
      if (!(await v.deleteRuntimePolicy(name))) throw new TenantError(`runtime policy ${name} not found`)
      print(runtime, `runtime policy ${name} deleted`, { name, deleted: true })
      return
    }
    case 'listruntimepolicy': {
      const names = await v.listRuntimePolicies()
      print(runtime, upstreamAnswer('list command response', { 'runtimepolicy names': names }), {
        'runtimepolicy names': names,
      })
      return
    }
    case 'addmbpolicy':
    case 'updatembpolicy': {
      const name = requireName(opts, 'mb')
      const text = await mbPolicySource(opts, runtime.sources)
      if (text === undefined) throw new TenantError('this command needs --mb-policy', EXIT_USAGE)
      await v.addMbPolicy(name, text, command === 'updatembpolicy')
      print(runtime, `measured-boot policy ${name} stored`, { name, stored: true })
      return
    }
    case 'showmbpolicy': {
      const name = requireName(opts, 'mb')
      const policy = await v.getMbPolicy(name)
      if (!policy) throw new TenantError(`measured-boot policy ${name} not found`)
      print(runtime, upstreamAnswer('showmbpolicy command response', policy), policy)
      return
    }
    case 'deletembpolicy': {
      const name = requireName(opts, 'mb')
      if (!(await v.deleteMbPolicy(name))) throw new TenantError(`measured-boot policy ${name} not found`)
      print(runtime, `measured-boot policy ${name} deleted`, { name, deleted: true })
      return
    }
    case 'listmbpolicy': {
      const names = await v.listMbPolicies()
      print(runtime, upstreamAnswer('listmbpolicy command response', { 'mbpolicy names': names }), {
        'mbpolicy names': names,
      })
      return
    }
    default:
      throw new TenantError(
        `unknown tenant command "${command}" (one of: ${TENANT_COMMANDS.join(', ')})`,
        EXIT_USAGE,
      )
  }
}

export async function runTenantCommand(command: string, opts: TenantCliOptions): Promise<void> {
  if (!(TENANT_COMMANDS as readonly string[]).includes(command)) {
    throw new TenantError(
      `unknown tenant command "${command}" (one of: ${TENANT_COMMANDS.join(', ')})`,
      EXIT_USAGE,
    )
  }
  checkPolicyOptions(command, opts)
  const runtime = await createTenant(opts)
  try {
    await dispatch(runtime.service, runtime, command, opts)
  } finally {
    await runtime.close()
  }
}
