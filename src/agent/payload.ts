/**
 * Secure payload, agent side (keylime-protocols.md §E.2): keeps every U (with auth_tag and payload) and every V,
 * tries all U×V pairs on each new key, accepts K = U ⊕ V when HMAC-SHA384(K, uuid) matches, then decrypts the
 * payload into `<keylime_dir>/secure/unzipped` (0700), optionally unzips it and runs the payload script with a
 * timeout. Key material is never logged.
 */
import type { KeyObject } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join, resolve, sep } from 'node:path'
import { KeylimeError } from '../common/errors.ts'
import type { Logger } from '../common/log.ts'
import {
  authTag,
  decodeBase64Strict,
  decryptPayload,
  rsaOaepDecrypt,
  tryCombine,
  type UKeyEntry,
} from '../crypto/payload.ts'
import { runProgram } from './run-program.ts'

export class PayloadRequestError extends KeylimeError {
  constructor(message: string) {
    super('ERR_AGENT_PAYLOAD_REQUEST', message, { statusCode: 400 })
  }
}

export class PayloadError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_AGENT_PAYLOAD', message, options)
  }
}

/**
 * `/keys/verify` once K is known but the payload could not be installed: 422 with the reason, so a tenant that
 * waits for the bootstrap key learns why instead of being told the payload was delivered. Upstream tenants treat
 * any non-200 answer as "not yet", so they still end in their --verify failure.
 */
export class PayloadRefusedError extends KeylimeError {
  constructor(reason: string) {
    super('ERR_AGENT_PAYLOAD_REFUSED', `payload refused: ${reason}`, { statusCode: 422 })
  }
}

function strictBase64(s: string, what: string): Buffer {
  try {
    return decodeBase64Strict(s, what)
  } catch {
    throw new PayloadRequestError(`${what} is not valid base64`)
  }
}

/** RSA-OAEP (SHA-1, MGF1-SHA-1, no label) decryption of U or V with the payload key. */
export function decryptKeyShare(payloadKey: KeyObject, encryptedB64: string): Buffer {
  const enc = strictBase64(encryptedB64, 'encrypted_key')
  let key: Buffer
  try {
    key = rsaOaepDecrypt(payloadKey, enc)
  } catch {
    throw new PayloadRequestError('encrypted_key could not be decrypted')
  }
  if (key.length !== 16 && key.length !== 32) {
    key.fill(0)
    throw new PayloadRequestError('decrypted key must be 16 or 32 bytes')
  }
  return key
}

/** Extracts a zip into a directory, refusing entries that would escape it (the payload module's safe extractor). */
export type ZipExtractor = (zip: Uint8Array, destDir: string) => Promise<void>

export interface PayloadManagerOptions {
  uuid: string
  payloadKey: KeyObject
  /** `<keylime_dir>/secure` */
  secureDir: string
  encKeyname: string
  decPayloadFile: string
  extractPayloadZip: boolean
  payloadScript: string
  scriptTimeoutMs: number
  /** enable_agent_mtls || enable_insecure_payload */
  runPayloads: boolean
  extractZip: ZipExtractor
  log: Logger
  /** Called after a payload was installed (the revocation handler reloads its certificate). */
  onPayloadInstalled?: (unzippedDir: string) => void
}

export class PayloadManager {
  private readonly o: PayloadManagerOptions
  private us: UKeyEntry[] = []
  private vs: Buffer[] = []
  private bootstrapKey: Buffer | null = null
  private work: Promise<void> = Promise.resolve()
  /**
   * The payload that came with K: 'installing' until it is decrypted and extracted, then 'installed' or the reason
   * it was refused ('idle': none outstanding). `/keys/verify` answers the HMAC only when none is installing or
   * refused.
   */
  private payloadState:
    | { state: 'idle' | 'installing' | 'installed' }
    | { state: 'refused'; reason: string } = {
    state: 'idle',
  }
  /** Outcome of the last payload run, for operators and tests. */
  lastResult: { ok: boolean; message: string; scriptExitCode?: number | null } | null = null

  constructor(o: PayloadManagerOptions) {
    this.o = o
  }

  get unzippedDir(): string {
    return join(this.o.secureDir, 'unzipped')
  }

