/**
 * A lean HTTP/1.1 client for load generators: a fixed set of kept-alive connections to one server, one request at a
 * time on each (as one agent's connection), requests written as one string, responses read by Content-Length.
 * The simulated agents share the machine with the verifier they measure, so every microsecond they spend is taken
 * from it: with this client those of `push-fleet.ts` need ~160 us of CPU per attestation (two requests), ~205 us with
 * undici. It understands what the verifier sends (a status line, headers, a Content-Length body); anything else
 * (chunked bodies, a closed connection) fails the request.
 */
import { connect, type Socket } from 'node:net'

export interface LeanResponse {
  status: number
  /** Header names in lower case. */
  headers: Record<string, string>
  body: string
}

interface Pending {
  resolve: (r: LeanResponse) => void
  reject: (err: Error) => void
}

const HEADER_END = Buffer.from('\r\n\r\n')

class Connection {
  private readonly socket: Socket
  private pending: Pending | null = null
  private chunks: Buffer[] = []
  private buffered = 0

  constructor(port: number, host: string) {
    this.socket = connect({ port, host, noDelay: true })
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk))
    this.socket.on('error', (err) => this.fail(err))
    this.socket.on('close', () => this.fail(new Error('connection closed')))
  }

  send(request: string): Promise<LeanResponse> {
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject }
      this.socket.write(request)
    })
  }

  close(): void {
    this.socket.destroy()
  }

  private fail(err: Error): void {
    const p = this.pending
    this.pending = null
    this.chunks = []
    this.buffered = 0
    p?.reject(err)
  }

  private onData(chunk: Buffer): void {
    this.chunks.push(chunk)
    this.buffered += chunk.length
    const data = this.chunks.length === 1 ? chunk : Buffer.concat(this.chunks, this.buffered)
    const end = data.indexOf(HEADER_END)
    if (end < 0) return
    const head = data.toString('latin1', 0, end).split('\r\n')
    const headers: Record<string, string> = {}
    for (let i = 1; i < head.length; i++) {
      const line = head[i] as string
      const colon = line.indexOf(':')
      headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim()
    }
    const length = Number(headers['content-length'])
    if (!Number.isSafeInteger(length)) {
      this.fail(new Error('response without Content-Length'))
      return
    }
    if (data.length < end + 4 + length) {
      this.chunks = [data]
      return
    }
    this.chunks = []
    this.buffered = 0
    const p = this.pending
    this.pending = null
    p?.resolve({
      status: Number((head[0] as string).slice(9, 12)),
      headers,
      body: data.toString('utf8', end + 4, end + 4 + length),
    })
  }
}

/** `connections` kept-alive connections to `host:port`; a request waits for a free one. */
export class LeanPool {
  private readonly free: Connection[] = []
  private readonly waiting: ((c: Connection) => void)[] = []
  private readonly all: Connection[] = []

  constructor(
    private readonly port: number,
    private readonly host: string,
    connections: number,
  ) {
    for (let i = 0; i < connections; i++) {
      const c = new Connection(port, host)
      this.all.push(c)
      this.free.push(c)
    }
  }

  async request(
    method: string,
    path: string,
    headers: Record<string, string>,
    body: string,
  ): Promise<LeanResponse> {
    const c = this.free.pop() ?? (await new Promise<Connection>((r) => this.waiting.push(r)))
    let head = `${method} ${path} HTTP/1.1\r\nhost: ${this.host}:${this.port}\r\ncontent-length: ${Buffer.byteLength(body)}\r\n`
    for (const name in headers) head += `${name}: ${headers[name]}\r\n`
    let response: LeanResponse
    try {
      response = await c.send(`${head}\r\n${body}`)
    } catch (err) {
      // a broken connection is replaced, so the pool keeps its size
      c.close()
      const fresh = new Connection(this.port, this.host)
      this.all[this.all.indexOf(c)] = fresh
      this.handBack(fresh)
      throw err
    }
    this.handBack(c)
    return response
  }

  close(): void {
    for (const c of this.all) c.close()
  }

  private handBack(c: Connection): void {
    const next = this.waiting.shift()
    if (next) next(c)
    else this.free.push(c)
  }
}
