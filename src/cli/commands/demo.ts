import type { Command } from 'commander'

export function registerDemoCommand(program: Command): void {
  program.command('demo').description('Run a local end-to-end demo with swtpm (arrives with its issue)')
}
