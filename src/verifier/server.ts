/**
 * Runs the verifier process: TLS material (`tls_dir = generate` creates the CA and certificates under
 * `$KEYLIME_DIR/cv_ca` on first start), database, HTTPS listener on `ip:port`, then the attestation loop.
 * The listener binds before the loop starts: a process that starts the loop is the only one listening at its address
 * on this host, so the agents of a previous instance at that address (a dead process) can be taken over at once.
 */
import { readFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { isAbsolute, join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import type { Kysely } from 'kysely'
import { createMetricsRegistry } from '../api/metrics.ts'
import { boundPort, type ProbeOptions, startProbeListener } from '../api/server.ts'
import { KeylimeError } from '../common/errors.ts'
import type { Logger } from '../common/log.ts'
import { keylimeDir } from '../config/loader.ts'
import type { VerifierConfig } from '../config/verifier.ts'
import { ensureTlsDir } from '../crypto/ca.ts'
import { openDatabase } from '../db/database.ts'
import { databaseReadiness } from '../db/readiness.ts'
import { formatTakeoverReport } from '../db/takeover/index.ts'
import type { VerifierDatabase } from '../db/verifier-repository.ts'
import { buildVerifierApp, type Identity } from './app.ts'
import { expiredLeaseCount, PrometheusVerifierMetrics } from './metrics.ts'
import { tomtouWarning, verifierOptionsFromConfig } from './options.ts'
import { PrometheusPushMetrics } from './push/push-metrics.ts'
import { settleWithin, VerifierService } from './verifier-service.ts'

export class VerifierStartError extends KeylimeError {
  constructor(message: string, cause?: unknown) {
    super('ERR_VERIFIER_START', message, { cause })
  }
}

export interface VerifierTlsMaterial {
  serverCert: string
  serverKey: string
  /** CAs a client certificate must chain to for admin access; null = `trusted_client_ca = all`. */
  clientCa: string[] | null
  clientCert: string
  clientKey: string
  /** CAs for agent/webhook server certificates besides each agent's pinned mtls_cert. */
  serverCa: string[]
}

function read(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    throw new VerifierStartError(`cannot read ${what} ${path}: ${(err as Error).message}`, err)
  }
}

/** Resolves the TLS options of §2.1/§3 to PEM material, generating `cv_ca` when `tls_dir = generate`. */
export async function loadVerifierTls(c: VerifierConfig, workDir: string): Promise<VerifierTlsMaterial> {
  let dir: string
  if (c.tls_dir === 'generate') {
    for (const k of ['server_key', 'server_cert', 'client_key', 'client_cert'] as const)
      if (c[k] !== 'default') throw new VerifierStartError(`tls_dir = generate requires ${k} = default`)
    dir = join(workDir, 'cv_ca')
    const sans = [
      ...new Set([c.ip, hostname(), 'localhost', '127.0.0.1', ...c.cert_subject_alternative_names]),
    ]
    await ensureTlsDir(dir, { serverSans: sans.filter((s) => s !== '' && s !== '0.0.0.0') })
  } else if (c.tls_dir === 'default') dir = join(workDir, 'cv_ca')
  else dir = isAbsolute(c.tls_dir) ? c.tls_dir : join(workDir, c.tls_dir)
  const p = (v: string, dflt: string) =>
    v === 'default' ? join(dir, dflt) : isAbsolute(v) ? v : join(dir, v)
  const cas = (list: readonly string[]): string[] | null => {
    if (list.includes('all')) return null
    const files =
      list.length === 0 || list.includes('default') ? [join(dir, 'cacert.crt')] : list.map((f) => p(f, f))
    return files.map((f) => read(f, 'CA certificate'))
  }
  if (c.server_key_password !== '' || c.client_key_password !== '')
    throw new VerifierStartError(
      'encrypted TLS keys (server_key_password / client_key_password) are not supported',
    )
  return {
    serverCert: read(p(c.server_cert, 'server-cert.crt'), 'server certificate'),
    serverKey: read(p(c.server_key, 'server-private.pem'), 'server key'),
    clientCa: cas(c.trusted_client_ca),
    clientCert: read(p(c.client_cert, 'client-cert.crt'), 'client certificate'),
    clientKey: read(p(c.client_key, 'client-private.pem'), 'client key'),
    serverCa: cas(c.trusted_server_ca) ?? [],
  }
}

export interface RunningVerifier {
  app: FastifyInstance
  service: VerifierService
  db: Kysely<VerifierDatabase>
  url: string
  /** Port of the plain probe listener (`metrics_port`); null when it is off. */
  metricsPort: number | null
  metrics: PrometheusVerifierMetrics
  /** Graceful shutdown: stop accepting, drain the loop, release leases, close the database. */
  close(): Promise<void>
}

/** How long closing the database may wait for queries still running at shutdown. */
const DB_CLOSE_MS = 2000

export async function startVerifier(config: VerifierConfig, log: Logger): Promise<RunningVerifier> {
  if (config.metrics_port < 0 || config.metrics_port > 65535)
    throw new VerifierStartError('metrics_port must be a port number (0: no probe listener)')
  const options = verifierOptionsFromConfig(config)
  const tomtou = tomtouWarning(config)
  if (tomtou !== null) log.warn({ ignoreTomtouErrors: options.ignoreTomtouErrors }, tomtou)
  const workDir = keylimeDir()
  const tls = await loadVerifierTls(config, workDir)
  const db = await openDatabase<VerifierDatabase>(options.databaseUrl, {
    dataDir: workDir,
    name: 'cv_data',
    migrations: config.auto_migrate_db ? 'verifier' : false,
    service: 'verifier',
    onTakeover: (report) => log.warn({ takeover: report }, formatTakeoverReport(report, false).join('\n')),
    poolSize: Number(config.database_pool_sz_ovfl.split(',')[0]) || 5,
  })
  const service = new VerifierService({
    db,
    options,
    log,
    clientTls: { cert: tls.clientCert, key: tls.clientKey, trustedServerCa: tls.serverCa },
  })
  const registry = createMetricsRegistry()
  const metrics = new PrometheusVerifierMetrics(registry, {
    stats: () => service.loop.stats(),
    db,
    leaseHolder: service.leaseHolder,
    revocations: () => service.notifier,
  })
  service.loop.metrics = metrics
  if (service.push) service.push.metrics = new PrometheusPushMetrics(registry, db)
  const probes: ProbeOptions = {
    readiness: async () => {
      const base = await databaseReadiness(db, 'verifier')
      if (!base.database) return { ...base, leases: false }
      return { ...base, leases: (await expiredLeaseCount(db, service.leaseHolder, Date.now())) === 0 }
    },
    metrics: registry,
  }
  // with `trusted_client_ca = all` any presented certificate is accepted as admin (upstream semantics)
  const identify =
    tls.clientCa === null
      ? (req: { raw: { socket: unknown } }): Identity => {
          const s = req.raw.socket as { getPeerCertificate?: () => { raw?: Buffer } }
          return s.getPeerCertificate?.()?.raw ? 'admin' : 'anonymous'
        }
      : undefined
  const app = await buildVerifierApp({
    service,
    log,
    https: {
      key: tls.serverKey,
      cert: tls.serverCert,
      ...(tls.clientCa ? { ca: tls.clientCa } : {}),
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: 'TLSv1.2',
    },
    ...(identify ? { identify: identify as never } : {}),
    probes,
  })
  try {
    await app.listen({ host: options.ip, port: options.port })
  } catch (err) {
    await db.destroy()
    throw new VerifierStartError(
      `cannot listen on ${options.ip}:${options.port}: ${(err as Error).message}`,
      err,
    )
  }
  let probeApp: FastifyInstance | null = null
  if (config.metrics_port > 0) {
    try {
      probeApp = await startProbeListener({
        ...probes,
        host: config.metrics_ip,
        port: config.metrics_port,
        logger: log,
      })
    } catch (err) {
      await app.close()
      await db.destroy()
      throw new VerifierStartError(
        `cannot listen on ${config.metrics_ip}:${config.metrics_port}: ${(err as Error).message}`,
        err,
      )
    }
  }
  await service.start()
  const url = `https://${options.ip.includes(':') ? `[${options.ip}]` : options.ip}:${options.port}`
  log.info({ url, verifierId: options.verifierId, agents: service.loop.size }, 'verifier listening')
  let closing: Promise<void> | null = null
  return {
    app,
    service,
    db,
    url,
    metricsPort: probeApp ? boundPort(probeApp) : null,
    metrics,
    close: () => {
      // bounded by the drain time: requests still running after it (a database that does not answer) are cut off
      closing ??= (async () => {
        const deadline = Date.now() + options.shutdownDrainTimeoutMs
        await probeApp?.close()
        await settleWithin(app.close(), options.shutdownDrainTimeoutMs)
        await service.stop(deadline)
        await settleWithin(db.destroy(), DB_CLOSE_MS)
      })()
      return closing
    },
  }
}
