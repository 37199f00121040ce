import { KeylimeError } from '../common/errors.ts'

/**
 * A tenant operation that could not be completed. `exitCode` is what the CLI exits with, so scripts can tell
 * the cases apart: 1 operation refused or failed, 2 bad usage, 3 the agent failed its identity or EK check,
 * 4 a peer (registrar, verifier, agent) was unreachable or answered an error.
 */
export class TenantError extends KeylimeError {
  readonly exitCode: number

  constructor(message: string, exitCode = 1, options?: { cause?: unknown }) {
    super('ERR_TENANT', message, options)
    this.exitCode = exitCode
  }
}

export const EXIT_FAILED = 1
export const EXIT_USAGE = 2
export const EXIT_UNTRUSTED = 3
export const EXIT_PEER = 4
