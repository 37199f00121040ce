import type { Command } from 'commander'

export function registerCaCommands(program: Command): void {
  program
    .command('ca')
    .description('Certificate authority for Keylime TLS and payload certificates (arrives with its issue)')
}
