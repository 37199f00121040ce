/**
 * `keylime tenant <command>`: turns CLI options into TenantService calls and prints the results, human-readable by
 * default and as one JSON document with `--json`.
 */
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { TENANT_COMMANDS, type TenantCliOptions } from './cli-options.ts'
import { EXIT_USAGE, TenantError } from './errors.ts'
import type { AddRequest, TenantService } from './tenant-service.ts'
import { createTenant, type TenantRuntime } from './wiring.ts'

export { TENANT_COMMANDS, type TenantCliOptions }

const AGENT_ID = /^[\w.-]+$/
/** How upstream's tenant shows the pull-loop state of a push agent (it has none). */
const PUSH_STATE = 'Not applicable (Push Mode)'

function requireUuid(opts: TenantCliOptions): string {
  if (!opts.uuid) throw new TenantError('this command needs -u/--uuid', EXIT_USAGE)
  if (!AGENT_ID.test(opts.uuid))
    throw new TenantError(`agent id "${opts.uuid}" is not valid ([\\w.-]+)`, EXIT_USAGE)
  return opts.uuid
}

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    throw new TenantError(`cannot read ${what} ${path}: ${(err as Error).message}`, EXIT_USAGE)
  }
}

/** Reads the runtime policy file, checks the optional checksum, and returns it b64 as the verifier expects. */
export function loadRuntimePolicy(opts: TenantCliOptions): { policyB64: string; keyB64: string } | undefined {
  if (!opts.runtimePolicy) {
    if (opts.runtimePolicyChecksum)
      throw new TenantError('--runtime-policy-checksum needs --runtime-policy', EXIT_USAGE)
    return undefined
  }
  let bytes: Buffer
  try {
    bytes = readFileSync(opts.runtimePolicy)
  } catch (err) {
    throw new TenantError(
      `cannot read runtime policy ${opts.runtimePolicy}: ${(err as Error).message}`,
      EXIT_USAGE,
    )
  }
  if (opts.runtimePolicyChecksum) {
    const actual = createHash('sha256').update(bytes).digest('hex')
    if (actual !== opts.runtimePolicyChecksum.toLowerCase()) {
      throw new TenantError(`runtime policy checksum mismatch: file has ${actual}`, EXIT_USAGE)
    }
  }
  try {
    JSON.parse(bytes.toString('utf8'))
  } catch {
    throw new TenantError(`runtime policy ${opts.runtimePolicy} is not JSON`, EXIT_USAGE)
  }
  const keyB64 = opts.runtimePolicySigKey
    ? Buffer.from(readText(opts.runtimePolicySigKey, 'runtime policy signing key')).toString('base64')
    : ''
  return { policyB64: bytes.toString('base64'), keyB64 }
}

function print(runtime: TenantRuntime, human: string, data: unknown): void {
  if (runtime.json) process.stdout.write(`${JSON.stringify(data, null, 2)}\n`)
  else process.stdout.write(`${human}\n`)
}

function table(record: object): string {
  return Object.entries(record)
    .map(([k, v]) => `  ${k}: ${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}`)
    .join('\n')
}

