/**
 * Builds a TenantService from tenant.conf + environment + CLI flags (keylime-config-and-cli.md §2.3): TLS material
 * from `tls_dir` (default `$KEYLIME_DIR/cv_ca`, where the verifier's `tls_dir = generate` puts it), clients for the
 * registrar (HTTPS :8891) and verifier (HTTPS :8881), and the trust settings.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { type ClientTls, JsonClient } from '../api/client.ts'
import { RegistrarClient } from '../api/registrar/client.ts'
import { negotiateVersion } from '../api/versions.ts'
import { keylimeDir, loadTenantConfig, resolveInDir, type TenantConfig } from '../config/index.ts'
import { buildTpmPolicy } from '../evidence/quote/index.ts'
import type { TenantCliOptions } from './cli-options.ts'
import { agentPortFactory, registrarPort, verifierPort } from './clients.ts'
import { EXIT_USAGE, TenantError } from './errors.ts'
import { createIdentityChecker } from './identity.ts'
import { payloadCrypto, preparePayloadFromFiles } from './payload-prep.ts'
import { MAX_DOWNLOAD_BYTES, type SourceContext } from './policy-sources.ts'
import type { RegistrarPort, VerifierPort } from './ports.ts'
import type { PreparedPayload } from './tenant-service.ts'
import { TENANT_API_VERSIONS, TenantService } from './tenant-service.ts'

export interface TenantRuntime {
  service: TenantService
  verifier: VerifierPort
  registrar: RegistrarPort
  json: boolean
  /** Where policies and keys are read or downloaded from (timeouts, `mb_refstate`, warnings). */
  sources: SourceContext
  /** Upstream's names of the peers in messages: `Verifier (127.0.0.1:8881)`, `Registrar (127.0.0.1:8891)`. */
  peerNames: { verifier: string; registrar: string }
  buildTpmPolicy(userJson: string | undefined, with_: { runtimePolicy: boolean; mbPolicy: boolean }): string
  preparePayload(opts: TenantCliOptions, uuid: string): Promise<PreparedPayload | undefined>
  close(): Promise<void>
}

function readPem(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    throw new TenantError(
      `cannot read ${what} ${path} (set tls_dir / client_cert in tenant.conf or pass --tls-dir): ${(err as Error).message}`,
      EXIT_USAGE,
    )
  }
}

/** TLS material of the tenant: client certificate and the CAs it trusts for the verifier and registrar. */
export function tenantTls(
  config: TenantConfig,
  tlsDirFlag?: string,
): { cert: string; key: string; ca: string[] } {
  const work = keylimeDir()
  const tlsDir =
    tlsDirFlag ??
    (config.tls_dir === 'default' || config.tls_dir === 'generate'
      ? join(work, 'cv_ca')
      : resolveInDir(work, config.tls_dir))
  const pick = (value: string, fallback: string) =>
    resolveInDir(tlsDir, value === 'default' ? fallback : value)
  const caFiles =
    config.trusted_server_ca.length === 0 || config.trusted_server_ca.includes('default')
      ? [join(tlsDir, 'cacert.crt')]
      : config.trusted_server_ca.map((p) => resolveInDir(tlsDir, p))
  return {
    cert: readPem(pick(config.client_cert, 'client-cert.crt'), 'client certificate'),
    key: readPem(pick(config.client_key, 'client-private.pem'), 'client key'),
    ca: caFiles.map((f) => readPem(f, 'trusted server CA')),
  }
}

