import { createHash } from 'node:crypto'
import type { TpmCommand } from './command.ts'
import { NvReadPublic } from './commands/nv.ts'
import { ReadPublic } from './commands/object.ts'
import { nodeHashName, TpmHt, TpmSt } from './constants.ts'
import { TpmFormatError, TpmUsageError } from './errors.ts'
import { TpmReader } from './marshal/reader.ts'
import { TpmWriter } from './marshal/writer.ts'
import { TpmRc, TpmResponseError } from './rc.ts'
import { type AuthSession, PasswordSession, type TpmsAuthResponse } from './session.ts'
import { openTransport } from './transport/open.ts'
import type { TpmTransport } from './transport/transport.ts'

const RETRYABLE = new Set<number>([TpmRc.Retry, TpmRc.Testing, TpmRc.Yielded])

/**
 * A TPM reached over one transport. Every command goes through `run`, which queues: one command is on the
 * wire at a time, in call order, whatever the callers do concurrently.
 */
export class Tpm {
  private queue: Promise<unknown> = Promise.resolve()
  private closed = false
  /** Commands executed since open (for tests and diagnostics). */
  commandCount = 0

  constructor(readonly transport: TpmTransport) {}

  /** Opens `device:/dev/tpmrm0`, a bare device path, `swtpm:host=H,port=P` or `swtpm:path=/x.sock`. */
  static async open(spec: string | TpmTransport): Promise<Tpm> {
    return new Tpm(typeof spec === 'string' ? openTransport(spec) : spec)
  }

  get description(): string {
    return this.transport.description
  }

  /**
   * Runs one command. `sessions` authorise the first `authHandles` handles in order; missing ones default
   * to an empty password session.
   */
  run<P, R>(command: TpmCommand<P, R>, params: P, sessions: readonly AuthSession[] = []): Promise<R> {
    const result = this.queue.then(() => this.execute(command, params, sessions))
    this.queue = result.catch(() => undefined)
    return result
  }

  /** Executes without queueing; only for use while the queue is already held (name lookups). */
  private async execute<P, R>(
    command: TpmCommand<P, R>,
    params: P,
    given: readonly AuthSession[],
  ): Promise<R> {
    if (this.closed) throw new TpmUsageError('TPM is closed')
    if (given.length > command.authHandles) {
      throw new TpmUsageError(
        `${command.name} takes ${command.authHandles} authorization(s), got ${given.length}`,
      )
    }
    const sessions = [...given]
    while (sessions.length < command.authHandles) sessions.push(new PasswordSession())
    const handles = command.handles.map((h) => params[h] as unknown as number)
    const paramWriter = new TpmWriter(128)
    command.encodeParams(paramWriter, params)
    const paramBytes = paramWriter.finish()

    let authArea: Uint8Array | undefined
    if (sessions.length > 0) {
      // One lookup at a time: the transport carries a single command.
      const names = lazy(async () => {
        const out: Uint8Array[] = []
        for (const h of handles) out.push(await this.nameOf(h))
        return out
      })
      const ctx = {
        commandCode: command.code,
        cpHash: async (hashAlg: number) => {
          const h = createHash(nodeHashName(hashAlg) ?? 'sha256')
          h.update(u32be(command.code))
          for (const name of await names()) h.update(name)
          return h.update(paramBytes).digest()
        },
      }
      const w = new TpmWriter(64)
      for (const s of sessions) {
        const a = await s.authorize(ctx)
        w.u32(a.sessionHandle).tpm2b(a.nonce).u8(a.sessionAttributes).tpm2b(a.hmac)
      }
      authArea = w.finish()
    }

    const w = new TpmWriter(64 + paramBytes.length + (authArea?.length ?? 0))
    w.u16(authArea ? TpmSt.Sessions : TpmSt.NoSessions)
      .u32(0)
      .u32(command.code)
    for (const h of handles) w.u32(h)
    if (authArea) w.u32(authArea.length).raw(authArea)
    w.raw(paramBytes)
    w.patchU32(2, w.length)
    const commandBytes = w.finish()

    let response: Uint8Array
    for (let attempt = 0; ; attempt++) {
      this.commandCount++
      response = await this.transport.send(commandBytes)
      const rc = readU32(response, 6)
      if (rc === 0) break
      if (RETRYABLE.has(rc) && attempt < 20) {
        await new Promise((resolve) => setTimeout(resolve, 10 * (attempt + 1)))
        continue
      }
      throw new TpmResponseError(command.name, rc)
    }
    return this.decodeResponse(command, response, sessions)
  }

