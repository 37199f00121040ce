import type { Command } from 'commander'

export function registerRegistrarCommand(program: Command): void {
  program
    .command('registrar')
    .description('Run the registrar (agent enrollment and TPM identity) (arrives with its issue)')
}