  addU(body: { encrypted_key: string; auth_tag: string; payload?: string }): void {
    const tag = body.auth_tag.trim().toLowerCase()
    if (!/^[0-9a-f]*$/.test(tag) || tag.length % 2 !== 0)
      throw new PayloadRequestError('auth_tag is not valid hex')
    if (tag.length !== 96) throw new PayloadRequestError('auth_tag must be 48 bytes (96 hex characters)')
    if (body.payload !== undefined) strictBase64(body.payload, 'payload')
    const u = decryptKeyShare(this.o.payloadKey, body.encrypted_key)
    // A new U starts a new provisioning: `/keys/verify` must not answer for the previous K or its payload.
    this.bootstrapKey?.fill(0)
    this.bootstrapKey = null
    this.payloadState = { state: 'idle' }
    this.us.push({ u, authTag: tag, payload: body.payload })
    this.o.log.info('received U key share')
    this.tryCombine()
  }

  addV(body: { encrypted_key: string }): void {
    this.vs.push(decryptKeyShare(this.o.payloadKey, body.encrypted_key))
    this.o.log.info('received V key share')
    this.tryCombine()
  }

  /**
   * hex HMAC-SHA384(K, challenge) once K is known and its payload installed (`/keys/verify`); null before that.
   * Throws `PayloadRefusedError` when the payload that came with K was refused.
   */
  verify(challenge: string): string | null {
    if (!this.bootstrapKey || this.payloadState.state === 'installing') return null
    if (this.payloadState.state === 'refused') throw new PayloadRefusedError(this.payloadState.reason)
    return authTag(this.bootstrapKey, challenge)
  }

  /** Resolves when queued payload work has finished. */
  whenIdle(): Promise<void> {
    return this.work
  }

  private tryCombine(): void {
    const match = tryCombine(this.us, this.vs, this.o.uuid)
    if (!match) return
    this.bootstrapKey?.fill(0)
    this.bootstrapKey = match.k
    const payload = match.uEntry.payload
    for (const x of this.us) x.u.fill(0)
    for (const x of this.vs) x.fill(0)
    this.us = []
    this.vs = []
    this.o.log.info('derived bootstrap key K from U and V (auth_tag verified)')
    if (this.o.runPayloads) {
      const keyCopy = Buffer.from(match.k)
      this.payloadState = { state: 'installing' }
      this.work = this.work.then(() => this.install(keyCopy, payload))
    } else {
      const reason = 'not run: mTLS is disabled and enable_insecure_payload is false'
      this.o.log.warn(`payload ${reason}`)
      this.payloadState =
        payload !== undefined && payload.length > 0 ? { state: 'refused', reason } : { state: 'idle' }
    }
  }

  private async install(key: Buffer, payload: string | undefined): Promise<void> {
    const dir = this.unzippedDir
    try {
      mkdirSync(this.o.secureDir, { recursive: true, mode: 0o700 })
      chmodSync(this.o.secureDir, 0o700)
      rmSync(dir, { recursive: true, force: true })
      mkdirSync(dir, { mode: 0o700 })
      writeFileSync(join(dir, this.o.encKeyname), key, { mode: 0o600 })
      if (payload !== undefined && payload.length > 0) {
        const plain = decryptPayload(key, payload)
        const payloadPath = join(dir, this.o.decPayloadFile)
        writeFileSync(payloadPath, plain, { mode: 0o600 })
        if (this.o.extractPayloadZip && plain.length >= 4 && plain.readUInt32LE(0) === 0x04034b50) {
          await this.o.extractZip(plain, dir)
        }
      }
      // Installed: what the tenant checks. The script's outcome is logged (upstream ignores its status).
      this.payloadState = { state: 'installed' }
      let exitCode: number | null | undefined
      const script = this.o.payloadScript ? resolve(dir, this.o.payloadScript) : ''
      if (script?.startsWith(dir + sep) && existsSync(script)) {
        chmodSync(script, 0o700)
        const run = await runProgram('sh', ['-c', script], {
          cwd: dir,
          timeoutMs: this.o.scriptTimeoutMs,
          log: this.o.log,
          label: 'payload script',
        })
        exitCode = run.code
      }
      const actionList = join(dir, 'action_list')
      if (existsSync(actionList)) {
        for (const name of readFileSync(actionList, 'utf8')
          .split(/[\s,]+/)
          .filter(Boolean)) {
          const p = resolve(dir, name)
          if (p.startsWith(dir + sep) && existsSync(p)) chmodSync(p, 0o700)
        }
      }
      this.lastResult = {
        ok: true,
        message: 'payload installed',
        ...(exitCode === undefined ? {} : { scriptExitCode: exitCode }),
      }
      this.o.onPayloadInstalled?.(dir)
    } catch (err) {
      this.lastResult = { ok: false, message: (err as Error).message }
      if (this.payloadState.state === 'installing')
        this.payloadState = { state: 'refused', reason: (err as Error).message }
      this.o.log.error(
        { code: (err as KeylimeError).code },
        `payload installation failed: ${(err as Error).message}`,
      )
    } finally {
      key.fill(0)
    }
  }
}