async function buildAddRequest(
  runtime: TenantRuntime,
  opts: TenantCliOptions,
  uuid: string,
): Promise<AddRequest> {
  const runtimePolicy = loadRuntimePolicy(opts)
  const mbPolicy = opts.mbPolicy ? readText(opts.mbPolicy, 'measured-boot policy') : undefined
  if (mbPolicy !== undefined) {
    try {
      JSON.parse(mbPolicy)
    } catch {
      throw new TenantError(`measured-boot policy ${opts.mbPolicy} is not JSON`, EXIT_USAGE)
    }
  }
  const tpmPolicy = runtime.buildTpmPolicy(opts.tpmPolicy, {
    runtimePolicy: runtimePolicy !== undefined || opts.runtimePolicyName !== undefined,
    mbPolicy: mbPolicy !== undefined || opts.mbPolicyName !== undefined,
  })
  const payloadModes = [opts.file, opts.key, opts.cert].filter((x) => x !== undefined).length
  if (payloadModes > 1) throw new TenantError('use only one of -f, -k/-p and --cert', EXIT_USAGE)
  if (opts.key && !opts.payload) throw new TenantError('-k needs -p (the encrypted payload)', EXIT_USAGE)
  // A push agent takes no payload; --cert still gives the verifier the revocation key (signed revocations).
  if (opts.pushModel && (opts.file !== undefined || opts.key !== undefined))
    throw new TenantError(
      'push-model agents take no payload (only --cert, for the revocation key)',
      EXIT_USAGE,
    )
  if (opts.pushModel && opts.verify)
    throw new TenantError('--verify needs a payload: not with --push-model', EXIT_USAGE)
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
    ...(opts.runtimePolicyName === undefined ? {} : { runtimePolicyName: opts.runtimePolicyName }),
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
  if (Number(current.has_runtime_policy) === 1 && !opts.runtimePolicy && !opts.runtimePolicyName) {
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
  const name = kind === 'runtime' ? opts.runtimePolicyName : opts.mbPolicyName
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
      const result = command === 'add' ? await service.add(req) : await service.update(req)
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
      const outcome = await service.delete(uuid)
      print(runtime, `agent ${uuid} deleted`, { agent_id: uuid, outcome })
      return
    }
    case 'cvstatus': {
      const uuid = requireUuid(opts)
      const status = await service.cvstatus(uuid)
      if (opts.pushModel) {
        // operational_state belongs to the pull loop: upstream leaves it out for push agents
        const { operational_state: _, operational_state_name: __, ...push } = status
        print(
          runtime,
          `agent ${uuid} at the verifier (push): ${String(push.attestation_status)}\n${table(push)}`,
          {
            [uuid]: push,
          },
        )
        return
      }
      print(runtime, `agent ${uuid} at the verifier: ${status.operational_state_name}\n${table(status)}`, {
        [uuid]: status,
      })
      return
    }
    case 'regstatus': {
      const uuid = requireUuid(opts)
      const record = await service.regstatus(uuid)
      print(runtime, `agent ${uuid} at the registrar:\n${table(record)}`, {
        [uuid]: record,
      })
      return
    }
    case 'status': {
      const uuid = requireUuid(opts)
      const both = await service.status(uuid)
      const human = [
        both.registrar
          ? `registrar: registered (regcount ${both.registrar.regcount})`
          : 'registrar: not registered',
        both.verifier
          ? `verifier: ${
              opts.pushModel || both.verifier.operational_state === null
                ? PUSH_STATE
                : String(both.verifier.operational_state)
            } ${String(both.verifier.attestation_status ?? '')}`
          : 'verifier: not enrolled',
      ].join('\n')
      print(runtime, human, { [uuid]: both })
      return
    }
    case 'cvlist': {
      const uuids = await v.listAgents(opts.cvid)
      print(runtime, uuids.join('\n') || '(no agents)', { uuids })
      return
    }
    case 'bulkinfo': {
      const info = Object.fromEntries(
        Object.entries(await v.bulkInfo(opts.cvid)).map(([id, s]) => [
          id,
          s.operational_state === null ? { ...s, operational_state: PUSH_STATE } : s,
        ]),
      )
      print(
        runtime,
        Object.entries(info)
          .map(([id, s]) => `${id}:\n${table(s)}`)
          .join('\n') || '(no agents)',
        info,
      )
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
      print(runtime, uuids.join('\n') || '(no agents)', { uuids })
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
      const policy = loadRuntimePolicy(opts)
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
      print(runtime, JSON.stringify(policy, null, 2), policy)
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
      print(runtime, names.join('\n') || '(no runtime policies)', { 'runtimepolicy names': names })
      return
    }
    case 'addmbpolicy':
    case 'updatembpolicy': {
      const name = requireName(opts, 'mb')
      if (!opts.mbPolicy) throw new TenantError('this command needs --mb-policy', EXIT_USAGE)
      const text = readText(opts.mbPolicy, 'measured-boot policy')
      await v.addMbPolicy(name, text, command === 'updatembpolicy')
      print(runtime, `measured-boot policy ${name} stored`, { name, stored: true })
      return
    }
    case 'showmbpolicy': {
      const name = requireName(opts, 'mb')
      const policy = await v.getMbPolicy(name)
      if (!policy) throw new TenantError(`measured-boot policy ${name} not found`)
      print(runtime, JSON.stringify(policy, null, 2), policy)
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
      print(runtime, names.join('\n') || '(no measured-boot policies)', { 'mbpolicy names': names })
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
  const runtime = await createTenant(opts)
  try {
    await dispatch(runtime.service, runtime, command, opts)
  } finally {
    await runtime.close()
  }
}