  private decodeResponse<P, R>(command: TpmCommand<P, R>, response: Uint8Array, sessions: AuthSession[]): R {
    const r = new TpmReader(response)
    return r.scope(`${command.name} response`, () => {
      const tag = r.u16('tag')
      const size = r.u32('responseSize')
      if (size !== response.length) r.fail(`responseSize ${size} but ${response.length} bytes received`, 2)
      r.u32('responseCode')
      const handle = command.responseHandle ? r.u32('handle') : 0
      let paramEnd = response.length
      if (tag === TpmSt.Sessions) {
        const paramSize = r.u32('parameterSize')
        if (paramSize > r.remaining) r.fail(`parameterSize ${paramSize} exceeds the response`)
        paramEnd = r.offset + paramSize
      } else if (tag !== TpmSt.NoSessions) {
        r.fail(`unexpected response tag 0x${tag.toString(16)}`, 0)
      } else if (sessions.length > 0) {
        r.fail('response has no session area although sessions were sent', 0)
      }
      const paramStart = r.offset
      const pr = new TpmReader(response, paramStart, paramEnd)
      const value = pr.scope('parameters', () => command.decodeResponse(pr, handle))
      pr.expectEnd(`${command.name} parameters`)
      if (tag === TpmSt.Sessions) {
        const ar = new TpmReader(response, paramEnd)
        const auths: TpmsAuthResponse[] = []
        for (let i = 0; i < sessions.length; i++) {
          auths.push({
            nonce: ar.tpm2b('nonce'),
            sessionAttributes: ar.u8('attributes'),
            hmac: ar.tpm2b('hmac'),
          })
        }
        ar.expectEnd('response sessions')
        const parameters = response.subarray(paramStart, paramEnd)
        const rpHash = (hashAlg: number) =>
          createHash(nodeHashName(hashAlg) ?? 'sha256')
            .update(u32be(0))
            .update(u32be(command.code))
            .update(parameters)
            .digest()
        for (const [i, s] of sessions.entries()) s.verifyResponse(auths[i] as TpmsAuthResponse, rpHash)
      }
      return value
    })
  }

  private async nameOf(handle: number): Promise<Uint8Array> {
    const type = handle >>> 24
    // Called while this command holds the queue, so the lookups run unqueued.
    if (type === TpmHt.Transient || type === TpmHt.Persistent) {
      return (await this.execute(ReadPublic, { objectHandle: handle }, [])).name
    }
    if (type === TpmHt.NvIndex) return (await this.execute(NvReadPublic, { nvIndex: handle }, [])).nvName
    return u32be(handle)
  }

  /** Waits for queued commands, then closes the transport. */
  async close(): Promise<void> {
    await this.queue
    this.closed = true
    await this.transport.close()
  }
}

function lazy<T>(fn: () => Promise<T>): () => Promise<T> {
  let p: Promise<T> | undefined
  return () => {
    p ??= fn()
    return p
  }
}

function u32be(v: number): Uint8Array {
  return Uint8Array.of(v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff)
}

function readU32(b: Uint8Array, at: number): number {
  if (b.length < at + 4)
    throw new TpmFormatError('TPM response shorter than its header', b.length, 'response')
  return (((b[at] ?? 0) << 24) | ((b[at + 1] ?? 0) << 16) | ((b[at + 2] ?? 0) << 8) | (b[at + 3] ?? 0)) >>> 0
}
