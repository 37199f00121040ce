import type { Command } from 'commander'

export function registerImaCommands(program: Command): void {
  program.command('ima').description('IMA measurement list tools (arrives with its issue)')
}
