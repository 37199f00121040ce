/**
 * Starts the registrar: database (migrated at start unless `auto_migrate_db = False`), TLS material from
 * `tls_dir`, and two listeners sharing one service — HTTP on `port` (registration/activation) and HTTPS on
 * `tls_port` (same table, admin routes need a trusted client certificate).
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import type { Kysely } from 'kysely'
import { createMetricsRegistry } from '../api/metrics.ts'
import { type ProbeOptions, startProbeListener, tlsServerOptions } from '../api/server.ts'
import type { Logger } from '../common/log.ts'
import { ConfigError, keylimeDir, resolveInDir } from '../config/loader.ts'
import type { RegistrarConfig } from '../config/registrar.ts'
import { ensureTlsDir } from '../crypto/ca.ts'
import { loadCertStore } from '../crypto/ek-trust.ts'
import { openDatabase } from '../db/database.ts'
import { databaseReadiness } from '../db/readiness.ts'
import { type RegistrarDatabase, RegistrarRepository } from '../db/registrar-repository.ts'
import { formatTakeoverReport } from '../db/takeover/index.ts'
import { buildRegistrarApp } from './app.ts'
import { RegistrarMetrics } from './metrics.ts'
import type { MalformedCertAction } from './registrar-fns.ts'
import { RegistrarService, type TpmIdentityMode } from './registrar-service.ts'

export interface RunningRegistrar {
  httpPort: number
  tlsPort: number
  /** Port of the plain probe listener (`metrics_port`); null when it is off. */
  metricsPort: number | null
  service: RegistrarService
  close(): Promise<void>
}

export interface RegistrarTlsMaterial {
  dir: string
  certPem: string
  keyPem: string
  trustedClientCaPems: string[]
}

const IDENTITY_MODES = ['default', 'ek_cert_or_iak_idevid', 'ek_cert', 'iak_idevid'] as const
const CERT_ACTIONS = ['warn', 'reject', 'ignore'] as const

function readPem(path: string, what: string): string {
  if (!existsSync(path)) throw new ConfigError(`registrar ${what} not found: ${path}`)
  return readFileSync(path, 'utf8')
}

/** Resolves `tls_dir` / `server_cert` / `server_key` / `trusted_client_ca` as upstream (§2.2). */
export async function resolveRegistrarTls(
  config: RegistrarConfig,
  workDir: string,
): Promise<RegistrarTlsMaterial> {
  let dir: string
  if (config.tls_dir === 'generate') {
    if (config.server_cert !== 'default' || config.server_key !== 'default') {
      throw new ConfigError('tls_dir = generate requires server_cert and server_key = default')
    }
    dir = join(workDir, 'reg_ca')
    const sans = [
      ...new Set(['localhost', config.ip, ...config.cert_subject_alternative_names].filter((s) => s !== '')),
    ]
    await ensureTlsDir(dir, { serverSans: sans })
  } else {
    dir = config.tls_dir === 'default' ? join(workDir, 'cv_ca') : resolveInDir(workDir, config.tls_dir)
  }
  const certPath =
    config.server_cert === 'default' ? join(dir, 'server-cert.crt') : resolveInDir(dir, config.server_cert)
  const keyPath =
    config.server_key === 'default' ? join(dir, 'server-private.pem') : resolveInDir(dir, config.server_key)
  if (config.trusted_client_ca.includes('all')) {
    throw new ConfigError(
      'trusted_client_ca = all is not supported: it would make every TLS client an administrator',
    )
  }
  const caPaths = config.trusted_client_ca.map((p) =>
    p === 'default' ? join(dir, 'cacert.crt') : resolveInDir(dir, p),
  )
  return {
    dir,
    certPem: readPem(certPath, 'server certificate'),
    keyPem: readPem(keyPath, 'server key'),
    trustedClientCaPems: caPaths.map((p) => readPem(p, 'trusted client CA')),
  }
}

function listenPort(app: FastifyInstance): number {
  const addr = app.server.address()
  return addr && typeof addr === 'object' ? addr.port : 0
}

