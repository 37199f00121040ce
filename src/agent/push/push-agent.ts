/**
 * The push agent (keylime-protocols.md §H): registers like the pull agent (HTTPS to the registrar when
 * `registrar_tls_enabled`), then loops: prove possession of the AK (TPM2_Certify of the AK by itself over the
 * verifier's challenge) for a bearer token, offer capabilities, send the evidence the verifier chose, sleep
 * `seconds_to_next_attestation`. It opens no port. Failures back off exponentially (`exponential_backoff_*`);
 * after `exponential_backoff_max_retries` failures in a row it waits `attestation_interval_seconds` and starts the
 * backoff over, so it never gives up: a verifier that restarts, or forgets the session, is simply met again.
 */
import { readFileSync } from 'node:fs'
import type { ClientTls } from '../../api/client.ts'
import { KeylimeError } from '../../common/errors.ts'
import type { Logger } from '../../common/log.ts'
import type { HashAlgName, SignAlgName } from '../agent-tpm.ts'
import type { AgentConfig } from '../config.ts'
import { type AgentDeviceIdentity, prepareDeviceIdentity } from '../device-id.ts'
import { type ImaNgFormatter, imaEmulatorPaths, startImaEmulator } from '../ima-emulator.ts'
import { ImaMeasurementList } from '../ima-list.ts'
import { backoffPolicyOf, RegistrarConnection, RegistrationError } from '../registration.ts'
import {
  type AgentTpmDeps,
  deviceIdentityRequest,
  establishTpmIdentity,
  openAgentTpm,
  registerTpmIdentity,
  tpmIdentityOptionsOf,
} from '../tpm-identity.ts'
import { collectCapabilities, collectEvidence, type EvidenceSource, readBootTime } from './evidence.ts'
import { PushVerifierClient, VerifierAnswerError } from './verifier-client.ts'

export class PushAgentError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_PUSH_AGENT', message, options)
  }
}

/** What start-up needs beyond the configuration (the real ones come from `defaultAgentDeps()`). */
export type PushAgentDeps = AgentTpmDeps

export interface PushAgentOptions {
  config: AgentConfig
  deps: PushAgentDeps
  log: Logger
  /** Verifier API version in paths (upstream `--api-version`, default 3.0). */
  apiVersion?: string
  /** Per-request timeout in ms (upstream `--timeout`, default 5000). */
  timeoutMs?: number
  /** Agent id to attest as, instead of the registered UUID (upstream `--agent-identifier`). */
  agentIdentifier?: string
  /** Skip registration (the agent is registered already). */
  register?: boolean
  imaFormatter?: ImaNgFormatter
}

/** Counters a caller (the CLI's log, tests) can read. */
export interface PushAgentStats {
  /** Sessions that ended with a token. */
  sessions: number
  /** Evidence accepted by the verifier (202). */
  attestations: number
  /** Failed rounds in a row (0 after a 202). */
  consecutiveFailures: number
  lastError: string | null
  /** Index of the last attestation the verifier accepted evidence for. */
  lastAttestationId: string | null
}

export interface RunningPushAgent {
  uuid: string
  /** The id the agent attests as (`uuid` unless `--agent-identifier`). */
  agentId: string
  akPublic: Uint8Array
  stats: PushAgentStats
  close(): Promise<void>
}

const DEFAULT_API_VERSION = '3.0'

/** An interruptible sleep: `close()` wakes the loop at once. */
class Sleeper {
  private wake: (() => void) | null = null
  private timer: NodeJS.Timeout | null = null
  stopped = false

  sleep(ms: number): Promise<void> {
    if (this.stopped) return Promise.resolve()
    return new Promise((done) => {
      this.wake = done
      this.timer = setTimeout(done, Math.max(0, ms))
    })
  }

  stop(): void {
    this.stopped = true
    if (this.timer) clearTimeout(this.timer)
    this.wake?.()
  }
}

function readPems(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    throw new PushAgentError(`${what} ${path} cannot be read`, { cause: err })
  }
}

function verifierTls(cfg: AgentConfig, insecure: boolean): ClientTls {
  if (insecure) return { insecure: true }
  return { ca: readPems(cfg.verifier_tls_ca_cert, 'verifier_tls_ca_cert') }
}

/** `/v3.0/agents/x/attestations/1` from a `Location` that may be a whole URL. */
function locationPath(location: string): string {
  return /^https?:\/\//i.test(location) ? new URL(location).pathname : location
}

