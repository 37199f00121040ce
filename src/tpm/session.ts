import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { digestSize, nodeHashName, TpmaSession, TpmRh } from './constants.ts'
import { TpmTransportError, TpmUsageError } from './errors.ts'

/** TPMS_AUTH_COMMAND (Part 2, 10.13.2). */
export interface TpmsAuthCommand {
  sessionHandle: number
  nonce: Uint8Array
  sessionAttributes: number
  hmac: Uint8Array
}

/** TPMS_AUTH_RESPONSE (Part 2, 10.13.3). */
export interface TpmsAuthResponse {
  nonce: Uint8Array
  sessionAttributes: number
  hmac: Uint8Array
}

/** What a session may need to authorise one command: cpHash/rpHash inputs computed by the engine. */
export interface AuthContext {
  commandCode: number
  /** H(commandCode || names || parameters) with the session's hash (Part 1, 18.7). */
  cpHash(hashAlg: number): Promise<Uint8Array>
}

export interface AuthSession {
  readonly handle: number
  authorize(ctx: AuthContext): Promise<TpmsAuthCommand>
  /** Checks/absorbs the TPM's answer (new nonceTPM, response HMAC). `rpHash` = H(rc || cc || parameters). */
  verifyResponse(auth: TpmsAuthResponse, rpHash: (hashAlg: number) => Uint8Array): void
}

/** Decodes the `hex:` prefix tpm2-tools and Keylime allow for passwords; otherwise UTF-8. */
export function authValue(password: string | Uint8Array | undefined): Uint8Array {
  if (password === undefined) return new Uint8Array(0)
  if (password instanceof Uint8Array) return password
  if (password.startsWith('hex:')) {
    const hex = password.slice(4)
    if (!/^([0-9a-fA-F]{2})*$/.test(hex))
      throw new TpmUsageError('password with hex: prefix is not valid hex')
    return Uint8Array.from(Buffer.from(hex, 'hex'))
  }
  return new TextEncoder().encode(password)
}

/** The password session TPM_RS_PW (Part 1, 19.8.4): the auth value travels in the clear as the HMAC. */
export class PasswordSession implements AuthSession {
  readonly handle = TpmRh.Password
  private readonly auth: Uint8Array

  constructor(password?: string | Uint8Array) {
    this.auth = authValue(password)
  }

  async authorize(): Promise<TpmsAuthCommand> {
    return { sessionHandle: this.handle, nonce: new Uint8Array(0), sessionAttributes: 0, hmac: this.auth }
  }

  verifyResponse(): void {}
}

/**
 * A policy session started by `startPolicySession`. Its policy needs no auth value (PolicySecret,
 * PolicyPCR ...), so the command HMAC is empty and the TPM checks only the policy digest.
 */
export class PolicySession implements AuthSession {
  constructor(
    readonly handle: number,
    readonly hashAlg: number,
    public nonceTpm: Uint8Array,
    /** Keep the session after a command that uses it (otherwise the TPM flushes it). */
    public continueSession = false,
  ) {}

  async authorize(): Promise<TpmsAuthCommand> {
    return {
      sessionHandle: this.handle,
      nonce: new Uint8Array(0),
      sessionAttributes: this.continueSession ? TpmaSession.ContinueSession : 0,
      hmac: new Uint8Array(0),
    }
  }

  verifyResponse(auth: TpmsAuthResponse): void {
    this.nonceTpm = auth.nonce
  }
}

/**
 * An unbound, unsalted HMAC session (Part 1, 19.6): each command is authorised with
 * HMAC(authValue, cpHash || nonceCaller || nonceTPM || attributes); each response HMAC is checked.
 */
export class HmacSession implements AuthSession {
  private nonceCaller = new Uint8Array(0)
  private readonly auth: Uint8Array
  private readonly hashName: string
  private readonly size: number

  constructor(
    readonly handle: number,
    readonly hashAlg: number,
    public nonceTpm: Uint8Array,
    password?: string | Uint8Array,
    public continueSession = true,
  ) {
    const hashName = nodeHashName(hashAlg)
    const size = digestSize(hashAlg)
    if (!hashName || !size) throw new TpmUsageError(`unsupported session hash 0x${hashAlg.toString(16)}`)
    this.hashName = hashName
    this.size = size
    this.auth = authValue(password)
  }

  private get attributes(): number {
    return this.continueSession ? TpmaSession.ContinueSession : 0
  }

  async authorize(ctx: AuthContext): Promise<TpmsAuthCommand> {
    this.nonceCaller = randomBytes(this.size)
    const cpHash = await ctx.cpHash(this.hashAlg)
    const hmac = createHmac(this.hashName, this.auth)
      .update(cpHash)
      .update(this.nonceCaller)
      .update(this.nonceTpm)
      .update(Uint8Array.of(this.attributes))
      .digest()
    return { sessionHandle: this.handle, nonce: this.nonceCaller, sessionAttributes: this.attributes, hmac }
  }

  verifyResponse(auth: TpmsAuthResponse, rpHash: (hashAlg: number) => Uint8Array): void {
    this.nonceTpm = auth.nonce
    const expected = createHmac(this.hashName, this.auth)
      .update(rpHash(this.hashAlg))
      .update(auth.nonce)
      .update(this.nonceCaller)
      .update(Uint8Array.of(auth.sessionAttributes))
      .digest()
    if (auth.hmac.length !== expected.length || !timingSafeEqual(auth.hmac, expected)) {
      throw new TpmTransportError('response HMAC of the HMAC session does not verify')
    }
  }
}
