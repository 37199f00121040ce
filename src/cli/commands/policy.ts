import type { Command } from 'commander'
import { registerMeasuredBootPolicyCommands } from './policy-measured-boot.ts'
import { registerRuntimePolicyCommands } from './policy-runtime.ts'

export function registerPolicyCommands(program: Command): void {
  const policy = program.command('policy').description('Create and sign runtime and measured-boot policies')
  const create = policy.command('create').description('Create a policy from local evidence')
  registerRuntimePolicyCommands(policy, create)
  registerMeasuredBootPolicyCommands(policy, create)
}
