/**
 * Agent → registrar (keylime-protocols.md §B step 6, keylime-api.md §0.4, §2): version negotiation, `POST
 * /v{ver}/agents/{uuid}` with the TPM identity, then `PUT /v{ver}/agents/{uuid}` with the auth_tag computed from
 * the activated credential. Transient failures (unreachable, 5xx) are retried with exponential backoff; a 4xx
 * answer (e.g. 403 for a UUID held by another TPM) is final.
 */
import { createHmac } from 'node:crypto'
import { request as httpRequest } from 'node:http'
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

/**
 * One JSON call over node:http: two plain-HTTP requests need no HTTP client library, and neither undici nor Node's
 * fetch (which loads its own copy of undici) is then resident in the agent.
 */
function jsonCall(
  method: 'GET' | 'POST' | 'PUT',
  url: string,
  body: unknown,
  timeoutMs: number,
): Promise<{ status: number; json: Record<string, unknown> | undefined }> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body), 'utf8')
  return new Promise((resolve, reject) => {
    const unreachable = (err: Error) =>
      reject(
        new RegistrationError(`registrar unreachable at ${url}: ${err.message}`, {
          retryable: true,
          cause: err,
        }),
      )
    const req = httpRequest(
      url,
      {
        method,
        timeout: timeoutMs,
        headers: payload
          ? { 'content-type': 'application/json', 'content-length': String(payload.length) }
          : {},
      },
      (res) => {
        const chunks: Buffer[] = []
        let size = 0
        res.on('data', (c: Buffer) => {
          size += c.length
          // a registrar reply is a small envelope; anything larger is not one
          if (size > MAX_REPLY_BYTES) req.destroy(new Error(`reply larger than ${MAX_REPLY_BYTES} bytes`))
          else chunks.push(c)
        })
        res.on('error', unreachable)
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8')
          let json: Record<string, unknown> | undefined
          try {
            json = text ? (JSON.parse(text) as Record<string, unknown>) : undefined
          } catch {
            json = undefined
          }
          resolve({ status: res.statusCode ?? 0, json })
        })
      },
    )
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)))
    req.on('error', unreachable)
    req.end(payload)
  })
}

const MAX_REPLY_BYTES = 1 << 20

function statusText(json: Record<string, unknown> | undefined): string {
  return typeof json?.status === 'string' ? json.status : '(no status)'
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
export async function negotiateRegistrarVersion(baseUrl: string, timeoutMs: number): Promise<string | null> {
  const { status, json } = await jsonCall('GET', `${baseUrl}/version`, undefined, timeoutMs)
  if (status !== 200) return null
  const results = json?.results as { current_version?: unknown; supported_versions?: unknown } | undefined
  const ours: readonly string[] = AGENT_API_VERSIONS
  if (typeof results?.current_version === 'string' && ours.includes(results.current_version)) {
    return results.current_version
  }
  const theirs = Array.isArray(results?.supported_versions) ? (results.supported_versions as unknown[]) : []
  const common = ours.filter((v) => theirs.includes(v)).sort(compareVersions)
  return common[common.length - 1] ?? null
}

export class RegistrarConnection {
  readonly baseUrl: string
  private readonly timeoutMs: number
  private readonly log: Logger
  version: string | null = null

  constructor(opts: { ip: string; port: number; timeoutMs?: number; log: Logger }) {
    const host = opts.ip.includes(':') && !opts.ip.startsWith('[') ? `[${opts.ip}]` : opts.ip
    this.baseUrl = `http://${host}:${opts.port}`
    this.timeoutMs = opts.timeoutMs ?? 30_000
    this.log = opts.log
  }

  private async versionsToTry(): Promise<string[]> {
    if (this.version) return [this.version]
    const v = await negotiateRegistrarVersion(this.baseUrl, this.timeoutMs)
    return v ? [v] : [...AGENT_API_VERSIONS].sort(compareVersions).reverse()
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
      const body = req.deviceIdentity
        ? { ...base, ...req.deviceIdentity.fields, ...(await req.deviceIdentity.certify(version)) }
        : base
      const { status, json } = await jsonCall(
        'POST',
        `${this.baseUrl}/v${version}/agents/${encodeURIComponent(req.uuid)}`,
        body,
        this.timeoutMs,
      )
      if (status === 200) {
        const blob = (json?.results as { blob?: unknown } | undefined)?.blob
        if (typeof blob !== 'string') {
          throw new RegistrationError('registrar reply has no credential blob', {
            httpStatus: status,
            retryable: false,
          })
        }
        this.version = version
        this.log.info(`registered agent ${req.uuid} with registrar ${this.baseUrl} (API ${version})`)
        return blob
      }
      last = new RegistrationError(`registrar refused registration: ${status} ${statusText(json)}`, {
        httpStatus: status,
        retryable: status >= 500,
      })
      if (status === 403 || status >= 500) break // 403 is final; 5xx is retried with backoff by the caller
    }
    throw last ?? new RegistrationError('no registrar API version to try', { retryable: false })
  }

  /** PUT the auth_tag; the registrar deletes the record on a mismatch. */
  async activate(uuid: string, authTag: string): Promise<void> {
    const version = this.version ?? (await this.versionsToTry())[0]
    const { status, json } = await jsonCall(
      'PUT',
      `${this.baseUrl}/v${version}/agents/${encodeURIComponent(uuid)}`,
      { auth_tag: authTag },
      this.timeoutMs,
    )
    if (status !== 200) {
      throw new RegistrationError(`registrar refused activation: ${status} ${statusText(json)}`, {
        httpStatus: status,
        retryable: status >= 500,
      })
    }
    this.log.info(`agent ${uuid} activated`)
  }
}

/** auth_tag = hex(HMAC-SHA384(key = ASCII(b64(challenge)), msg = ASCII(uuid))) (protocols §B, activation). */
export function activationAuthTag(challenge: Uint8Array, uuid: string): string {
  const key = Buffer.from(Buffer.from(challenge).toString('base64'), 'utf8')
  return createHmac('sha384', key).update(uuid, 'utf8').digest('hex')
}
