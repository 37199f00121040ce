/**
 * HTTP/1.1 from the verifier to its pull agents, on the connections `AgentConnections` opens (its pinned-certificate
 * check and connection policy unchanged). Per attestation the verifier sends one small GET and reads one small JSON
 * reply; undici's general machinery (request objects, header validation, the wasm parser's callbacks, its timers) cost
 * more CPU than the exchange itself, so this does only what an agent exchange needs: one connection per agent, one
 * request at a time on it (others wait in order), keep-alive or close after the reply, replies framed by
 * content-length, chunked or the connection's close, a timeout while waiting, bounded response heads.
 *
 * It offers the part of undici's Dispatcher that `AgentClient` uses (`dispatch` with a controller-style handler), so
 * the client's size cap, budget and schema checks stay as they are, and undici's `connect`, `disconnect` and
 * `connectionError` events (the fleet benchmark counts churn).
 */
import { EventEmitter } from 'node:events'
import type { Socket } from 'node:net'
import type { Dispatcher } from 'undici'

/** Opens a connection (TLS with the agent's checks, or plain TCP); calls back once. */
export type AgentConnector = (
  https: boolean,
  host: string,
  port: number,
  callback: (err: Error | null, socket: Socket | null) => void,
) => void

export interface AgentHttpOptions {
  connect: AgentConnector
  /** How long an unused connection stays open unless the agent's `keep-alive: timeout=N` says otherwise. */
  keepAliveTimeoutMs: number
  /**
   * Added to `keepAliveTimeoutMs` each time a connection falls idle (not to an agent's hint, after which the agent
   * closes it anyway): the loop's current lag, so that a verifier running late does not close connections just
   * before their next attestation and pay a handshake for each, which would make it later still.
   */
  idleGraceMs?: () => number
}

/** Largest response head (status line and headers) read. */
const MAX_HEAD_BYTES = 16 * 1024
/** Longest an unused connection stays open whatever the agent suggests. */
const MAX_IDLE_MS = 600_000

export class AgentHttpError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message)
  }
}

interface Request {
  method: string
  path: string
  body: string | undefined
  contentType: string | undefined
  timeoutMs: number
  close: boolean
}

/** One request: its handler's controller too. */
class Exchange {
  aborted = false
  paused = false
  reason: Error | null = null
  conn: Connection | null = null
  /** The handler has been told the outcome (end or error). */
  settled = false

  constructor(
    readonly origin: OriginState,
    readonly req: Request,
    readonly handler: Dispatcher.DispatchHandler,
  ) {}

  abort(reason: Error): void {
    if (this.aborted || this.settled) return
    this.aborted = true
    this.reason = reason
    if (this.conn !== null) this.conn.fail(reason)
    else {
      this.origin.remove(this)
      this.error(reason)
    }
  }

  pause(): void {}
  resume(): void {}

  error(err: Error): void {
    if (this.settled) return
    this.settled = true
    this.handler.onResponseError?.(this as never, err)
  }
}

enum Framing {
  Length,
  Chunked,
  UntilClose,
  None,
}

enum ChunkState {
  Size,
  Data,
  DataEnd,
  Trailers,
}

/** One open connection to an agent and the reply being read on it. */
class Connection {
  current: Exchange | null = null
  private head = ''
  private inBody = false
  private framing = Framing.None
  private remaining = 0
  private closeAfter = false
  private chunkState = ChunkState.Size
  private line = ''
  private headDeadline = 0
  /** How long this connection may stay unused: the agent's `keep-alive: timeout=N` hint, else ours. */
  private idleMs: number
  /** The agent said how long it keeps the connection (`keep-alive: timeout=N`). */
  private hinted = false
  /**
   * The socket's inactivity timeout stays at the shorter of the idle and request timeouts, so it is not set twice
   * per exchange (each set makes a new timer); when it fires before the current phase's own limit (`phaseMs`:
   * waiting for a reply, or idle), it is set for the rest once, and set back at the next phase.
   */
  private armedMs = 0
  private phaseMs = 0
  /** Inactivity already counted towards `phaseMs` when the socket's timeout last fired. */
  private waitedMs = 0
  private requestTimeoutMs = Number.POSITIVE_INFINITY
  closed = false

