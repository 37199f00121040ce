/**
 * Agent → registrar (keylime-protocols.md §B step 6, keylime-api.md §0.4, §2): version negotiation, `POST
 * /v{ver}/agents/{uuid}` with the TPM identity, then `PUT /v{ver}/agents/{uuid}` with the auth_tag computed from
 * the activated credential. Transient failures (unreachable, 5xx, 429 from a registrar's rate limit) are retried
 * with exponential backoff; any other 4xx answer (e.g. 403 for a UUID held by another TPM) is final.
 */
import { createHmac } from 'node:crypto'
import { type ClientTls, type JsonDispatcher, nodeHttpDispatcher, PeerError } from '../api/client.ts'
import { RegistrarClient } from '../api/registrar/client.ts'
import type { VersionResults } from '../api/registrar/schemas.ts'
import { AGENT_API_VERSIONS, compareVersions } from '../api/versions.ts'
import { KeylimeError } from '../common/errors.ts'
import type { Logger } from '../common/log.ts'

export class RegistrationError extends KeylimeError {
  readonly httpStatus: number | undefined
  readonly retryable: boolean
  constructor(message: string, opts: { httpStatus?: number; retryable: boolean; cause?: unknown }) {
    super('ERR_AGENT_REGISTRATION', message, { cause: opts.cause })
    this.httpStatus = opts.httpStatus
    this.retryable = opts.retryable
  }
}

export interface BackoffPolicy {
  initialDelayMs: number
  maxRetries: number
  maxDelayMs: number
}

/** The agent's `exponential_backoff_*` settings. */
export function backoffPolicyOf(cfg: {
  exponential_backoff_initial_delay: number
  exponential_backoff_max_retries: number
  exponential_backoff_max_delay: number
}): BackoffPolicy {
  return {
    initialDelayMs: cfg.exponential_backoff_initial_delay,
    maxRetries: cfg.exponential_backoff_max_retries,
    maxDelayMs: cfg.exponential_backoff_max_delay,
  }
}

export interface RegistrationRequest {
  uuid: string
  /** b64 TPM2B_PUBLIC */
  ekTpm: string
  /** PEM or null */
  ekCert: string | null
  /** b64 TPM2B_PUBLIC */
  aikTpm: string
  /** PEM, or 'disabled' without mTLS */
  mtlsCert: string
  ip: string
  port: number
  /**
   * PEM bundle of the EK CA chain read from NV (Keylime TS extension `ek_ca_chain`, ignored by registrars that do
   * not know it); null or absent when the TPM holds none.
   */
  ekCaChain?: string | null
  /** IAK/IDevID fields, and the AK certification made for the API version being tried (its qualifying data). */
  deviceIdentity?: {
    fields: { iak_tpm: string; idevid_tpm: string; iak_cert: string; idevid_cert: string }
    certify(version: string): Promise<{ iak_attest: string; iak_sign: string }>
  }
}

export async function withBackoff<T>(
  what: string,
  policy: BackoffPolicy,
  log: Logger,
  fn: () => Promise<T>,
  sleep: (ms: number) => Promise<void> = (ms) => new Promise((r) => setTimeout(r, ms)),
): Promise<T> {
  let delay = policy.initialDelayMs
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn()
    } catch (err) {
      const retryable = err instanceof RegistrationError ? err.retryable : false
      if (!retryable || attempt >= policy.maxRetries) throw err
      log.warn(
        `${what} failed (${(err as Error).message}); retry ${attempt + 1}/${policy.maxRetries} in ${delay} ms`,
      )
      await sleep(delay)
      delay = Math.min(delay * 2, policy.maxDelayMs)
    }
  }
}

/**
 * Chooses the registrar API version: its `current_version` if we enable it, else the newest of ours it lists.
 * Returns null when `/version` is unavailable (the caller then tries versions newest-first).
 */
export async function negotiateRegistrarVersion(
  client: RegistrarClient,
  ours: readonly string[] = AGENT_API_VERSIONS,
): Promise<string | null> {
  let results: VersionResults
  try {
    results = await client.getVersion()
  } catch (err) {
    if (err instanceof PeerError && err.status === undefined)
      throw new RegistrationError(`registrar unreachable: ${err.message}`, { retryable: true, cause: err })
    return null
  }
  if (ours.includes(results.current_version)) return results.current_version
  const common = ours.filter((v) => results.supported_versions.includes(v)).sort(compareVersions)
  return common[common.length - 1] ?? null
}