function data(body: Record<string, unknown>): { id?: unknown; attributes: Record<string, unknown> } {
  const d = body.data as { id?: unknown; attributes?: unknown } | undefined
  const attributes = d?.attributes
  if (typeof attributes !== 'object' || attributes === null)
    throw new VerifierAnswerError('the verifier answered without data.attributes', { kind: 'transient' })
  return { id: d?.id, attributes: attributes as Record<string, unknown> }
}

export async function startPushAgent(opts: PushAgentOptions): Promise<RunningPushAgent> {
  const { config: cfg, deps, log } = opts
  const hashAlg = cfg.tpm_hash_alg as HashAlgName
  const signAlg = cfg.tpm_signing_alg as SignAlgName
  const insecure = cfg.tls_accept_invalid_certs
  if (insecure)
    log.warn('INSECURE: tls_accept_invalid_certs: the verifier and registrar are not authenticated')
  const apiVersion = (opts.apiVersion ?? DEFAULT_API_VERSION).replace(/^v/, '')
  if (!/^3\.\d+$|^3$/.test(apiVersion))
    throw new PushAgentError(`--api-version ${apiVersion}: the push agent speaks API 3.x only`)
  const verifier = new PushVerifierClient({
    baseUrl: `${cfg.verifier_url.replace(/\/+$/, '')}/v${apiVersion}`,
    tls: verifierTls(cfg, insecure),
    timeoutMs: opts.timeoutMs ?? 5000,
  })
  const policy = backoffPolicyOf(cfg)

  const { tpm, lock, transient, release: releaseTpm } = await openAgentTpm(cfg, deps.openTpm)
  const sleeper = new Sleeper()
  let stopEmulator: () => void = () => undefined
  const ima = new ImaMeasurementList(cfg.ima_ml_path)
  try {
    const stale = await lock.run(() => tpm.flushStaleObjects())
    if (stale > 0) log.info(`flushed ${stale} transient TPM object(s) left loaded before this agent started`)
    const identity = await establishTpmIdentity(
      tpm,
      lock,
      tpmIdentityOptionsOf(cfg),
      deps.publicKeyPem,
      log,
      transient,
    )
    const banks = await lock.run(() => tpm.pcrBanks())
    const bank = banks.find((b) => b.hashAlg === hashAlg)
    if (!bank || bank.pcrs.length === 0)
      throw new PushAgentError(`the TPM has no active ${hashAlg} PCR bank (tpm_hash_alg)`)

    const emulatorPaths = imaEmulatorPaths(cfg.ima_emulator_paths)
    if (emulatorPaths.length > 0) {
      if (!opts.imaFormatter)
        throw new PushAgentError('ima_emulator_paths is set but no IMA formatter was given')
      stopEmulator = await startImaEmulator(
        { tpm, lock, listPath: cfg.ima_ml_path, hashAlg, format: opts.imaFormatter },
        emulatorPaths,
        log,
      )
    }

    if (opts.register !== false) {
      await registerUntilDone()
    }

    async function registerUntilDone(): Promise<void> {
      // IAK/IDevID (TCG device identity) as the pull agent registers them; released once registered
      const deviceId = cfg.enable_iak_idevid ? await prepareDeviceIdentity(cfg, tpm, lock, log) : null
      try {
        await registerWithRetries(deviceId)
      } finally {
        await deviceId?.release()
      }
    }

    async function registerWithRetries(deviceId: AgentDeviceIdentity | null): Promise<void> {
      const registrar = new RegistrarConnection({
        ip: cfg.registrar_ip,
        port: cfg.registrar_tls_enabled ? cfg.registrar_tls_port : cfg.registrar_port,
        ...(cfg.registrar_tls_enabled
          ? {
              tls: insecure
                ? { insecure: true }
                : { ca: readPems(cfg.registrar_tls_ca_cert, 'registrar_tls_ca_cert') },
            }
          : {}),
        ...(registrarVersions(cfg.registrar_api_versions) ?? {}),
        log,
      })
      try {
        for (;;) {
          try {
            await registerTpmIdentity({
              tpm,
              lock,
              identity,
              registrar,
              request: {
                // no listener: the address fields only satisfy the registration schema
                mtlsCert: 'disabled',
                ip: cfg.contact_ip,
                port: cfg.contact_port,
                ...deviceIdentityRequest(deviceId, identity),
              },
              decodeCredentialBlob: deps.decodeCredentialBlob,
              policy,
              log,
              sleep: (ms) => sleeper.sleep(ms),
            })
            return
          } catch (err) {
            // A refusal (403: the UUID belongs to another TPM) will not change by retrying; the rest is retried forever.
            if (!(err instanceof RegistrationError) || !err.retryable || sleeper.stopped) throw err
            log.warn(
              `registration still failing (${err.message}); trying again in ${cfg.attestation_interval_seconds} s`,
            )
            await sleeper.sleep(cfg.attestation_interval_seconds * 1000)
            if (sleeper.stopped) throw err
          }
        }
      } finally {
        await registrar.close()
      }
    }

    const agentId = opts.agentIdentifier ?? identity.uuid
    const bootTime = await readBootTime()
    const source: EvidenceSource = {
      tpm,
      lock,
      akHandle: identity.ak.handle,
      akPublic: identity.ak.publicArea,
      hashAlg,
      signAlg,
      pcrs: bank.pcrs,
      ima,
      uefiLogPath: cfg.measuredboot_ml_path,
      serverIdentifier: cfg.certification_keys_server_identifier,
      uefiEvidenceVersion: cfg.uefi_logs_evidence_version,
      bootTime,
    }
    const stats: PushAgentStats = {
      sessions: 0,
      attestations: 0,
      consecutiveFailures: 0,
      lastError: null,
      lastAttestationId: null,
    }
    let token: { value: string; expiresAt: number } | null = null
    const agentPath = `/agents/${encodeURIComponent(agentId)}`

    async function authenticate(): Promise<{ value: string; expiresAt: number }> {
      const created = await verifier.request('POST', '/sessions', {
        body: {
          data: {
            type: 'session',
            attributes: {
              agent_id: agentId,
              authentication_supported: [{ authentication_class: 'pop', authentication_type: 'tpm_pop' }],
            },
          },
        },
      })
      const session = data(created.body)
      const requested = session.attributes.authentication_requested
      const pop = Array.isArray(requested)
        ? (requested as Record<string, unknown>[]).find((r) => r?.authentication_type === 'tpm_pop')
        : undefined
      const challengeB64 = (pop?.chosen_parameters as { challenge?: unknown } | undefined)?.challenge
      if (typeof session.id !== 'string' || typeof challengeB64 !== 'string')
        throw new VerifierAnswerError('the verifier sent no session id or PoP challenge', {
          kind: 'transient',
        })
      const challenge = Buffer.from(challengeB64, 'base64')
      if (challenge.length === 0 || challenge.length > 64)
        throw new VerifierAnswerError('the PoP challenge must decode to 1-64 bytes', { kind: 'transient' })
      const certified = await lock.run(() =>
        tpm.certify({
          objectHandle: identity.ak.handle,
          signHandle: identity.ak.handle,
          qualifyingData: challenge,
        }),
      )
      const proved = await verifier.request('PATCH', `/sessions/${encodeURIComponent(session.id)}`, {
        body: {
          data: {
            type: 'session',
            id: session.id,
            attributes: {
              agent_id: agentId,
              authentication_provided: [
                {
                  authentication_class: 'pop',
                  authentication_type: 'tpm_pop',
                  data: {
                    message: Buffer.from(certified.attest).toString('base64'),
                    signature: Buffer.from(certified.signature).toString('base64'),
                  },
                },
              ],
            },
          },
        },
      })
      const result = data(proved.body).attributes
      if (result.evaluation !== 'pass' || typeof result.token !== 'string') {
        // 200 with evaluation "fail": not enrolled at this verifier, or the challenge expired
        throw new VerifierAnswerError(
          'the verifier did not accept the proof of possession (is the agent enrolled?)',
          {
            kind: 'refused',
            reason: 'pop_evaluation_fail',
          },
        )
      }
      const expires =
        typeof result.token_expires_at === 'string' ? Date.parse(result.token_expires_at) : Number.NaN
      stats.sessions++
      log.info(`authenticated to the verifier (session ${session.id})`)
      return { value: result.token, expiresAt: Number.isNaN(expires) ? Number.POSITIVE_INFINITY : expires }
    }

    /**
     * A verifier that extends tokens on passing attestations (`extend_token_on_attestation`) tells the current expiry
     * in `meta.token_expires_at` of its 201 and 202 (Keylime TS; upstream tells none, and its agents authenticate
     * again at the first expiry). An expiry only moves later: a verifier of a group may know an older one for a while.
     */
    function learnTokenExpiry(body: { meta?: unknown }): void {
      const until = (body.meta as { token_expires_at?: unknown } | undefined)?.token_expires_at
      const ms = typeof until === 'string' ? Date.parse(until) : Number.NaN
      if (token !== null && !Number.isNaN(ms) && ms > token.expiresAt) token = { ...token, expiresAt: ms }
    }

    /** One round: capabilities, evidence; returns the seconds the verifier asks us to wait. */
    async function attestOnce(): Promise<number | undefined> {
      const current = token !== null && Date.now() < token.expiresAt ? token : await authenticate()
      token = current
      const capabilities = await collectCapabilities(source)
      const created = await verifier.request('POST', `${agentPath}/attestations`, {
        token: current.value,
        body: { data: { type: 'attestation', attributes: capabilities } },
      })
      learnTokenExpiry(created.body)
      const attestation = data(created.body)
      const evidence = await collectEvidence(attestation.attributes.evidence_requested, source)
      const target = created.location
        ? locationPath(created.location)
        : `${agentPath}/attestations/${attestation.id !== undefined && attestation.id !== null ? encodeURIComponent(String(attestation.id)) : 'latest'}`
      const submitted = await verifier.request('PATCH', target, {
        token: current.value,
        body: {
          data: { type: 'attestation', attributes: { evidence_collected: evidence } },
        },
      })
      learnTokenExpiry(submitted.body)
      stats.attestations++
      // upstream's verifier names the attestation only in its Location
      stats.lastAttestationId =
        typeof attestation.id === 'string' || typeof attestation.id === 'number'
          ? String(attestation.id)
          : (target.split('/').pop() ?? null)
      const meta = submitted.body.meta as { seconds_to_next_attestation?: unknown } | undefined
      const next = meta?.seconds_to_next_attestation
      const kinds = evidence.map((e) => String(e.evidence_type)).join(', ')
      log.info(
        `evidence for attestation ${stats.lastAttestationId ?? '?'} (${kinds}) accepted by the verifier`,
      )
      return typeof next === 'number' && Number.isFinite(next) ? next : undefined
    }

    const loop = (async () => {
      let reauthenticatedAfter401 = false
      while (!sleeper.stopped) {
        try {
          const next = await attestOnce()
          stats.consecutiveFailures = 0
          stats.lastError = null
          reauthenticatedAfter401 = false
          const wait = next ?? cfg.attestation_interval_seconds
          await sleeper.sleep(Math.max(0, wait) * 1000)
        } catch (err) {
          if (sleeper.stopped) break
          const answer = err instanceof VerifierAnswerError ? err : null
          if (answer?.kind === 'unauthenticated') {
            token = null
            // once at once (the token expired or the verifier forgot it), then like any other failure
            if (!reauthenticatedAfter401) {
              reauthenticatedAfter401 = true
              log.info('the verifier no longer accepts the token; authenticating again')
              continue
            }
          }
          if (answer?.kind === 'throttled') {
            log.info(`${answer.message}; waiting ${answer.retryAfterSeconds} s as asked`)
            await sleeper.sleep((answer.retryAfterSeconds ?? 1) * 1000)
            continue
          }
          stats.consecutiveFailures++
          stats.lastError = (err as Error).message
          const n = stats.consecutiveFailures
          const wait =
            n > policy.maxRetries
              ? cfg.attestation_interval_seconds * 1000
              : Math.min(policy.initialDelayMs * 2 ** (n - 1), policy.maxDelayMs)
          if (n > policy.maxRetries) stats.consecutiveFailures = 0
          log.warn(`attestation round failed (${(err as Error).message}); next try in ${wait} ms`)
          await sleeper.sleep(wait)
        }
      }
    })()
    log.info(`push agent ${agentId} attesting to ${verifier.baseUrl}`)

    let closed = false
    return {
      uuid: identity.uuid,
      agentId,
      akPublic: identity.ak.publicArea,
      stats,
      async close() {
        if (closed) return
        closed = true
        sleeper.stop()
        stopEmulator()
        await loop
        await verifier.close()
        await ima.close()
        await lock.run(releaseTpm)
        log.info('push agent stopped; transient TPM objects flushed')
      },
    }
  } catch (err) {
    sleeper.stop()
    stopEmulator()
    await verifier.close()
    await lock.run(releaseTpm)
    throw err
  }
}

/** `registrar_api_versions`: `default` (every version this agent speaks) or a list. */
function registrarVersions(setting: string): { versions: string[] } | null {
  const v = setting.trim()
  if (v === '' || v === 'default') return null
  const list = v
    .replace(/[[\]'"]/g, '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
  if (list.length === 0) throw new PushAgentError(`registrar_api_versions '${setting}' names no version`)
  return { versions: list }
}