  constructor(
    readonly origin: OriginState,
    readonly socket: Socket,
  ) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk))
    socket.on('error', (err: Error) => this.onClose(err))
    socket.on('close', () => this.onClose(null))
    socket.on('timeout', () => this.onTimeout())
    this.idleMs = origin.http.keepAliveTimeoutMs
    this.phaseMs = this.idleMs
    this.arm(this.idleMs)
  }

  /** Sets the socket's inactivity timeout unless it already has this value. */
  private arm(ms: number): void {
    this.waitedMs = 0
    if (this.armedMs === ms) return
    this.armedMs = ms
    this.socket.setTimeout(ms)
  }

  send(ex: Exchange): void {
    this.current = ex
    ex.conn = this
    this.head = ''
    this.inBody = false
    this.closeAfter = ex.req.close
    const r = ex.req
    this.headDeadline = Date.now() + r.timeoutMs
    let text = `${r.method} ${r.path} HTTP/1.1\r\nhost: ${this.origin.hostHeader}\r\nconnection: ${r.close ? 'close' : 'keep-alive'}\r\n`
    if (r.body !== undefined)
      text += `content-type: ${r.contentType ?? 'application/json'}\r\ncontent-length: ${Buffer.byteLength(r.body)}\r\n\r\n${r.body}`
    else text += '\r\n'
    this.requestTimeoutMs = r.timeoutMs
    this.phaseMs = r.timeoutMs
    this.arm(Math.min(this.idleMs, r.timeoutMs))
    this.socket.write(text)
  }

  /** Ends the connection and, when one is running, its request with `err`. */
  fail(err: Error): void {
    const ex = this.current
    this.current = null
    this.socket.destroy()
    this.markClosed()
    if (ex !== null) ex.error(err)
  }

  private onTimeout(): void {
    this.waitedMs += this.armedMs
    if (this.waitedMs < this.phaseMs) {
      // the shorter timeout of the other phase fired: wait out this phase's own limit
      this.armedMs = this.phaseMs - this.waitedMs
      this.socket.setTimeout(this.armedMs)
      return
    }
    if (this.current === null) {
      // idle past the keep-alive timeout
      this.socket.destroy()
      this.markClosed()
      return
    }
    this.fail(new AgentHttpError('agent did not answer in time', 'UND_ERR_HEADERS_TIMEOUT'))
  }

  private onClose(err: Error | null): void {
    const ex = this.current
    if (ex !== null && this.inBody && this.framing === Framing.UntilClose && err === null) {
      this.current = null
      this.markClosed()
      this.finish(ex)
      return
    }
    this.current = null
    this.markClosed()
    if (ex !== null) ex.error(err ?? new AgentHttpError('other side closed', 'UND_ERR_SOCKET'))
  }

  private markClosed(): void {
    if (this.closed) return
    this.closed = true
    this.origin.closed(this)
  }

  private onData(chunk: Buffer): void {
    // the socket's inactivity timer restarts on this data
    this.waitedMs = 0
    const ex = this.current
    if (ex === null) {
      // nothing was asked: an agent that talks out of turn loses the connection
      this.fail(new AgentHttpError('unexpected data from agent', 'UND_ERR_SOCKET'))
      return
    }
    let at = 0
    if (!this.inBody) {
      at = this.readHead(ex, chunk)
      if (at < 0 || this.current !== ex) return
    }
    this.readBody(ex, chunk, at)
  }

  /** Returns where the body starts in `chunk`, or -1 when the head is incomplete or the exchange ended. */
  private readHead(ex: Exchange, chunk: Buffer): number {
    let from = 0
    for (;;) {
      const before = this.head.length
      this.head += chunk.toString(
        'latin1',
        from,
        from + Math.min(chunk.length - from, MAX_HEAD_BYTES + 4 - before),
      )
      const end = this.head.indexOf('\r\n\r\n', Math.max(0, before - 3))
      if (end < 0) {
        if (this.head.length >= MAX_HEAD_BYTES)
          this.fail(new AgentHttpError('agent reply head too large', 'UND_ERR_HEADERS_OVERFLOW'))
        // a head sent a few bytes at a time still has to be complete within the timeout
        else if (Date.now() > this.headDeadline)
          this.fail(new AgentHttpError('agent did not answer in time', 'UND_ERR_HEADERS_TIMEOUT'))
        return -1
      }
      const bodyAt = from + end + 4 - before
      const status = this.parseHead(ex, this.head.slice(0, end))
      if (status < 0) return -1
      if (status >= 200) return bodyAt
      // an interim reply (100 Continue): the real one follows
      this.head = ''
      from = bodyAt
      if (from >= chunk.length) return -1
    }
  }

  /** The status, or -1 when the head is invalid (the exchange has failed). */
  private parseHead(ex: Exchange, head: string): number {
    const lines = head.split('\r\n')
    const m = /^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/.exec(lines[0] as string)
    if (m === null) return this.bad('agent reply is not HTTP/1.x')
    const status = Number(m[2])
    const http10 = m[1] === '0'
    if (status >= 100 && status < 200) return status === 101 ? this.bad('agent switched protocols') : status
    const headers: Record<string, string> = {}
    let length: number | null = null
    let chunked = false
    let connection = ''
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i] as string
      const colon = line.indexOf(':')
      if (colon <= 0 || line.charCodeAt(0) === 32 || line.charCodeAt(0) === 9)
        return this.bad('agent reply has a malformed header')
      const name = line.slice(0, colon).toLowerCase()
      const value = line.slice(colon + 1).trim()
      if (name === 'content-length') {
        if (!/^\d{1,15}$/.test(value) || (length !== null && length !== Number(value)))
          return this.bad('agent reply has an invalid content-length')
        length = Number(value)
      } else if (name === 'transfer-encoding') {
        const codings = value.toLowerCase().split(',')
        if (codings.length !== 1 || codings[0]?.trim() !== 'chunked')
          return this.bad('agent reply has an unsupported transfer-encoding')
        chunked = true
      } else if (name === 'connection') connection = value.toLowerCase()
      else if (name === 'keep-alive') {
        // as undici: the agent's idle timeout less a second (no request sent as the agent closes), at most 10 minutes
        const hint = /timeout=(\d+)/.exec(value)
        if (hint !== null) {
          this.idleMs = Math.min(Number(hint[1]) * 1000 - 1000, MAX_IDLE_MS)
          this.hinted = true
          if (this.idleMs <= 0) this.closeAfter = true
        }
      }
      headers[name] = name in headers ? `${headers[name]}, ${value}` : value
    }
    if (chunked && length !== null) return this.bad('agent reply has both content-length and chunked')
    if (http10 ? !connection.includes('keep-alive') : connection.includes('close')) this.closeAfter = true
    if (status === 204 || status === 304 || ex.req.method === 'HEAD') this.framing = Framing.None
    else if (chunked) {
      this.framing = Framing.Chunked
      this.chunkState = ChunkState.Size
      this.line = ''
    } else if (length !== null) {
      this.framing = length === 0 ? Framing.None : Framing.Length
      this.remaining = length
    } else {
      this.framing = Framing.UntilClose
      this.closeAfter = true
    }
    this.inBody = true
    this.head = ''
    ex.handler.onResponseStart?.(ex as never, status, headers, m[3] ?? '')
    // the handler may have aborted (a declared length over its cap)
    if (this.current !== ex) return -1
    return status
  }

  private bad(message: string): -1 {
    this.fail(new AgentHttpError(message, 'HPE_INVALID'))
    return -1
  }

  private readBody(ex: Exchange, chunk: Buffer, at: number): void {
    switch (this.framing) {
      case Framing.None:
        if (at < chunk.length) this.closeAfter = true
        this.finish(ex)
        return
      case Framing.UntilClose:
        if (at < chunk.length) this.deliver(ex, at === 0 ? chunk : chunk.subarray(at))
        return
      case Framing.Length: {
        const n = Math.min(this.remaining, chunk.length - at)
        if (n > 0) {
          this.remaining -= n
          if (!this.deliver(ex, at === 0 && n === chunk.length ? chunk : chunk.subarray(at, at + n))) return
        }
        if (this.remaining === 0) {
          // bytes after the reply: the agent is out of step, the connection is not reused
          if (at + n < chunk.length) this.closeAfter = true
          this.finish(ex)
        }
        return
      }
      case Framing.Chunked:
        this.readChunked(ex, chunk, at)
    }
  }

  private readChunked(ex: Exchange, chunk: Buffer, at: number): void {
    while (at < chunk.length) {
      if (this.chunkState === ChunkState.Data) {
        const n = Math.min(this.remaining, chunk.length - at)
        if (!this.deliver(ex, chunk.subarray(at, at + n))) return
        at += n
        this.remaining -= n
        if (this.remaining === 0) this.chunkState = ChunkState.DataEnd
        continue
      }
      // a line: chunk size, the CRLF after data, or a trailer
      const nl = chunk.indexOf(10, at)
      const upTo = nl < 0 ? chunk.length : nl + 1
      this.line += chunk.toString('latin1', at, upTo)
      at = upTo
      if (this.line.length > 1024) {
        this.fail(new AgentHttpError('agent reply has a malformed chunk', 'HPE_INVALID'))
        return
      }
      if (nl < 0) return
      if (!this.line.endsWith('\r\n')) {
        this.fail(new AgentHttpError('agent reply has a malformed chunk', 'HPE_INVALID'))
        return
      }
      const line = this.line.slice(0, -2)
      this.line = ''
      if (this.chunkState === ChunkState.DataEnd) {
        if (line !== '') {
          this.fail(new AgentHttpError('agent reply has a malformed chunk', 'HPE_INVALID'))
          return
        }
        this.chunkState = ChunkState.Size
      } else if (this.chunkState === ChunkState.Size) {
        const size = /^([0-9a-fA-F]{1,8})(?:;.*)?$/.exec(line)
        if (size === null) {
          this.fail(new AgentHttpError('agent reply has a malformed chunk size', 'HPE_INVALID'))
          return
        }
        this.remaining = Number.parseInt(size[1] as string, 16)
        this.chunkState = this.remaining === 0 ? ChunkState.Trailers : ChunkState.Data
      } else if (line === '') {
        // the last chunk's trailers are over
        if (at < chunk.length) this.closeAfter = true
        this.finish(ex)
        return
      }
    }
  }

  /** Hands a body chunk to the handler; false when that ended the exchange (an abort). */
  private deliver(ex: Exchange, data: Buffer): boolean {
    ex.handler.onResponseData?.(ex as never, data)
    return this.current === ex
  }

  private finish(ex: Exchange): void {
    this.current = null
    this.inBody = false
    ex.conn = null
    ex.settled = true
    if (this.closed || this.closeAfter) {
      this.socket.destroy()
      this.markClosed()
    } else {
      this.phaseMs = this.hinted ? this.idleMs : this.idleMs + this.origin.http.idleGraceMs()
      this.arm(Math.min(this.phaseMs, this.requestTimeoutMs))
      this.origin.idle()
    }
    ex.handler.onResponseEnd?.(ex as never, {})
  }
}

