import type { Command } from 'commander'
import { loadVerifierConfig, type verifierSchema } from '../../config/verifier.ts'
import { registerServiceCommand } from './service.ts'

const FLAG_KEYS = [
  'uuid',
  'ip',
  'port',
  'tls_dir',
  'database_url',
  'quote_interval',
  'retry_interval',
  'max_retries',
  'request_timeout',
  'enable_agent_mtls',
  'webhook_url',
  'enabled_revocation_notifications',
  'max_concurrency',
  'lease_seconds',
] as const satisfies readonly (keyof typeof verifierSchema)[]

export function registerVerifierCommand(program: Command): void {
  registerServiceCommand(program, {
    name: 'verifier',
    description:
      'Run the verifier (pull mode): HTTPS API on [verifier] ip:port and continuous attestation of enrolled agents',
    flagKeys: FLAG_KEYS,
    loadConfig: loadVerifierConfig,
    start: async (config, log) => (await import('../../verifier/server.ts')).startVerifier(config, log),
  })
}