export async function startRegistrar(
  config: RegistrarConfig,
  log: Logger,
  opts: { env?: NodeJS.ProcessEnv } = {},
): Promise<RunningRegistrar> {
  if (!(IDENTITY_MODES as readonly string[]).includes(config.tpm_identity)) {
    throw new ConfigError(`[registrar] tpm_identity: expected one of ${IDENTITY_MODES.join(', ')}`)
  }
  if (!(CERT_ACTIONS as readonly string[]).includes(config.malformed_cert_action)) {
    throw new ConfigError(`[registrar] malformed_cert_action: expected one of ${CERT_ACTIONS.join(', ')}`)
  }
  if (config.registration_rate_limit_per_ip < 0 || config.registration_rate_limit_window_ip < 1) {
    throw new ConfigError(
      '[registrar] registration_rate_limit_per_ip must be >= 0 (0: no limit) and registration_rate_limit_window_ip >= 1',
    )
  }
  if (config.metrics_port < 0 || config.metrics_port > 65535) {
    throw new ConfigError('[registrar] metrics_port must be a port number (0: no probe listener)')
  }
  if (config.registration_challenge_lifetime < 1) {
    throw new ConfigError('[registrar] registration_challenge_lifetime must be at least 1 second')
  }
  const workDir = keylimeDir(opts.env)
  const tls = await resolveRegistrarTls(config, workDir)
  const poolSize = Number.parseInt(config.database_pool_sz_ovfl.split(',')[0] ?? '5', 10) || 5
  const db: Kysely<RegistrarDatabase> = await openDatabase<RegistrarDatabase>(config.database_url, {
    dataDir: workDir,
    name: 'reg_data',
    migrations: config.auto_migrate_db ? 'registrar' : false,
    service: 'registrar',
    onTakeover: (report) => log.warn({ takeover: report }, formatTakeoverReport(report, false).join('\n')),
    poolSize,
  })
  const apps: FastifyInstance[] = []
  let stopSweep = () => {}
  try {
    // IAK/IDevID trust anchors come from the tenant's option, as upstream (§2.2)
    const certStore = existsSync(config.tpm_cert_store) ? await loadCertStore(config.tpm_cert_store) : null
    if (config.require_trusted_ek_cert && (certStore === null || certStore.certificates.length === 0)) {
      throw new ConfigError(
        `require_trusted_ek_cert is on but tpm_cert_store (${config.tpm_cert_store}) holds no certificate`,
      )
    }
    // a missing folder and one without certificates refuse the same registrations
    if (certStore === null || certStore.certificates.length === 0)
      log.warn(
        { dir: config.tpm_cert_store },
        `no certificate in tpm_cert_store ${config.tpm_cert_store} (KEYLIME_REGISTRAR_TENANT_TPM_CERT_STORE, KEYLIME_TENANT_TPM_CERT_STORE or [tenant] tpm_cert_store of registrar.conf): IAK/IDevID registrations refused`,
      )
    const lifetimeMs = config.registration_challenge_lifetime * 1000
    const service = new RegistrarService({
      repo: new RegistrarRepository(db),
      certStore,
      tpmIdentity: config.tpm_identity as TpmIdentityMode,
      malformedCertAction: config.malformed_cert_action as MalformedCertAction,
      requireTrustedEkCert: config.require_trusted_ek_cert,
      challengeLifetimeMs: lifetimeMs,
      rateLimit:
        config.registration_rate_limit_per_ip > 0
          ? {
              limit: config.registration_rate_limit_per_ip,
              windowMs: config.registration_rate_limit_window_ip * 1000,
            }
          : null,
      log,
    })
    // reads ignore expired registrations already; the sweep only reclaims their rows
    const sweep = setInterval(
      () => {
        service.sweepExpired().catch((err: unknown) => {
          log.warn({ err: (err as Error).message }, 'cannot delete expired registrations; will retry')
        })
      },
      Math.min(Math.max(lifetimeMs / 2, 1000), 60_000),
    )
    sweep.unref()
    stopSweep = () => clearInterval(sweep)
    const registry = createMetricsRegistry()
    const probes: ProbeOptions = {
      readiness: async () => ({ ...(await databaseReadiness(db, 'registrar')) }),
      metrics: registry,
    }
    const common = {
      service,
      logger: log,
      bodyLimit: config.max_upload_size,
      metrics: new RegistrarMetrics(registry),
      probes,
    }
    const httpApp = buildRegistrarApp(common)
    apps.push(httpApp)
    const httpsApp = buildRegistrarApp({ ...common, https: tlsServerOptions(tls) })
    apps.push(httpsApp)
    await httpApp.listen({ host: config.ip, port: config.port })
    await httpsApp.listen({ host: config.ip, port: config.tls_port })
    const probeApp =
      config.metrics_port > 0
        ? await startProbeListener({
            ...probes,
            host: config.metrics_ip,
            port: config.metrics_port,
            logger: log,
          })
        : null
    if (probeApp) apps.push(probeApp)
    const running: RunningRegistrar = {
      httpPort: listenPort(httpApp),
      tlsPort: listenPort(httpsApp),
      metricsPort: probeApp ? listenPort(probeApp) : null,
      service,
      close: async () => {
        stopSweep()
        await Promise.allSettled(apps.map((a) => a.close()))
        await db.destroy()
      },
    }
    log.info(
      { ip: config.ip, port: running.httpPort, tlsPort: running.tlsPort, tlsDir: tls.dir },
      'registrar listening',
    )
    return running
  } catch (err) {
    stopSweep()
    await Promise.allSettled(apps.map((a) => a.close()))
    await db.destroy().catch(() => {})
    throw err
  }
}
