import type { Command } from 'commander'

export function registerVerifierCommand(program: Command): void {
  program
    .command('verifier')
    .description('Run the verifier (continuous attestation) (arrives with its issue)')
}
