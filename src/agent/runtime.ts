/**
 * Agent start-up and shutdown (keylime-protocols.md §B, §E, §F): TPM identity (EK, EK cert, AK created once and
 * reused), keys, UUID, PCR 16 binding, registration + activation with backoff, then the pull API listener.
 * The TPM, codecs and zip extraction arrive through `AgentDeps` (`defaultAgentDeps()` for the real ones), so tests
 * can drive start-up with a simulated TPM.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { AGENT_API_VERSIONS } from '../api/versions.ts'
import { KeylimeError } from '../common/errors.ts'
import type { Logger } from '../common/log.ts'
import { decodeKeylimeCredentialBlob } from '../crypto/make-credential.ts'
import { publicKeyPemOf } from '../crypto/tpm-public.ts'
import {
  type AgentTpm,
  type EncAlgName,
  type HashAlgName,
  openKeylimeTpm,
  type SignAlgName,
  type TpmLock,
} from './agent-tpm.ts'
import { type AgentServices, buildAgentApp } from './app.ts'
import { type AgentConfig, servedApiVersions, trustedClientCaFiles } from './config.ts'
import { prepareDeviceIdentity } from './device-id.ts'
import { type AgentHttpServer, startAgentProbeListener } from './http-server.ts'
import { type ImaNgFormatter, imaEmulatorPaths, startImaEmulator } from './ima-emulator.ts'
import { ImaMeasurementList } from './ima-list.ts'
import { ensureMtlsIdentity, ensurePayloadKey } from './keys.ts'
import { agentObservability } from './metrics.ts'
import { PayloadManager, type ZipExtractor } from './payload.ts'
import { checkWritable, dropPrivileges, giveDirectory, giveFile, type RunAsIdentity } from './privileges.ts'
import { formatAgentQuote, type QuoteFormatter, QuoteService } from './quote-service.ts'
import { backoffPolicyOf, RegistrarConnection } from './registration.ts'
import { RevocationHandler } from './revocation.ts'
import { prepareSecureDir, type SecureDir } from './secure-dir.ts'
import {
  type AgentTpmDeps,
  deviceIdentityRequest,
  establishTpmIdentity,
  openAgentTpm,
  registerTpmIdentity,
  tpmIdentityOptionsOf,
} from './tpm-identity.ts'

export class AgentStartError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_AGENT_START', message, options)
  }
}

/** What start-up needs from the TPM library, the codecs and the payload extractor. */
export interface AgentDeps extends AgentTpmDeps {
  formatQuote: QuoteFormatter
  extractZip: ZipExtractor
}

/** Payload archives: upstream's 1 MiB payload cap with generous room for compression. */
const PAYLOAD_ZIP_LIMITS = { maxEntries: 1000, maxTotalBytes: 64 * 1024 * 1024, maxRatio: 200 }

export function defaultAgentDeps(): AgentDeps {
  return {
    openTpm: openKeylimeTpm,
    formatQuote: formatAgentQuote,
    decodeCredentialBlob: (b64) => {
      const c = decodeKeylimeCredentialBlob(b64)
      return { credentialBlob: c.credentialBlob, encryptedSecret: c.encryptedSecret }
    },
    publicKeyPem: (pub) => publicKeyPemOf(pub),
    // the zip reader (yauzl) is loaded by the first payload only: most agents never receive one
    extractZip: async (zip, destDir) => {
      const { extractPayloadZipSafely } = await import('../payload/extract.ts')
      await extractPayloadZipSafely(zip, destDir, PAYLOAD_ZIP_LIMITS)
    },
  }
}

export interface RunningAgent {
  uuid: string
  app: AgentHttpServer
  /** Bound address after listen. */
  port: number
  /** Port of the plain probe listener (`metrics_port`); null when it is off. */
  metricsPort: number | null
  akPublic: Uint8Array
  ekPublic: Uint8Array
  /** True when the AK was loaded from the agent data file rather than created. */
  akReused: boolean
  mtlsCertPem: string
  payloadPubkeyPem: string
  payload: PayloadManager
  /** `keylime_dir/secure`: a tmpfs unless the development-only disk opt-out applied. */
  secureDir: SecureDir
  revocation: RevocationHandler
  quotes: QuoteService
  tpm: AgentTpm
  lock: TpmLock
  akHandle: number
  close(): Promise<void>
}

export interface StartAgentOptions {
  config: AgentConfig
  deps: AgentDeps
  log: Logger
  /** Skip registration (tests of the API alone). */
  register?: boolean
  /** IMA emulator line formatter; required when `ima_emulator_paths` is set. */
  imaFormatter?: ImaNgFormatter
  /** Override backoff sleeping (tests). */
  sleep?: (ms: number) => Promise<void>
  /**
   * `run_as` resolved by the process entry point: after the socket is bound this process becomes that user for
   * good, so in-process callers (tests) leave it unset.
   */
  runAs?: RunAsIdentity
}

