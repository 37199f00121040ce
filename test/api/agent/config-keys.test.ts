import { createPublicKey, X509Certificate } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { agentDataMatches, ekDigest, loadAgentData, saveAgentData } from '../../../src/agent/agent-data.ts'
import { AgentConfigError, loadAgentConfig, servedApiVersions } from '../../../src/agent/config.ts'
import { ensureMtlsIdentity, ensurePayloadKey } from '../../../src/agent/keys.ts'
import { resolveAgentUuid } from '../../../src/agent/uuid.ts'
import { AGENT_API_VERSIONS } from '../../../src/api/versions.ts'

let dir: string
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'agent-cfg-'))
})
afterEach(() => rmSync(dir, { recursive: true, force: true }))

describe('agent config', () => {
  it('uses upstream defaults and resolves default paths under keylime_dir', () => {
    const cfg = loadAgentConfig({ env: { KEYLIME_DIR: dir }, configDirs: [] })
    expect(cfg.port).toBe(9002)
    expect(cfg.uuid).toBe('d432fbb3-d2f1-4a97-9ef7-75bd81c00000')
    expect(cfg.tpm).toBe('/dev/tpmrm0')
    expect(cfg.payload_key).toBe(join(dir, 'payload-private.pem'))
    expect(cfg.trusted_client_ca).toBe(join(dir, 'cv_ca/cacert.crt'))
    expect(cfg.agent_data_path).toBe(join(dir, 'agent_data.json'))
  })

  it('revocation_max_age_seconds: one hour by default, a whole number of seconds up to 30 days', () => {
    expect(loadAgentConfig({ env: { KEYLIME_DIR: dir }, configDirs: [] }).revocation_max_age_seconds).toBe(
      3600,
    )
    const env = { KEYLIME_DIR: dir, KEYLIME_AGENT_REVOCATION_MAX_AGE_SECONDS: '600' }
    expect(loadAgentConfig({ env, configDirs: [] }).revocation_max_age_seconds).toBe(600)
    for (const bad of ['0', '-1', '1.5', '2592001']) {
      expect(() =>
        loadAgentConfig({
          env: { KEYLIME_DIR: dir },
          configDirs: [],
          overrides: { revocation_max_age_seconds: bad },
        }),
      ).toThrow(AgentConfigError)
    }
  })

  it('layers file < env < flags', () => {
    const file = join(dir, 'agent.conf')
    writeFileSync(
      file,
      `[agent]\nport = 9100\nuuid = "generate"\nenable_agent_mtls = false\nenable_insecure_payload = true\ntrusted_client_ca = ["a.crt", "/abs/b.crt"]\n`,
    )
    const cfg = loadAgentConfig({
      configPath: file,
      env: { KEYLIME_DIR: dir, KEYLIME_AGENT_PORT: '9200', KEYLIME_AGENT_TPM: 'swtpm:host=127.0.0.1,port=1' },
      overrides: { contact_port: '9300' },
    })
    expect(cfg.port).toBe(9200)
    expect(cfg.contact_port).toBe(9300)
    expect(cfg.uuid).toBe('generate')
    expect(cfg.enable_agent_mtls).toBe(false)
    expect(cfg.tpm).toBe('swtpm:host=127.0.0.1,port=1')
    expect(cfg.trusted_client_ca).toBe(`${join(dir, 'a.crt')},/abs/b.crt`)
  })

  it('reads agent.conf then agent.conf.d snippets from the config dirs; KEYLIME_AGENT_CONFIG replaces them', () => {
    mkdirSync(join(dir, 'agent.conf.d'))
    writeFileSync(join(dir, 'agent.conf'), '[agent]\nport = 9100\nregistrar_port = 9101\n')
    writeFileSync(join(dir, 'agent.conf.d', '10-port.conf'), '[agent]\nport = 9200\n')
    const cfg = loadAgentConfig({ configDirs: [dir], env: { KEYLIME_DIR: dir } })
    expect([cfg.port, cfg.registrar_port]).toEqual([9200, 9101])
    const only = join(dir, 'only.conf')
    writeFileSync(only, '[agent]\ncontact_port = 9300\n')
    const replaced = loadAgentConfig({
      configDirs: [dir],
      env: { KEYLIME_DIR: dir, KEYLIME_AGENT_CONFIG: only },
    })
    expect([replaced.port, replaced.contact_port]).toEqual([9002, 9300])
  })

  it('rejects bad values with a typed error naming the option', () => {
    expect(() => loadAgentConfig({ env: { KEYLIME_AGENT_PORT: 'x' }, configDirs: [] })).toThrow(/port/)
    expect(() => loadAgentConfig({ env: { KEYLIME_AGENT_TPM_HASH_ALG: 'md5' }, configDirs: [] })).toThrow(
      AgentConfigError,
    )
    expect(() =>
      loadAgentConfig({ env: { KEYLIME_AGENT_ENABLE_AGENT_MTLS: 'false' }, configDirs: [] }),
    ).toThrow(/payload_script/)
    const bad = join(dir, 'bad.conf')
    writeFileSync(bad, '[agent\nport=')
    expect(() => loadAgentConfig({ configPath: bad, env: {} })).toThrow(AgentConfigError)
  })

  it('chooses served API versions', () => {
    expect(servedApiVersions({ api_versions: 'default' }, AGENT_API_VERSIONS)).toEqual([
      ...AGENT_API_VERSIONS,
    ])
    expect(servedApiVersions({ api_versions: 'latest' }, AGENT_API_VERSIONS)).toEqual(['2.6'])
    expect(servedApiVersions({ api_versions: '2.2, 2.5' }, AGENT_API_VERSIONS)).toEqual(['2.2', '2.5'])
    expect(() => servedApiVersions({ api_versions: '9.9' }, AGENT_API_VERSIONS)).toThrow(AgentConfigError)
  })
})

