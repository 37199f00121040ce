/** `ca.conf` `[ca]` (keylime-config-and-cli.md §2.4). */
import type { LoadOptions } from './loader.ts'
import { type ConfigOf, type Flags, opt } from './schema.ts'
import { loadCheckedIniConfig } from './unimplemented.ts'

export const caSchema = {
  password: opt.string('default'),
  cert_country: opt.string('US'),
  cert_ca_name: opt.string('Keylime Certificate Authority'),
  cert_state: opt.string('MA'),
  cert_locality: opt.string('Lexington'),
  cert_organization: opt.string('Keylime'),
  cert_org_unit: opt.string('53'),
  cert_ca_lifetime: opt.int(3650),
  cert_lifetime: opt.int(365),
  cert_bits: opt.int(2048),
  cert_crl_dist: opt.string('http://localhost:38080/crl'),
}
export type CaConfig = ConfigOf<typeof caSchema>

export const loadCaConfig = (opts: LoadOptions & { flags?: Flags<typeof caSchema> } = {}) =>
  loadCheckedIniConfig('ca', caSchema, opts)
