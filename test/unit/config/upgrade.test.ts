/**
 * Upstream configuration files: the single keylime.conf of Keylime 6.x (version 1.0) and per-component files of an
 * older 2.x version are brought to today's options by `keylime config upgrade`, and options Keylime TS does not read
 * are reported by name (at load and by the upgrade).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { loadRegistrarConfig, registrarSchema } from '../../../src/config/registrar.ts'
import { upgradeConfigText } from '../../../src/config/upgrade.ts'
import { loadVerifierConfig } from '../../../src/config/verifier.ts'
import { runKeylime } from '../../helpers/cli.ts'

/** A Keylime 6.x keylime.conf in the layout of that release (one file, old option names). */
const KEYLIME_CONF_1_0 = `[general]
receive_revocation_ip = 127.0.0.1

[cloud_verifier]
cloudverifier_id = east-1
cloudverifier_ip = 0.0.0.0
cloudverifier_port = 9881
tls_dir = generate
agent_mtls_cert_enabled = True
agent_mtls_cert = CV
database_url =
quote_interval = 5
revocation_notifiers = agent,webhook
webhook_url = https://hooks.example/keylime
tomtou_errors = True
severity_labels = ["info", "notice", "warning", "error", "critical", "alert", "emergency"]
multiprocessing_pool_num_workers = 4
database_drivername = sqlite

[registrar]
registrar_ip = 0.0.0.0
registrar_port = 9890
registrar_tls_port = 9891
database_url = postgresql://keylime@db/registrar
prov_db_filename = provider_reg_data.sqlite
`

let dir: string
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kl-config-upgrade-'))
})
afterEach(() => rmSync(dir, { recursive: true, force: true }))

describe('keylime config upgrade', () => {
  it('renames and moves the options of a 6.x keylime.conf; the result loads with the same values', async () => {
    const input = join(dir, 'keylime.conf')
    writeFileSync(input, KEYLIME_CONF_1_0)
    const output = join(dir, 'verifier.conf')
    const r = await runKeylime(['config', 'upgrade', 'verifier', '--input', input, '--output', output])
    expect(r.code, r.err).toBe(0)
    expect(r.err).toContain(`${input}: version 1.0 → 2.6`)
    expect(r.err).toContain('renamed: [cloud_verifier] cloudverifier_port → [verifier] port')
    expect(r.err).toContain(
      'renamed: [cloud_verifier] revocation_notifiers → [revocations] enabled_revocation_notifications',
    )
    expect(r.err).toContain('not read by Keylime TS (left out): [cloud_verifier] database_drivername')
    const text = readFileSync(output, 'utf8')
    expect(text).toMatch(/^\[verifier\]\nversion = 2\.6$/m)
    const { config, unknown } = loadVerifierConfig({ configFile: output, env: {} })
    expect(unknown).toEqual([])
    expect(config).toMatchObject({
      uuid: 'east-1',
      ip: '0.0.0.0',
      port: 9881,
      quote_interval: 5,
      enable_agent_mtls: true,
      // `CV` meant the verifier's own CA; an empty database_url meant sqlite (as upstream's 2.0 upgrade settles)
      client_cert: 'default',
      trusted_server_ca: ['default'],
      database_url: 'sqlite',
      enabled_revocation_notifications: ['agent', 'webhook'],
      webhook_url: 'https://hooks.example/keylime',
      ignore_tomtou_errors: true,
      num_workers: 4,
    })
  })

  it('takes the registrar out of the same keylime.conf', () => {
    const up = upgradeConfigText('registrar', registrarSchema, KEYLIME_CONF_1_0, 'keylime.conf')
    expect(up.fromVersion).toBe('1.0')
    expect(up.sections.registrar).toMatchObject({
      ip: '0.0.0.0',
      port: '9890',
      tls_port: '9891',
      database_url: 'postgresql://keylime@db/registrar',
    })
    expect(up.unknown).toEqual(['[registrar] prov_db_filename'])
  })

  it('keeps a 2.x file as it is, adds the newer options and names the ones it does not read', async () => {
    const input = join(dir, 'registrar.conf')
    writeFileSync(
      input,
      '[registrar]\nversion = 2.0\nip = 10.1.1.1\nport = 9890\nprov_db_filename = provider.sqlite\n',
    )
    const output = join(dir, 'out.conf')
    const r = await runKeylime(['config', 'upgrade', 'registrar', '--input', input, '--output', output])
    expect(r.code, r.err).toBe(0)
    expect(r.err).toBe(
      `${input}: version 2.0 → 2.6\nnot read by Keylime TS (left out): [registrar] prov_db_filename\n`,
    )
    const { config, unknown } = loadRegistrarConfig({ configFile: output, env: {} })
    expect(unknown).toEqual([])
    expect(config).toMatchObject({
      ip: '10.1.1.1',
      port: 9890,
      malformed_cert_action: 'warn',
      max_workers: 16,
    })
    // the file as it was loads too, its unknown option reported by name
    expect(loadRegistrarConfig({ configFile: input, env: {} }).unknown).toEqual([
      '[registrar] prov_db_filename',
    ])
  })

  it('refuses a file it cannot read with a usage error', async () => {
    const r = await runKeylime(['config', 'upgrade', 'tenant', '--input', join(dir, 'missing.conf')])
    expect(r.code).toBe(2)
    expect(r.err).toMatch(/cannot read .*missing\.conf/)
  })
})

describe('options Keylime TS does not read', () => {
  it('are listed by name from files and from KEYLIME_* variables', () => {
    const file = join(dir, 'verifier.conf')
    writeFileSync(
      file,
      '[verifier]\nversion = 2.6\nport = 8881\nquote_intervall = 3\n[revocations]\nzmq_portt = 1\n',
    )
    const { unknown } = loadVerifierConfig({ configFile: file, env: { KEYLIME_VERIFIER_MAX_RETRYS: '3' } })
    expect(unknown.sort()).toEqual([
      '[revocations] zmq_portt',
      '[verifier] max_retrys',
      '[verifier] quote_intervall',
    ])
  })
})
