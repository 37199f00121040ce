/**
 * Push sessions (keylime-api.md §4.1, keylime-protocols.md §H.3): a challenge, its TPM proof of possession, and the
 * bearer token that authenticates the agent's attestation requests. Everything lives in the `sessions` table, so
 * any verifier of a group answers any step; the token itself is never stored (see tokens.ts).
 */
import { hash } from 'node:crypto'
import type { Logger } from '../../common/log.ts'
import type { PushRepository, SessionRow } from '../../db/push-repository.ts'
import type { VerifierRepository } from '../../db/verifier-repository.ts'
import type { PushOptions } from '../options.ts'
import type { AkKeys } from './ak-keys.ts'
import { iso, PushApiError } from './json-api.ts'
import { verifyProofOfPossession } from './pop.ts'
import { NO_PUSH_METRICS, type PushMetrics } from './push-metrics.ts'
import { newChallenge, newSessionId, newToken, sessionIdOfToken, tokenMatches } from './tokens.ts'

/**
 * How long a checked token is trusted without reading its session again. Within a process the cache is exact (a new
 * session of the agent, an extension, a purge all update it); another verifier's changes reach it within this time:
 * an agent's old token may keep working here that long after the agent authenticated again elsewhere (the agent
 * itself has dropped it), and an extension made elsewhere is seen once the entry is read again.
 */
export const SESSION_CACHE_MS = 15_000
const MAX_CACHED_SESSIONS = 200_000

interface CachedSession {
  agentId: string
  sessionId: string
  /** ISO time, as stored. */
  tokenExpiresAt: string
  expiresMs: number
  checkedUntil: number
}

export interface AuthMethod {
  authentication_class?: unknown
  authentication_type?: unknown
}

export interface ProvidedAuth extends AuthMethod {
  data?: { message?: unknown; signature?: unknown }
}

export interface AuthenticatedAgent {
  agentId: string
  sessionId: string
  /** When the token expires, as far as this verifier knows (extended by passing attestations). */
  tokenExpiresAt: string
}

const b64 = (b: Uint8Array | null) => (b ? Buffer.from(b).toString('base64') : '')
const isPop = (m: AuthMethod) => m.authentication_class === 'pop' && m.authentication_type === 'tpm_pop'

function decodeB64(v: unknown): Buffer | null {
  if (typeof v !== 'string' || v === '') return null
  const b = Buffer.from(v, 'base64')
  return b.toString('base64') === v ? b : null
}

export class PushSessions {
  /** Checked tokens by their SHA-256 (the token itself is not kept). */
  private readonly cache = new Map<string, CachedSession>()
  /** The cache key of each agent's token (one active session per agent). */
  private readonly keyOfAgent = new Map<string, string>()
  private readonly metrics: PushMetrics

  constructor(
    private readonly deps: {
      push: PushRepository
      agents: VerifierRepository
      options: PushOptions
      log: Logger
      now: () => number
      /** Enrolled AKs parsed (shared with the attestations). */
      aks: AkKeys
      metrics?: PushMetrics
    },
  ) {
    this.metrics = deps.metrics ?? NO_PUSH_METRICS
  }

  /** `POST /sessions`: a fresh challenge for the agent (its enrolment is checked when it answers, as upstream). */
  async create(agentId: string, supported: readonly AuthMethod[]) {
    if (!supported.some(isPop))
      throw new PushApiError(400, 'authentication_supported must offer pop/tpm_pop', {
        pointer: '/data/attributes/authentication_supported',
      })
    const now = this.deps.now()
    const sessionId = newSessionId()
    const nonce = newChallenge()
    await this.deps.push.insertSession({
      session_id: sessionId,
      agent_id: agentId,
      active: 0,
      nonce,
      hash_algorithm: 'sha256',
      signing_scheme: 'rsassa',
      nonce_created_at: iso(now),
      nonce_expires_at: iso(now + this.deps.options.nonceLifetimeMs),
    })
    this.metrics.session('created')
    return {
      data: {
        type: 'session',
        id: sessionId,
        attributes: {
          agent_id: agentId,
          authentication_requested: [
            {
              authentication_class: 'pop',
              authentication_type: 'tpm_pop',
              chosen_parameters: { challenge: nonce.toString('base64') },
            },
          ],
          created_at: iso(now),
          challenges_expire_at: iso(now + this.deps.options.nonceLifetimeMs),
        },
      },
    }
  }

