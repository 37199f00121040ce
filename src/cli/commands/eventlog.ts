import type { Command } from 'commander'

export function registerEventlogCommand(program: Command): void {
  program
    .command('eventlog')
    .description('Parse and replay a UEFI/TCG boot event log (arrives with its issue)')
}