/** What is held per agent origin: its connection (at most one) and the requests waiting for it. */
class OriginState {
  conn: Connection | null = null
  busy = false
  private readonly queue: Exchange[] = []

  constructor(
    readonly http: AgentHttp,
    readonly key: string,
    readonly https: boolean,
    readonly host: string,
    readonly port: number,
    readonly hostHeader: string,
  ) {}

  submit(ex: Exchange): void {
    if (this.busy) this.queue.push(ex)
    else this.start(ex)
  }

  remove(ex: Exchange): void {
    const i = this.queue.indexOf(ex)
    if (i >= 0) this.queue.splice(i, 1)
  }

  idle(): void {
    this.busy = false
    this.next()
  }

  closed(conn: Connection): void {
    this.http.emit('disconnect', this.key)
    if (this.conn !== conn) return
    this.conn = null
    // whatever ran on it is settled by the caller; the origin is free for the next request
    this.busy = false
    queueMicrotask(() => this.next())
  }

  failAll(err: Error): void {
    for (const ex of this.queue.splice(0)) ex.error(err)
  }

  private next(): void {
    if (this.busy) return
    const ex = this.queue.shift()
    if (ex !== undefined) this.start(ex)
    else if (this.conn === null) this.http.forget(this)
  }

  private start(ex: Exchange): void {
    this.busy = true
    ex.handler.onRequestStart?.(ex as never, {})
    if (ex.aborted) {
      this.busy = false
      this.next()
      return
    }
    if (this.conn !== null) {
      this.conn.send(ex)
      return
    }
    this.http.connector(this.https, this.host, this.port, (err, socket) => {
      if (socket !== null && this.http.closing !== null) {
        socket.destroy()
        err = this.http.closing
      }
      if (err !== null || socket === null) {
        this.http.emit('connectionError', this.key, [], err)
        this.busy = false
        ex.error(err ?? new AgentHttpError('connection failed', 'UND_ERR_SOCKET'))
        this.next()
        return
      }
      this.http.emit('connect', this.key, [])
      const c = new Connection(this, socket)
      this.conn = c
      if (ex.aborted) {
        c.fail(ex.reason ?? new AgentHttpError('aborted', 'UND_ERR_ABORTED'))
        return
      }
      c.send(ex)
    })
  }
}