  /**
   * `PATCH /sessions/:id`: checks the proof of possession. 200 with a token on a pass; 200 `evaluation: fail` when the
   * challenge expired or the agent is not enrolled; 401 `evaluation: fail` when the proof does not verify. A
   * challenge is answered once: a replayed or second answer finds no open session (404).
   */
  async answer(
    sessionId: string,
    agentId: string,
    provided: readonly ProvidedAuth[],
  ): Promise<{ status: 200 | 401; body: unknown }> {
    const session = await this.deps.push.getSession(sessionId)
    if (!session || session.token_hash !== null) throw new PushApiError(404, 'Session not found')
    if (session.agent_id !== agentId) throw new PushApiError(400, 'Agent ID mismatch')
    const now = this.deps.now()
    const pop = provided.find(isPop)
    const message = decodeB64(pop?.data?.message)
    const signature = decodeB64(pop?.data?.signature)
    const failed = async (status: 200 | 401, reason: string) => {
      await this.deps.push.failSession(sessionId, iso(now))
      this.metrics.session('refused')
      this.deps.log.warn({ agentId, sessionId, reason }, 'push session: proof of possession refused')
      return { status, body: this.render(session, now, 'fail', message, signature) }
    }
    if ((session.nonce_expires_at ?? '') < iso(now)) return failed(200, 'challenge expired')
    const agent = await this.deps.agents.getAgent(agentId)
    if (!agent?.ak_tpm) return failed(200, 'agent not enrolled')
    if (!message || !signature) return failed(401, 'no tpm_pop message and signature')
    let result: ReturnType<typeof verifyProofOfPossession>
    try {
      const akTpm = new Uint8Array(Buffer.from(agent.ak_tpm, 'base64'))
      result = verifyProofOfPossession({
        message,
        signature,
        challenge: new Uint8Array(session.nonce ?? []),
        akTpm,
        akKey: this.deps.aks.get(agent.ak_tpm),
      })
    } catch (err) {
      result = { ok: false, reason: `enrolled AK unusable: ${(err as Error).message}` }
    }
    if (!result.ok) return failed(401, result.reason)
    const { token, hash, salt } = newToken(sessionId)
    const tokenExpires = iso(now + this.deps.options.sessionLifetimeMs)
    const activated = await this.deps.push.activateSession(sessionId, agentId, {
      token_hash: hash,
      token_salt: salt,
      ak_attest: message,
      ak_sign: signature,
      pop_received_at: iso(now),
      token_expires_at: tokenExpires,
    })
    // another request answered the same challenge first
    if (!activated) throw new PushApiError(404, 'Session not found')
    // the agent's previous token is gone from the database: here at once, elsewhere within SESSION_CACHE_MS
    this.forgetAgent(agentId)
    this.metrics.session('authenticated')
    const rendered = this.render(session, now, 'pass', message, signature)
    rendered.data.attributes = {
      ...rendered.data.attributes,
      token,
      token_expires_at: tokenExpires,
    }
    this.deps.log.info({ agentId, sessionId }, 'push session: agent authenticated')
    return { status: 200, body: rendered }
  }

