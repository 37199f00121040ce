import type { Command } from 'commander'

export function registerTenantCommands(program: Command): void {
  program
    .command('tenant')
    .description('Operator CLI: enroll agents, manage policies (arrives with its issue)')
}