export class AgentHttp extends EventEmitter {
  readonly connector: AgentConnector
  readonly keepAliveTimeoutMs: number
  readonly idleGraceMs: () => number
  private readonly origins = new Map<string, OriginState>()
  closing: Error | null = null

  constructor(opts: AgentHttpOptions) {
    super()
    this.connector = opts.connect
    this.keepAliveTimeoutMs = opts.keepAliveTimeoutMs
    this.idleGraceMs = opts.idleGraceMs ?? (() => 0)
  }

  /** undici's `Dispatcher.dispatch`, for the options `AgentClient` sends. */
  dispatch(opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    if (this.closing !== null) throw this.closing
    const originText = String(opts.origin)
    let origin = this.origins.get(originText)
    if (origin === undefined) {
      const url = new URL(originText)
      const https = url.protocol === 'https:'
      if (!https && url.protocol !== 'http:')
        throw new AgentHttpError(`unsupported origin ${originText}`, 'UND_ERR_INVALID_ARG')
      const port = url.port === '' ? (https ? 443 : 80) : Number(url.port)
      origin = new OriginState(this, originText, https, url.hostname.replace(/^\[|\]$/g, ''), port, url.host)
      this.origins.set(originText, origin)
    }
    const body = opts.body
    if (body !== undefined && body !== null && typeof body !== 'string')
      throw new AgentHttpError('only string bodies are sent to agents', 'UND_ERR_INVALID_ARG')
    const headers = opts.headers as Record<string, string> | undefined
    const req: Request = {
      method: opts.method,
      path: opts.path,
      body: body ?? undefined,
      contentType: headers?.['content-type'],
      timeoutMs: Math.max(opts.headersTimeout ?? 0, opts.bodyTimeout ?? 0) || 300_000,
      close: opts.reset === true,
    }
    if (/[\r\n]/.test(req.path) || /[^A-Z]/.test(req.method))
      throw new AgentHttpError('invalid request line', 'UND_ERR_INVALID_ARG')
    origin.submit(new Exchange(origin, req, handler))
    return true
  }

  forget(origin: OriginState): void {
    if (this.origins.get(origin.key) === origin) this.origins.delete(origin.key)
  }

  async close(): Promise<void> {
    this.closing = new AgentHttpError('the verifier is closing its agent connections', 'UND_ERR_CLOSED')
    for (const origin of [...this.origins.values()]) {
      origin.failAll(this.closing)
      origin.conn?.fail(this.closing)
    }
    this.origins.clear()
  }

  async destroy(): Promise<void> {
    await this.close()
  }
}