  private render(
    s: SessionRow,
    receivedAt: number,
    evaluation: 'pass' | 'fail',
    message: Uint8Array | null,
    signature: Uint8Array | null,
  ): { data: { type: string; id: string; attributes: Record<string, unknown> } } {
    return {
      data: {
        type: 'session',
        id: s.session_id,
        attributes: {
          agent_id: s.agent_id,
          evaluation,
          authentication: [
            {
              authentication_class: 'pop',
              authentication_type: 'tpm_pop',
              chosen_parameters: { challenge: b64(s.nonce) },
              data: { message: b64(message), signature: b64(signature) },
            },
          ],
          created_at: s.nonce_created_at,
          challenges_expire_at: s.nonce_expires_at,
          response_received_at: iso(receivedAt),
        },
      },
    }
  }

  /** The agent behind `Authorization: Bearer <token>`; 401 with upstream's details otherwise. */
  async authenticate(header: string | undefined): Promise<AuthenticatedAgent> {
    const m = header === undefined ? null : /^Bearer\s+(\S+)\s*$/.exec(header)
    if (!m?.[1]) throw new PushApiError(401, 'Invalid Authorization header format')
    const token = m[1]
    const now = this.deps.now()
    // one-shot digest: no Hash object per request
    const key = hash('sha256', token, 'base64')
    const cached = this.cache.get(key)
    if (cached && now < cached.checkedUntil) {
      if (now <= cached.expiresMs)
        return { agentId: cached.agentId, sessionId: cached.sessionId, tokenExpiresAt: cached.tokenExpiresAt }
      // expired as far as this process knows: another verifier may have extended it, so the database decides
    }
    this.cache.delete(key)
    const sessionId = sessionIdOfToken(token)
    const session = sessionId === null ? undefined : await this.deps.push.sessionForToken(sessionId)
    if (!session || !tokenMatches(token, session.token_salt, session.token_hash))
      throw new PushApiError(401, 'Invalid authentication token')
    if (!session.active) throw new PushApiError(401, 'Authentication session not active')
    const expiresAt = session.token_expires_at ?? ''
    if (expiresAt < iso(now)) throw new PushApiError(401, 'Authentication token expired')
    this.remember(key, {
      agentId: session.agent_id,
      sessionId: session.session_id,
      tokenExpiresAt: expiresAt,
      expiresMs: Date.parse(expiresAt),
      checkedUntil: now + SESSION_CACHE_MS,
    })
    return { agentId: session.agent_id, sessionId: session.session_id, tokenExpiresAt: expiresAt }
  }

  private remember(key: string, entry: CachedSession): void {
    const previous = this.keyOfAgent.get(entry.agentId)
    if (previous !== undefined && previous !== key) this.cache.delete(previous)
    if (this.cache.size >= MAX_CACHED_SESSIONS) {
      const oldest = this.cache.keys().next().value as string
      const gone = this.cache.get(oldest)
      this.cache.delete(oldest)
      if (gone && this.keyOfAgent.get(gone.agentId) === oldest) this.keyOfAgent.delete(gone.agentId)
    }
    this.cache.set(key, entry)
    this.keyOfAgent.set(entry.agentId, key)
  }

  /** Drops the agent's cached token (a new session, the agent deleted). */
  forgetAgent(agentId: string): void {
    const key = this.keyOfAgent.get(agentId)
    if (key === undefined) return
    this.keyOfAgent.delete(agentId)
    this.cache.delete(key)
  }

  /** Tokens this verifier extended: their cached expiry follows. */
  extended(sessions: readonly { session_id: string; agent_id: string; token_expires_at: string }[]): void {
    for (const s of sessions) {
      const key = this.keyOfAgent.get(s.agent_id)
      const entry = key === undefined ? undefined : this.cache.get(key)
      if (entry?.sessionId === s.session_id) {
        entry.tokenExpiresAt = s.token_expires_at
        entry.expiresMs = Date.parse(s.token_expires_at)
      }
    }
  }

  /** The expiry a passing attestation extends its token to now (`extend_token_on_attestation`), or null. */
  extensionUntil(): string | null {
    return this.deps.options.extendTokenOnAttestation
      ? iso(this.deps.now() + this.deps.options.sessionLifetimeMs)
      : null
  }
}
