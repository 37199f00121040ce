/**
 * Pure pieces of registration and activation (keylime-protocols.md §B, registrar side): field decoding with typed
 * 400 errors, the identity-change rule, the challenge and the auth_tag.
 */
import { createHmac, randomBytes, timingSafeEqual, X509Certificate } from 'node:crypto'
import { isValidAgentId } from '../api/schemas.ts'
import { KeylimeError } from '../common/errors.ts'
import { parseCertificateTolerant, parsePemCertificates } from '../crypto/ek-trust.ts'
import type { LenientCertificate } from '../crypto/x509-lenient.ts'
import type { RegistrarRecord } from '../db/registrar-repository.ts'

export const INVALID_DATA = 'Could not register agent with invalid data'
export const IDENTITY_CHANGE_FORBIDDEN =
  'Agent re-registration with different TPM identity is forbidden for security reasons'

export class RegistrarError extends KeylimeError {
  constructor(statusCode: 400 | 403 | 404, message: string, options?: { cause?: unknown }) {
    super(
      statusCode === 400
        ? 'ERR_REGISTRAR_INPUT'
        : statusCode === 403
          ? 'ERR_REGISTRAR_FORBIDDEN'
          : 'ERR_NOT_FOUND',
      message,
      {
        statusCode,
        ...options,
      },
    )
  }
}

export const invalid = (why: string, cause?: unknown) =>
  new RegistrarError(400, `${INVALID_DATA}: ${why}`, cause === undefined ? undefined : { cause })

export const AGENT_ID_INVALID =
  'agent_id not valid: expected 1-80 characters of [A-Za-z0-9_.-], not only dots'

/** Agent ids as every service accepts them (`AgentId` in src/api/schemas.ts). */
export function checkAgentId(id: unknown): string {
  if (!isValidAgentId(id)) throw new RegistrarError(400, AGENT_ID_INVALID)
  return id
}

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/

/** Strict base64 (no whitespace, correct padding), non-empty. */
export function decodeB64Field(value: unknown, field: string): Uint8Array {
  if (typeof value !== 'string') throw invalid(`${field} must be a base64 string`)
  if (value === '' || !B64.test(value)) throw invalid(`${field} is not valid base64`)
  return new Uint8Array(Buffer.from(value, 'base64'))
}

export function optionalString(body: Record<string, unknown>, field: string): string | null {
  const v = body[field]
  if (v === undefined || v === null) return null
  if (typeof v !== 'string') throw invalid(`${field} must be a string or null`)
  return v
}

/** `port` as int or numeric string; null when absent. */
export function parsePort(value: unknown): number | null {
  if (value === undefined || value === null || value === '') return null
  const n =
    typeof value === 'number'
      ? value
      : typeof value === 'string' && /^\d{1,5}$/.test(value)
        ? Number(value)
        : Number.NaN
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw invalid('port must be an integer 1-65535')
  return n
}

/** `ip`: a host name or address as the agent reports it (no spaces, at most 255 characters). */
export function parseIp(value: unknown): string | null {
  if (value === undefined || value === null || value === '') return null
  if (typeof value !== 'string' || value.length > 255 || !/^[A-Za-z0-9.:%_[\]-]+$/.test(value)) {
    throw invalid('ip must be a host name or IP address')
  }
  return value
}

export type MalformedCertAction = 'warn' | 'reject' | 'ignore'

/** Parses a certificate field (PEM or b64 DER); non-strict DER is refused only with `malformed_cert_action = reject`. */
export function parseCertField(
  value: string,
  field: string,
  action: MalformedCertAction,
): LenientCertificate {
  let cert: LenientCertificate
  try {
    cert = parseCertificateTolerant(value.trim())
  } catch (err) {
    throw invalid(`${field} is not a certificate`, err)
  }
  if (action === 'reject' && cert.irregularities.length > 0) {
    throw invalid(`${field} is not strict DER (${cert.irregularities.join('; ')})`)
  }
  return cert
}

/**
 * Every certificate a field carries: the Rust agent may send a PEM bundle (EK CA chain first, then the EK
 * certificate), so the caller picks the one whose key matches the TPM key instead of blindly taking the first.
 */
export function parseCertBundleField(
  value: string,
  field: string,
  action: MalformedCertAction,
): LenientCertificate[] {
  const text = value.trim()
  if ((text.match(/-----BEGIN [A-Z0-9 ]*CERTIFICATE-----/g) ?? []).length > 1) {
    let certs: LenientCertificate[]
    try {
      certs = parsePemCertificates(text)
    } catch (err) {
      throw invalid(`${field} holds a malformed PEM certificate`, err)
    }
    if (action === 'reject') {
      const bad = certs.find((c) => c.irregularities.length > 0)
      if (bad) throw invalid(`${field} is not strict DER (${bad.irregularities.join('; ')})`)
    }
    return certs
  }
  return [parseCertField(text, field, action)]
}

/** Normalises `mtls_cert`: `disabled`, or a PEM certificate (re-emitted from its DER). */
export function parseMtlsCert(value: string | null): string | null {
  if (value === null) return null
  if (value === 'disabled') return 'disabled'
  try {
    return new X509Certificate(value).toString()
  } catch (err) {
    throw invalid('mtls_cert must be a PEM certificate or "disabled"', err)
  }
}

/**
 * Step 2 of §B: with an activated record, `ek_tpm` and `ekcert` may only stay the same (set -> different or
 * set -> null is a takeover attempt). Unset -> set is allowed. A different `aik_tpm` is allowed, unlike upstream:
 * the new AK only replaces the old one after the TPM holding this EK has answered a challenge bound to it, which is
 * the same proof the first registration gave (an agent whose stored AK was lost can register again).
 */
export function identityChange(
  existing: Pick<RegistrarRecord, 'ek_tpm' | 'ekcert'>,
  next: Pick<RegistrarRecord, 'ek_tpm' | 'ekcert'>,
): string | null {
  for (const field of ['ek_tpm', 'ekcert'] as const) {
    const before = existing[field]
    if (before !== null && before !== next[field]) return field
  }
  return null
}

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'

/** 32 random characters of [A-Za-z0-9] (rejection sampling, no modulo bias). */
export function randomChallenge(length = 32, random: (n: number) => Uint8Array = randomBytes): string {
  let out = ''
  while (out.length < length) {
    for (const b of random(length * 2)) {
      if (b < 248 && out.length < length) out += ALNUM[b % 62]
    }
  }
  return out
}

/** `hex(HMAC-SHA384(key = ASCII(b64(challenge)), msg = ASCII(agent_id)))` — the stored `key` is b64(challenge). */
export function expectedAuthTag(storedKey: string, agentId: string): string {
  return createHmac('sha384', Buffer.from(storedKey, 'ascii')).update(agentId, 'utf8').digest('hex')
}

/** Constant-time comparison of the agent's hex tag with the expected one (case-insensitive hex). */
export function authTagMatches(storedKey: string | null, agentId: string, authTag: string): boolean {
  if (storedKey === null) return false
  const expected = Buffer.from(expectedAuthTag(storedKey, agentId), 'ascii')
  const given = Buffer.from(authTag.toLowerCase(), 'utf8')
  if (given.length !== expected.length) return false
  return timingSafeEqual(expected, given)
}
