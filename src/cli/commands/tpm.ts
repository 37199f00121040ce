import type { Command } from 'commander'

export function registerTpmCommands(program: Command): void {
  program.command('tpm').description('Talk to a TPM 2.0 (hardware or swtpm) (arrives with its issue)')
}
