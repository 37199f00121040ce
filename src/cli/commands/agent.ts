import type { Command } from 'commander'

export function registerAgentCommands(program: Command): void {
  program
    .command('agent')
    .description('Run the pull-mode Keylime agent on an attested machine (arrives with its issue)')
}