/**
 * A registrar answer as a registration error: unreachable, 5xx and 429 (the registrar limits requests per source
 * address) are retried, any other refusal is final.
 */
function refusal(what: string, err: unknown): RegistrationError {
  if (!(err instanceof PeerError)) throw err
  if (err.status === undefined)
    return new RegistrationError(`registrar unreachable: ${err.message}`, { retryable: true, cause: err })
  return new RegistrationError(
    `registrar refused ${what}: ${err.status} ${err.peerStatus ?? '(no status)'}`,
    {
      httpStatus: err.status,
      retryable: err.status >= 500 || err.status === 429,
      cause: err,
    },
  )
}

export class RegistrarConnection {
  readonly baseUrl: string
  private readonly client: RegistrarClient
  private readonly dispatcher: JsonDispatcher
  private readonly log: Logger
  private readonly versions: readonly string[]
  version: string | null = null

  /**
   * Plain HTTP, as the pull agent always talks to the registrar; HTTPS when `tls` is given (the push agent with
   * `registrar_tls_enabled`). `versions` limits the API versions tried (`registrar_api_versions`).
   */
  constructor(opts: {
    ip: string
    port: number
    tls?: ClientTls
    versions?: readonly string[]
    timeoutMs?: number
    log: Logger
  }) {
    const host = opts.ip.includes(':') && !opts.ip.startsWith('[') ? `[${opts.ip}]` : opts.ip
    this.baseUrl = `${opts.tls ? 'https' : 'http'}://${host}:${opts.port}`
    // node:http(s) rather than undici for these few calls: undici would stay resident in the agent.
    this.dispatcher = nodeHttpDispatcher(opts.tls, { connections: 1 })
    this.client = new RegistrarClient({
      baseUrl: this.baseUrl,
      timeoutMs: opts.timeoutMs ?? 30_000,
      dispatcher: this.dispatcher,
    })
    this.versions = opts.versions ?? AGENT_API_VERSIONS
    this.log = opts.log
  }

  private async versionsToTry(): Promise<string[]> {
    if (this.version) return [this.version]
    const v = await negotiateRegistrarVersion(this.client, this.versions)
    return v ? [v] : [...this.versions].sort(compareVersions).reverse()
  }

  /** POST the identity; returns the b64 MakeCredential blob. */
  async register(req: RegistrationRequest): Promise<string> {
    const base = {
      aik_tpm: req.aikTpm,
      ek_tpm: req.ekTpm,
      ekcert: req.ekCert,
      ...(req.ekCaChain ? { ek_ca_chain: req.ekCaChain } : {}),
      mtls_cert: req.mtlsCert,
      ip: req.ip,
      port: req.port,
    }
    let last: RegistrationError | null = null
    for (const version of await this.versionsToTry()) {
      try {
        const body = req.deviceIdentity
          ? { ...base, ...req.deviceIdentity.fields, ...(await req.deviceIdentity.certify(version)) }
          : base
        const { blob } = await this.client.atVersion(version).register(req.uuid, body)
        this.version = version
        this.log.info(`registered agent ${req.uuid} with registrar ${this.baseUrl} (API ${version})`)
        return blob
      } catch (err) {
        last = refusal('registration', err)
        // 403 is final; unreachable, 5xx and 429 are retried with backoff by the caller
        if (last.retryable || last.httpStatus === 403) break
      }
    }
    throw last ?? new RegistrationError('no registrar API version to try', { retryable: false })
  }

  /** PUT the auth_tag; a mismatch is refused and changes nothing at our registrar (upstream's deletes the record). */
  async activate(uuid: string, authTag: string): Promise<void> {
    const version =
      this.version ?? (await this.versionsToTry())[0] ?? this.versions[0] ?? AGENT_API_VERSIONS[0]
    try {
      await this.client.atVersion(version).activate(uuid, authTag)
    } catch (err) {
      throw refusal('activation', err)
    }
    this.log.info(`agent ${uuid} activated`)
  }

  async close(): Promise<void> {
    await this.client.close()
    await this.dispatcher.close()
  }
}

/** auth_tag = hex(HMAC-SHA384(key = ASCII(b64(challenge)), msg = ASCII(uuid))) (protocols §B, activation). */
export function activationAuthTag(challenge: Uint8Array, uuid: string): string {
  const key = Buffer.from(Buffer.from(challenge).toString('base64'), 'utf8')
  return createHmac('sha384', key).update(uuid, 'utf8').digest('hex')
}