export async function createTenant(opts: TenantCliOptions): Promise<TenantRuntime> {
  const { config } = loadTenantConfig({
    ...(opts.config === undefined ? {} : { configFile: opts.config }),
    flags: {
      ...(opts.cv === undefined ? {} : { verifier_ip: opts.cv }),
      ...(opts.cvport === undefined ? {} : { verifier_port: String(opts.cvport) }),
      ...(opts.registrarhost === undefined ? {} : { registrar_ip: opts.registrarhost }),
      ...(opts.registrarport === undefined ? {} : { registrar_port: String(opts.registrarport) }),
    },
  })
  const tls = tenantTls(config, opts.tlsDir)
  const clientTls: ClientTls = { cert: tls.cert, key: tls.key, ca: tls.ca }
  const timeoutMs = config.request_timeout * 1000
  const host = (ip: string) => (ip.includes(':') ? `[${ip}]` : ip)

  const registrarClient = new RegistrarClient({
    baseUrl: `https://${host(config.registrar_ip)}:${config.registrar_port}`,
    tls: clientTls,
    timeoutMs,
  })
  const verifierBase = `https://${host(config.verifier_ip)}:${config.verifier_port}`
  const verifierVersion = await negotiatePeerVersion(verifierBase, clientTls, timeoutMs)
  const verifier = verifierPort({
    baseUrl: verifierBase,
    apiVersion: verifierVersion,
    tls: clientTls,
    timeoutMs,
  })
  const verifierAt = (ip: string, port: number) =>
    verifierPort({
      baseUrl: `https://${host(ip)}:${port}`,
      apiVersion: verifierVersion,
      tls: clientTls,
      timeoutMs,
    })
  const registrar = registrarPort(registrarClient)
  const warn = (m: string) => process.stderr.write(`warning: ${m}\n`)
  const progress = opts.json ? () => {} : (line: string) => process.stderr.write(`${line}\n`)

  const service = new TenantService({
    registrar,
    verifier,
    agent: agentPortFactory(tls, timeoutMs),
    identity: createIdentityChecker({
      requireEkCert: config.require_ek_cert,
      tpmCertStore: config.tpm_cert_store,
      ...(config.ek_check_script
        ? { ekCheckScript: resolveInDir(keylimeDir(), config.ek_check_script) }
        : {}),
      warn,
    }),
    payloadCrypto,
    settings: {
      verifierIp: config.verifier_ip,
      verifierPort: config.verifier_port,
      enableAgentMtls: config.enable_agent_mtls,
      acceptTpmHashAlgs: config.accept_tpm_hash_algs,
      acceptTpmEncryptionAlgs: config.accept_tpm_encryption_algs,
      acceptTpmSigningAlgs: config.accept_tpm_signing_algs,
      retry: {
        maxRetries: config.max_retries,
        retryInterval: config.retry_interval,
        exponentialBackoff: config.exponential_backoff,
      },
      maxPayloadSize: config.max_payload_size,
    },
    progress,
    verifierAt,
  })

  return {
    service,
    verifier,
    registrar,
    json: opts.json === true,
    sources: {
      timeoutMs,
      maxDownloadBytes: MAX_DOWNLOAD_BYTES,
      mbRefstate: config.mb_refstate ? resolveInDir(keylimeDir(), config.mb_refstate) : '',
      warn,
      progress,
    },
    peerNames: {
      verifier: `Verifier${opts.cvid ? ` ${opts.cvid}` : ''} (${config.verifier_ip}:${config.verifier_port})`,
      registrar: `Registrar (${config.registrar_ip}:${config.registrar_port})`,
    },
    buildTpmPolicy(userJson, with_) {
      try {
        return JSON.stringify(buildTpmPolicy(userJson ?? null, with_))
      } catch (err) {
        throw new TenantError(`invalid --tpm-policy: ${(err as Error).message}`, EXIT_USAGE)
      }
    },
    async preparePayload(cli, uuid) {
      if (cli.cert) {
        // Loaded only for --cert: the CA code brings in the X.509 library.
        const { loadCa } = await import('../crypto/ca.ts')
        const { buildCertPackage } = await import('../payload/cert-package.ts')
        const caDir = cli.cert === 'default' ? join(keylimeDir(), 'ca') : cli.cert
        const pkg = await buildCertPackage(await loadCa(caDir), uuid, {
          ...(cli.include === undefined ? {} : { includeDir: cli.include }),
        })
        const prepared = await preparePayloadFromFiles({
          maxPayloadSize: config.max_payload_size,
          inline: pkg.zip,
        })
        return prepared && { ...prepared, revocationKey: pkg.revocationKeyPem, metadata: pkg.metadata }
      }
      return preparePayloadFromFiles({
        maxPayloadSize: config.max_payload_size,
        ...(cli.file === undefined ? {} : { file: cli.file }),
        ...(cli.key === undefined ? {} : { key: cli.key }),
        ...(cli.payload === undefined ? {} : { payload: cli.payload }),
        ...(cli.include === undefined ? {} : { include: cli.include }),
      })
    },
    async close() {
      await Promise.all([registrarClient.close(), verifier.close()])
    },
  }
}

/** `GET /version` of a verifier or registrar, negotiated against the tenant's (<3.0) versions; 2.6 on failure. */
async function negotiatePeerVersion(baseUrl: string, tls: ClientTls, timeoutMs: number): Promise<string> {
  const http = new JsonClient({ baseUrl, tls, timeoutMs })
  try {
    const res = await http.request('GET', '/version')
    const results = res.results as { supported_versions?: unknown; current_version?: unknown } | null
    const versions = Array.isArray(results?.supported_versions)
      ? (results.supported_versions as string[])
      : typeof results?.current_version === 'string'
        ? [results.current_version]
        : []
    return negotiateVersion(versions, TENANT_API_VERSIONS) ?? '2.6'
  } catch {
    return '2.6'
  } finally {
    await http.close()
  }
}
