/**
 * Connections from the verifier to pull agents: one keep-alive connection per agent (the loop never has two requests
 * to one agent in flight). Plain-HTTP agents share one undici Agent, which keeps a single-connection Client per
 * origin (`connections: 1`; a Pool per origin would cost ~16 KB of queue arrays each); mTLS agents each get their
 * own Client because the agent's server certificate is pinned to that agent's `mtls_cert`. One AgentClient per agent
 * is cached; `release` closes what an agent used.
 */
import { Agent, Client, type Dispatcher } from 'undici'
import { AgentClient, type ResponseBudget } from '../api/agent/client.ts'

export interface VerifierClientTls {
  cert: string
  key: string
  /** Extra CAs accepted for agent server certificates (`trusted_server_ca`), besides the pinned `mtls_cert`. */
  trustedServerCa: string[]
}

export interface AgentEndpoint {
  agentId: string
  ip: string
  port: number
  apiVersion: string
  /** PEM of the agent's self-signed server cert; null/`disabled` -> plain HTTP. */
  mtlsCert: string | null
}

interface Entry {
  client: AgentClient
  pool: Client | null
  key: string
}

export class AgentConnections {
  private readonly shared: Agent
  private readonly entries = new Map<string, Entry>()

  private readonly budget: ResponseBudget

  constructor(
    private readonly tls: VerifierClientTls | null,
    private readonly timeoutMs: number,
    private readonly limits: { maxResponseBytes: number; memoryLimit: number } = {
      maxResponseBytes: Number.POSITIVE_INFINITY,
      memoryLimit: Number.POSITIVE_INFINITY,
    },
  ) {
    this.budget = { limit: limits.memoryLimit, used: 0 }
    this.shared = new Agent({ connections: 1, keepAliveTimeout: 60_000, keepAliveMaxTimeout: 600_000 })
  }

  client(ep: AgentEndpoint): AgentClient {
    const useTls =
      this.tls !== null && ep.mtlsCert !== null && ep.mtlsCert !== '' && ep.mtlsCert !== 'disabled'
    const origin = `${useTls ? 'https' : 'http'}://${ep.ip.includes(':') ? `[${ep.ip}]` : ep.ip}:${ep.port}`
    const key = `${origin}|${ep.apiVersion}|${useTls ? ep.mtlsCert : ''}`
    const existing = this.entries.get(ep.agentId)
    if (existing && existing.key === key) return existing.client
    if (existing) this.release(ep.agentId)
    let pool: Client | null = null
    let dispatcher: Dispatcher = this.shared
    if (useTls && this.tls) {
      pool = new Client(origin, {
        keepAliveTimeout: 60_000,
        connect: {
          ca: [ep.mtlsCert as string, ...this.tls.trustedServerCa],
          cert: this.tls.cert,
          key: this.tls.key,
          rejectUnauthorized: true,
          checkServerIdentity: () => undefined,
          minVersion: 'TLSv1.2',
        },
      })
      dispatcher = pool
    }
    const client = new AgentClient({
      baseUrl: origin,
      apiVersion: ep.apiVersion,
      timeoutMs: this.timeoutMs,
      dispatcher,
      maxResponseBytes: this.limits.maxResponseBytes,
      responseBudget: this.budget,
    })
    this.entries.set(ep.agentId, { client, pool, key })
    return client
  }

  release(agentId: string): void {
    const e = this.entries.get(agentId)
    if (!e) return
    this.entries.delete(agentId)
    if (e.pool) e.pool.close().catch(() => undefined)
  }

  async close(): Promise<void> {
    const pools = [...this.entries.values()].flatMap((e) => (e.pool ? [e.pool] : []))
    this.entries.clear()
    await Promise.allSettled([...pools.map((p) => p.close()), this.shared.close()])
  }
}
