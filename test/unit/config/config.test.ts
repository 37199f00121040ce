import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { ConfigError, parseIni, parseList } from '../../../src/config/loader.ts'
import { loadRegistrarConfig } from '../../../src/config/registrar.ts'
import { loadVerifierConfig } from '../../../src/config/verifier.ts'

let root: string
let usr: string
let etc: string
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'kl-config-'))
  usr = join(root, 'usr-etc')
  etc = join(root, 'etc')
  mkdirSync(join(usr, 'registrar.conf.d'), { recursive: true })
  mkdirSync(join(etc, 'registrar.conf.d'), { recursive: true })
})
afterEach(() => rmSync(root, { recursive: true, force: true }))

describe('INI layering (§1.1)', () => {
  it('uses schema defaults when no file exists', () => {
    const { config, files } = loadRegistrarConfig({ configDirs: [usr, etc], env: {} })
    expect(files).toEqual([])
    expect(config.port).toBe(8890)
    expect(config.tls_port).toBe(8891)
    expect(config.database_url).toBe('sqlite')
    expect(config.auto_migrate_db).toBe(true)
  })

  it('prefers /etc base over /usr/etc, then applies conf.d snippets sorted, then env, then flags', () => {
    writeFileSync(join(usr, 'registrar.conf'), '[registrar]\nport = 1111\nip = 10.0.0.1\n')
    writeFileSync(join(etc, 'registrar.conf'), '[registrar]\nport = 2222\ntls_port = 3333\n')
    writeFileSync(join(usr, 'registrar.conf.d', '20-b.conf'), '[registrar]\ntls_port = 4444\n')
    writeFileSync(
      join(etc, 'registrar.conf.d', '10-a.conf'),
      '[registrar]\ntls_port = 5555\ndatabase_url = "sqlite"\n',
    )
    const base = loadRegistrarConfig({ configDirs: [usr, etc], env: {} })
    expect(base.config.port).toBe(2222)
    expect(base.config.ip).toBe('127.0.0.1') // /usr/etc base not read when /etc has one
    expect(base.config.tls_port).toBe(5555) // /etc/conf.d after /usr/etc/conf.d
    const env = { KEYLIME_REGISTRAR_PORT: '7777', KEYLIME_REGISTRAR_TENANT_TPM_CERT_STORE: '/certs' }
    const withEnv = loadRegistrarConfig({ configDirs: [usr, etc], env })
    expect(withEnv.config.port).toBe(7777)
    expect(withEnv.config.tpm_cert_store).toBe('/certs')
    const withFlags = loadRegistrarConfig({ configDirs: [usr, etc], env, flags: { port: '9999' } })
    expect(withFlags.config.port).toBe(9999)
  })

  it("KEYLIME_TENANT_TPM_CERT_STORE names the registrar's store, as upstream; the registrar's own variable wins", () => {
    writeFileSync(
      join(etc, 'registrar.conf'),
      '[registrar]\nport = 2222\n[tenant]\ntpm_cert_store = /from-file\n',
    )
    const store = (env: Record<string, string>) =>
      loadRegistrarConfig({ configDirs: [usr, etc], env }).config.tpm_cert_store
    expect(store({})).toBe('/from-file')
    expect(store({ KEYLIME_TENANT_TPM_CERT_STORE: '/tenant-env' })).toBe('/tenant-env')
    expect(
      store({
        KEYLIME_TENANT_TPM_CERT_STORE: '/tenant-env',
        KEYLIME_REGISTRAR_TENANT_TPM_CERT_STORE: '/own',
      }),
    ).toBe('/own')
  })

  it('KEYLIME_REGISTRAR_CONFIG replaces the file set (no snippets)', () => {
    writeFileSync(join(etc, 'registrar.conf.d', '10-a.conf'), '[registrar]\ntls_port = 5555\n')
    const only = join(root, 'only.conf')
    writeFileSync(only, '[registrar]\nport = 1234\n')
    const { config, files } = loadRegistrarConfig({
      configDirs: [usr, etc],
      env: { KEYLIME_REGISTRAR_CONFIG: only },
    })
    expect(files).toEqual([only])
    expect(config.port).toBe(1234)
    expect(config.tls_port).toBe(8891)
  })

  it('reads another section through KEYLIME_<C>_<SECTION>_<OPTION>', () => {
    const { config } = loadVerifierConfig({
      configDirs: [usr, etc],
      env: { KEYLIME_VERIFIER_REVOCATIONS_WEBHOOK_URL: 'http://hook', KEYLIME_VERIFIER_MODE: 'push' },
    })
    expect(config.webhook_url).toBe('http://hook')
    expect(config.mode).toBe('push')
    expect(config.enabled_revocation_notifications).toEqual(['agent'])
  })

  it('names the option when a value does not parse', () => {
    const only = join(root, 'bad.conf')
    writeFileSync(only, '[registrar]\nport = eighty\n')
    expect(() => loadRegistrarConfig({ configFile: only, env: {} })).toThrow(
      /\[registrar\] port: expected an integer/,
    )
    writeFileSync(only, '[registrar]\nauto_migrate_db = maybe\n')
    expect(() => loadRegistrarConfig({ configFile: only, env: {} })).toThrow(ConfigError)
  })

  it('refuses a missing --config file and garbage lines', () => {
    expect(() => loadRegistrarConfig({ configFile: join(root, 'nope.conf'), env: {} })).toThrow(ConfigError)
    expect(() => parseIni('no section here = 1')).toThrow(ConfigError)
  })
})

describe('values', () => {
  it('parses Python-literal and comma lists', () => {
    expect(parseList("['sha512', 'sha384', \"sha256\"]", 'x')).toEqual(['sha512', 'sha384', 'sha256'])
    expect(parseList('a, b ,c', 'x')).toEqual(['a', 'b', 'c'])
    expect(parseList('[]', 'x')).toEqual([])
    expect(parseList('', 'x')).toEqual([])
    expect(() => parseList("['a'", 'x')).toThrow(ConfigError)
  })
  it('strips quotes and accepts every boolean spelling', () => {
    const only = join(root, 'b.conf')
    for (const [raw, want] of [
      ['yes', true],
      ['Off', false],
      ['"1"', true],
      ['0', false],
    ] as const) {
      writeFileSync(only, `[registrar]\nauto_migrate_db = ${raw}\nip = " 1.2.3.4 "\n`)
      const { config } = loadRegistrarConfig({ configFile: only, env: {} })
      expect(config.auto_migrate_db).toBe(want)
      expect(config.ip).toBe('1.2.3.4')
    }
  })
})
