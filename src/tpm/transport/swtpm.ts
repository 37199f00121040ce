import { connect, type Socket } from 'node:net'
import { TpmTransportError } from '../errors.ts'
import { expectedResponseLength, type TpmTransport } from './transport.ts'

/** Where a socket lives: TCP host+port or a Unix socket path. */
export type SocketAddress = { host: string; port: number } | { path: string }

/** swtpm control-channel commands (swtpm's `tpm_ioctl.h`). */
const CtrlCmd = Object.freeze({ Init: 2, Shutdown: 3, Stop: 14 })

const describe = (a: SocketAddress) => ('path' in a ? a.path : `${a.host}:${a.port}`)

/**
 * swtpm's socket interface: raw TPM commands on the data channel, and the control channel for power-on (CMD_INIT)
 * and shutdown. tpm2-tools' `swtpm` TCTI speaks the same.
 *
 * swtpm serves one data connection at a time, so a connection held open would lock every other process (an IMA
 * emulator, tpm2-tools, the demo's tamper step) out of the TPM. The connection is therefore released once it has
 * been idle for `idleReleaseMs`: bursts of commands share one connection, and other clients get their turn between
 * bursts, as with the kernel resource manager. TPM state (loaded objects, sessions, PCRs) lives in swtpm, not in
 * the connection.
 */
export class SwtpmTransport implements TpmTransport {
  private socket: Socket | undefined
  private chunks: Buffer[] = []
  private received = 0
  private waiter: { resolve: (b: Uint8Array) => void; reject: (e: Error) => void } | undefined
  private idleTimer: NodeJS.Timeout | undefined
  readonly description: string

  constructor(
    readonly data: SocketAddress,
    readonly control: SocketAddress | undefined,
    readonly timeoutMs = 120_000,
    readonly idleReleaseMs = 25,
  ) {
    this.description = `swtpm:${describe(data)}`
  }

  private connectData(): Promise<Socket> {
    if (this.socket && !this.socket.destroyed) return Promise.resolve(this.socket)
    return new Promise((resolve, reject) => {
      const s = connect(this.data)
      s.setNoDelay(true)
      const onError = (err: Error) => {
        s.destroy()
        reject(
          new TpmTransportError(`cannot connect to swtpm at ${describe(this.data)}: ${err.message}`, {
            cause: err,
          }),
        )
      }
      s.once('error', onError)
      s.once('connect', () => {
        s.off('error', onError)
        s.on('data', (chunk: Buffer) => this.onData(chunk))
        // Events of a socket we already replaced or closed must not fail a command on the new one.
        s.on('error', (err) => {
          if (this.socket === s) {
            this.failPending(new TpmTransportError(`swtpm connection error: ${err.message}`, { cause: err }))
          }
        })
        s.on('close', () => {
          if (this.socket !== s) return
          this.socket = undefined
          this.failPending(new TpmTransportError('swtpm closed the connection before responding'))
        })
        this.socket = s
        resolve(s)
      })
    })
  }

  private onData(chunk: Buffer): void {
    if (!this.waiter) return // unsolicited bytes: ignore (nothing is pending)
    this.chunks.push(chunk)
    this.received += chunk.length
    const all = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks)
    this.chunks = [all]
    let expected: number | undefined
    try {
      expected = expectedResponseLength(all)
    } catch (err) {
      this.failPending(err as Error)
      this.socket?.destroy()
      return
    }
    if (expected === undefined || this.received < expected) return
    if (this.received > expected) {
      this.failPending(
        new TpmTransportError(`swtpm sent ${this.received - expected} bytes beyond the response`),
      )
      this.socket?.destroy()
      return
    }
    const w = this.waiter
    this.waiter = undefined
    this.chunks = []
    this.received = 0
    w.resolve(new Uint8Array(all.buffer, all.byteOffset, all.length))
  }

  private failPending(err: Error): void {
    const w = this.waiter
    this.waiter = undefined
    this.chunks = []
    this.received = 0
    w?.reject(err)
  }

  private releaseWhenIdle(): void {
    clearTimeout(this.idleTimer)
    this.idleTimer = setTimeout(() => {
      const s = this.socket
      if (this.waiter || !s) return
      this.socket = undefined
      s.end()
    }, this.idleReleaseMs)
    this.idleTimer.unref()
  }

  async send(command: Uint8Array): Promise<Uint8Array> {
    if (this.waiter) throw new TpmTransportError('swtpm transport used concurrently')
    clearTimeout(this.idleTimer)
    const socket = await this.connectData()
    return new Promise<Uint8Array>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.failPending(new TpmTransportError(`swtpm did not answer within ${this.timeoutMs} ms`))
        socket.destroy()
      }, this.timeoutMs)
      this.waiter = {
        resolve: (b) => {
          clearTimeout(timer)
          this.releaseWhenIdle()
          resolve(b)
        },
        reject: (e) => {
          clearTimeout(timer)
          reject(e)
        },
      }
      socket.write(command)
    })
  }

  /** One control-channel exchange: u32 command (+ payload) -> u32 result (0 = success). */
  async controlCommand(cmd: number, payload: Uint8Array = new Uint8Array(0)): Promise<void> {
    const address = this.control
    if (!address) throw new TpmTransportError('no swtpm control channel configured')
    const request = Buffer.alloc(4 + payload.length)
    request.writeUInt32BE(cmd, 0)
    request.set(payload, 4)
    const reply = await new Promise<Buffer>((resolve, reject) => {
      const s = connect(address)
      const parts: Buffer[] = []
      const timer = setTimeout(() => {
        s.destroy()
        reject(new TpmTransportError(`swtpm control channel ${describe(address)} timed out`))
      }, 10_000)
      s.on('error', (err) => {
        clearTimeout(timer)
        reject(
          new TpmTransportError(`swtpm control channel ${describe(address)}: ${err.message}`, { cause: err }),
        )
      })
      s.on('connect', () => s.write(request))
      s.on('data', (d: Buffer) => {
        parts.push(d)
        const got = Buffer.concat(parts)
        if (got.length >= 4) {
          clearTimeout(timer)
          s.end()
          resolve(got)
        }
      })
    })
    const result = reply.readUInt32BE(0)
    if (result !== 0)
      throw new TpmTransportError(`swtpm control command ${cmd} failed with 0x${result.toString(16)}`)
  }

  /** CMD_INIT: power on the TPM (it then needs TPM2_Startup). */
  async powerOn(): Promise<void> {
    await this.controlCommand(CtrlCmd.Init, new Uint8Array(4))
  }

  /** CMD_SHUTDOWN: power off; swtpm keeps its state files and exits. */
  async shutdownProcess(): Promise<void> {
    this.socket?.destroy()
    this.socket = undefined
    await this.controlCommand(CtrlCmd.Shutdown)
  }

  async close(): Promise<void> {
    clearTimeout(this.idleTimer)
    const s = this.socket
    this.socket = undefined
    this.failPending(new TpmTransportError('transport closed'))
    if (s && !s.destroyed) await new Promise<void>((resolve) => s.end(resolve))
  }
}
