/**
 * Push session bearer tokens: `<session_id>.<43-char urlsafe secret>` as upstream. Only a salted SHA-256 of the
 * token is stored (`token_hash`, `token_salt`), never the token. Upstream hashes with PBKDF2 (600,000 rounds) and
 * keeps the plaintext in a per-process cache to stay fast; a 256-bit random secret cannot be guessed, so one hash
 * is as strong and lets every verifier of a group check any token from the database alone.
 */
import { createHash, randomBytes, randomFillSync, randomUUID, timingSafeEqual } from 'node:crypto'

const SESSION_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const SECRET = /^[A-Za-z0-9_-]{43}$/

export function newSessionId(): string {
  return randomUUID()
}

const CHALLENGE_BYTES = 16
/** Challenges are cut from a block of CSPRNG output filled at once (one call into OpenSSL per 256 challenges). */
const CHALLENGE_POOL_BYTES = CHALLENGE_BYTES * 256
let challengePool = Buffer.alloc(0)
let challengeAt = 0

export function newChallenge(): Buffer {
  if (challengeAt + CHALLENGE_BYTES > challengePool.length) {
    // a fresh block each time: a challenge handed out is never overwritten
    challengePool = randomFillSync(Buffer.allocUnsafe(CHALLENGE_POOL_BYTES))
    challengeAt = 0
  }
  challengeAt += CHALLENGE_BYTES
  return challengePool.subarray(challengeAt - CHALLENGE_BYTES, challengeAt)
}

export function newToken(sessionId: string): { token: string; hash: string; salt: string } {
  const token = `${sessionId}.${randomBytes(32).toString('base64url')}`
  const salt = randomBytes(16).toString('hex')
  return { token, hash: tokenHash(token, salt), salt }
}

export function tokenHash(token: string, saltHex: string): string {
  return createHash('sha256').update(Buffer.from(saltHex, 'hex')).update(token).digest('hex')
}

/** The session id of a well-formed token; null otherwise. */
export function sessionIdOfToken(token: string): string | null {
  const dot = token.indexOf('.')
  if (dot < 0) return null
  const id = token.slice(0, dot)
  return SESSION_ID.test(id) && SECRET.test(token.slice(dot + 1)) ? id : null
}

export function tokenMatches(token: string, saltHex: string | null, hashHex: string | null): boolean {
  if (!saltHex || !hashHex || hashHex.length !== 64) return false
  return timingSafeEqual(Buffer.from(tokenHash(token, saltHex), 'hex'), Buffer.from(hashHex, 'hex'))
}