export async function startAgent(opts: StartAgentOptions): Promise<RunningAgent> {
  const { config: cfg, deps, log } = opts
  const hashAlg = cfg.tpm_hash_alg as HashAlgName
  const signAlg = cfg.tpm_signing_alg as SignAlgName
  const encAlg = cfg.tpm_encryption_alg as EncAlgName
  const versions = servedApiVersions(cfg, AGENT_API_VERSIONS)
  if (cfg.enable_revocation_notifications) {
    log.warn(
      'enable_revocation_notifications (ZeroMQ) is not supported; revocations arrive over the REST API only',
    )
  }

  const { tpm, lock, transient, release: releaseTpm } = await openAgentTpm(cfg, deps.openTpm)
  let closed = false
  let secure: SecureDir | null = null
  let releaseDeviceId: (() => Promise<void>) | null = null

  try {
    // swtpm has no resource manager: objects of an agent that was killed stay loaded and can exhaust its 3 object
    // slots (TPM_RC_OBJECT_MEMORY). Behind /dev/tpmrm0 this agent sees none of them and flushes nothing.
    const stale = await lock.run(() => tpm.flushStaleObjects())
    log.info(`flushed ${stale} transient TPM object(s) left loaded before this agent started`)
    const identity = await establishTpmIdentity(
      tpm,
      lock,
      tpmIdentityOptionsOf(cfg),
      deps.publicKeyPem,
      log,
      transient,
    )
    const { uuid, ek, ak, akReused } = identity

    const payloadKey = ensurePayloadKey(cfg.payload_key, cfg.payload_key_password)
    const mtls = await ensureMtlsIdentity({
      keyPath: cfg.server_key,
      certPath: cfg.server_cert,
      uuid,
      contactIp: cfg.contact_ip,
      passphrase: cfg.server_key_password,
    })

    const quotes = new QuoteService({
      tpm,
      lock,
      akHandle: ak.handle,
      hashAlg,
      signAlg,
      encAlg,
      pubkeyPem: payloadKey.publicPem,
      ima: new ImaMeasurementList(cfg.ima_ml_path),
      mbLogPath: cfg.measuredboot_ml_path,
      formatQuote: deps.formatQuote,
      log,
    })
    await quotes.bindPubkey()
    const stopImaEmulator = await startConfiguredImaEmulator()

    async function startConfiguredImaEmulator(): Promise<() => void> {
      const paths = imaEmulatorPaths(cfg.ima_emulator_paths)
      if (paths.length === 0) return () => undefined
      if (!opts.imaFormatter)
        throw new AgentStartError('ima_emulator_paths is set but no IMA formatter was given')
      return startImaEmulator(
        { tpm, lock, listPath: cfg.ima_ml_path, hashAlg, format: opts.imaFormatter },
        paths,
        log,
      )
    }

    const secureDir = join(cfg.keylime_dir, 'secure')
    secure = await prepareSecureDir({
      path: secureDir,
      secureSize: cfg.secure_size,
      allowDisk: cfg.secure_dir_allow_disk,
      log,
    })
    const secureMount = secure
    const revocation = new RevocationHandler({
      certPath: cfg.revocation_cert,
      actions: cfg.revocation_actions,
      actionsDir: cfg.revocation_actions_dir,
      allowPayloadActions: cfg.allow_payload_revocation_actions,
      unzippedDir: join(secureDir, 'unzipped'),
      workDir: cfg.keylime_dir,
      agentUuid: uuid,
      timeoutMs: cfg.revocation_action_timeout_seconds * 1000,
      maxAgeMs: cfg.revocation_max_age_seconds * 1000,
      seenPath: join(cfg.keylime_dir, 'revocations_seen.json'),
      keptCertPath: join(cfg.keylime_dir, 'revocation-cert.crt'),
      log,
    })
    revocation.loadCertificate()
    const payload = new PayloadManager({
      uuid,
      payloadKey: payloadKey.privateKey,
      secureDir,
      encKeyname: cfg.enc_keyname,
      decPayloadFile: cfg.dec_payload_file,
      extractPayloadZip: cfg.extract_payload_zip,
      payloadScript: cfg.payload_script,
      scriptTimeoutMs: cfg.payload_script_timeout_seconds * 1000,
      runPayloads: cfg.enable_agent_mtls || cfg.enable_insecure_payload,
      extractZip: deps.extractZip,
      log,
      onPayloadInstalled: () => revocation.loadCertificate(),
    })

    const deviceId = cfg.enable_iak_idevid ? await prepareDeviceIdentity(cfg, tpm, lock, log) : null
    if (deviceId) releaseDeviceId = deviceId.release

    if (opts.register !== false) {
      const registrar = new RegistrarConnection({ ip: cfg.registrar_ip, port: cfg.registrar_port, log })
      const policy = backoffPolicyOf(cfg)
      try {
        await registerTpmIdentity({
          tpm,
          lock,
          identity,
          registrar,
          request: {
            mtlsCert: cfg.enable_agent_mtls ? mtls.certPem : 'disabled',
            ip: cfg.contact_ip,
            port: cfg.contact_port,
            ...deviceIdentityRequest(deviceId, identity),
          },
          decodeCredentialBlob: deps.decodeCredentialBlob,
          policy,
          log,
          ...(opts.sleep ? { sleep: opts.sleep } : {}),
        })
      } finally {
        await registrar.close()
      }
    }
    await deviceId?.release()

    const services: AgentServices = {
      info: () => ({
        agent_uuid: uuid,
        tpm_hash_alg: hashAlg,
        tpm_enc_alg: encAlg,
        tpm_sign_alg: signAlg,
        ak_handle: ak.handle,
      }),
      pubkeyPem: () => payloadKey.publicPem,
      identityQuote: (nonce, v) => quotes.identity(nonce, v),
      integrityQuote: (p) => quotes.integrity(p),
      postUkey: async (b) => payload.addU(b),
      postVkey: async (b) => payload.addV(b),
      verify: (c) => payload.verify(c),
      postRevocation: (b) => {
        void revocation.receive(b).then(
          (outcome) => {
            if (outcome.status !== 'done' || !cfg.secure_dir_wipe_on_revocation) return
            try {
              secureMount.wipe()
              log.info('secure directory wiped after the revocation (secure_dir_wipe_on_revocation)')
            } catch (err) {
              log.error(`secure directory not wiped after the revocation: ${(err as Error).message}`)
            }
          },
          (err: unknown) => log.error(`revocation handling failed: ${(err as Error).message}`),
        )
      },
    }
    const https = cfg.enable_agent_mtls
      ? {
          key: mtls.keyPem,
          cert: mtls.certPem,
          ca: trustedClientCaFiles(cfg).map((f) => {
            try {
              return readFileSync(f, 'utf8')
            } catch (err) {
              throw new AgentStartError(`trusted_client_ca ${f} cannot be read`, { cause: err })
            }
          }),
          requestCert: true,
          rejectUnauthorized: true,
          minVersion: 'TLSv1.2' as const,
          ...(cfg.server_key_password ? { passphrase: cfg.server_key_password } : {}),
        }
      : null
    const runAs = opts.runAs
    if (runAs) {
      // What the agent still reads or writes once it is no longer root: measurement logs stay open (securityfs is
      // root-only); the work directory and the secure directory (payloads, revocation certificate) change owner.
      await quotes.holdMeasurementFiles()
      giveDirectory(cfg.keylime_dir, runAs, false)
      giveDirectory(secureDir, runAs, true)
      if (cfg.ima_emulator_paths.trim() !== '') giveFile(cfg.ima_ml_path, runAs)
    }
    const { metrics, probes } = agentObservability(() => lock.run(() => tpm.pcrRead(hashAlg, [0])))
    const app = buildAgentApp({ services, apiVersions: versions, logger: log, https, metrics, probes })
    await app.listen({ host: cfg.ip, port: cfg.port })
    if (runAs) {
      // Synchronously after listen resolves, so no request is served as root.
      try {
        dropPrivileges(runAs, log)
        checkWritable(secureDir, runAs)
      } catch (err) {
        stopImaEmulator()
        await app.close()
        metrics.stop()
        throw err
      }
    }
    // after privileges are dropped (with run_as, metrics_port must be 1024 or above)
    const probeApp =
      cfg.metrics_port > 0
        ? await startAgentProbeListener({ ...probes, host: cfg.metrics_ip, port: cfg.metrics_port }).catch(
            async (err: unknown) => {
              stopImaEmulator()
              await app.close()
              metrics.stop()
              throw new AgentStartError(`cannot listen on metrics_port ${cfg.metrics_port}`, { cause: err })
            },
          )
        : null
    const port = app.port()
    log.info(`agent ${uuid} listening on ${cfg.enable_agent_mtls ? 'https' : 'http'}://${cfg.ip}:${port}`)

    return {
      uuid,
      app,
      port,
      metricsPort: probeApp ? probeApp.port() : null,
      akPublic: ak.publicArea,
      ekPublic: ek.publicArea,
      akReused,
      mtlsCertPem: mtls.certPem,
      payloadPubkeyPem: payloadKey.publicPem,
      payload,
      secureDir: secureMount,
      revocation,
      quotes,
      tpm,
      lock,
      akHandle: ak.handle,
      async close() {
        if (closed) return
        closed = true
        stopImaEmulator()
        await probeApp?.close()
        await app.close()
        metrics.stop()
        await payload.whenIdle()
        await revocation.whenIdle()
        await quotes.closeMeasurementFiles()
        await secureMount.close()
        await lock.run(releaseTpm)
        log.info('agent stopped; secure directory wiped, transient TPM objects flushed')
      },
    }
  } catch (err) {
    await releaseDeviceId?.()
    await secure?.close()
    await lock.run(releaseTpm)
    throw err
  }
}
