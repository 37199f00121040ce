import type { Command } from 'commander'
import { loadRegistrarConfig, type registrarSchema } from '../../config/registrar.ts'
import { registerServiceCommand } from './service.ts'

const FLAG_KEYS = [
  'ip',
  'port',
  'tls_port',
  'database_url',
  'tls_dir',
  'server_cert',
  'server_key',
  'trusted_client_ca',
  'tpm_identity',
  'malformed_cert_action',
] as const satisfies readonly (keyof typeof registrarSchema)[]

export function registerRegistrarCommand(program: Command): void {
  registerServiceCommand(program, {
    name: 'registrar',
    description:
      'Run the registrar: agent registration/activation on HTTP [registrar] ip:port, same API plus admin routes on HTTPS tls_port',
    flagKeys: FLAG_KEYS,
    loadConfig: loadRegistrarConfig,
    start: async (config, log) => (await import('../../registrar/server.ts')).startRegistrar(config, log),
  })
}