describe('agent keys', () => {
  it('generates the RSA-2048 payload key once, mode 0600, and reloads the same key', () => {
    const path = join(dir, 'payload-private.pem')
    const a = ensurePayloadKey(path)
    expect(statSync(path).mode & 0o777).toBe(0o600)
    expect(createPublicKey(a.publicPem).asymmetricKeyDetails?.modulusLength).toBe(2048)
    expect(ensurePayloadKey(path).publicPem).toBe(a.publicPem)
  })

  it('generates a self-signed P-256 mTLS cert with CN = uuid and SAN IP = contact_ip', async () => {
    const keyPath = join(dir, 'server-private.pem')
    const certPath = join(dir, 'server-cert.crt')
    const id = await ensureMtlsIdentity({ keyPath, certPath, uuid: 'u-1', contactIp: '10.1.2.3' })
    const cert = new X509Certificate(id.certPem)
    expect(cert.subject).toBe('CN=u-1')
    expect(cert.subjectAltName).toBe('IP Address:10.1.2.3')
    expect(cert.verify(cert.publicKey)).toBe(true)
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1')
    expect(statSync(keyPath).mode & 0o777).toBe(0o600)
    const again = await ensureMtlsIdentity({ keyPath, certPath, uuid: 'u-1', contactIp: '10.1.2.3' })
    expect(again.certPem).toBe(id.certPem)
  })
})

describe('uuid modes and agent data', () => {
  it('resolves literal, generate, hash_ek and malformed settings', () => {
    const pem = '-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n'
    expect(resolveAgentUuid('d432fbb3-d2f1-4a97-9ef7-75bd81c00000', () => pem)).toBe(
      'd432fbb3-d2f1-4a97-9ef7-75bd81c00000',
    )
    expect(resolveAgentUuid('hash_ek', () => pem)).toMatch(/^[0-9a-f]{64}$/)
    expect(resolveAgentUuid('hash_ek', () => pem)).toBe(resolveAgentUuid('hash_ek', () => pem))
    const g = resolveAgentUuid('generate', () => pem)
    expect(g).toMatch(/^[0-9a-f-]{36}$/)
    expect(resolveAgentUuid('generate', () => pem)).not.toBe(g)
    expect(resolveAgentUuid('not a uuid', () => pem)).toMatch(/^[0-9a-f-]{36}$/)
  })

  it('saves AK data 0600 and matches only the same algorithms and EK', () => {
    const path = join(dir, 'agent_data.json')
    const ek = new Uint8Array([1, 2, 3])
    saveAgentData(path, {
      version: 1,
      ak_hash_alg: 'sha256',
      ak_sign_alg: 'rsassa',
      ek_encryption_alg: 'rsa',
      ek_public_sha256: ekDigest(ek),
      ak_public: 'AA==',
      ak_private: 'AA==',
    })
    expect(statSync(path).mode & 0o777).toBe(0o600)
    const data = loadAgentData(path)
    expect(data).not.toBeNull()
    const want = { hashAlg: 'sha256', signAlg: 'rsassa', encAlg: 'rsa', ekPublicArea: ek }
    expect(agentDataMatches(data!, want)).toBe(true)
    expect(agentDataMatches(data!, { ...want, signAlg: 'ecdsa' })).toBe(false)
    expect(agentDataMatches(data!, { ...want, ekPublicArea: new Uint8Array([9]) })).toBe(false)
    writeFileSync(path, '{not json')
    expect(loadAgentData(path)).toBeNull()
  })
})
