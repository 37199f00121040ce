/**
 * Revocation notifications (keylime-protocols.md §F, producer side). Messages are signed with the failing agent's
 * `revocation_key` (RSA-PSS, SHA-256, max salt) and delivered in the background: a bounded queue with a few workers,
 * retries with the verifier's backoff, never blocking the attestation loop.
 */
import { request } from 'undici'
import type { Logger } from '../common/log.ts'
import { asctime, type RevocationMessage, type RevocationWire, signRevocation } from '../crypto/revocation.ts'

export type { RevocationWire }

export interface RevocationSubject {
  agentId: string
  ip: string | null
  port: number | null
  tpmPolicy: string | null
  metaData: string | null
  revocationKey: string | null
}

export function buildRevocationMessage(
  subject: RevocationSubject,
  type: 'revocation' | 'comm_error',
  now: Date,
  event?: { eventId: string; severityLabel: string; context: unknown },
): RevocationMessage {
  const msg: RevocationMessage = {
    type,
    ip: subject.ip,
    agent_id: subject.agentId,
    port: subject.port,
    tpm_policy: subject.tpmPolicy,
    meta_data: subject.metaData,
    event_time: asctime(now),
  }
  if (event) {
    msg.event_id = event.eventId
    msg.severity_label = event.severityLabel
    msg.context = JSON.stringify(event.context)
  }
  return msg
}

export interface NotifierTransport {
  /** POSTs the wire object to the webhook; resolves to the HTTP status. */
  postWebhook(url: string, wire: RevocationWire): Promise<number>
  /** POSTs the wire object to every other agent this verifier attests. */
  postToAgents(exceptAgentId: string, wire: RevocationWire): Promise<void>
}

export interface RevocationNotifierOptions {
  channels: readonly string[]
  webhookUrl: string
  maxRetries: number
  retryInterval: number
  exponentialBackoff: boolean
  /** Pending deliveries kept at most; older ones are dropped with a warning when exceeded. */
  maxQueue?: number
  concurrency?: number
}

interface Job {
  channel: 'webhook' | 'agent'
  agentId: string
  wire: RevocationWire
  attempt: number
}

export class RevocationNotifier {
  private readonly queue: Job[] = []
  private active = 0
  private closed = false
  private readonly timers = new Set<NodeJS.Timeout>()
  /** Deliveries that succeeded (for tests and the status log). */
  delivered = 0
  dropped = 0

  constructor(
    private readonly opts: RevocationNotifierOptions,
    private readonly transport: NotifierTransport,
    private readonly log: Logger,
  ) {}

  notify(
    subject: RevocationSubject,
    type: 'revocation' | 'comm_error',
    now: Date,
    event?: { eventId: string; severityLabel: string; context: unknown },
  ): void {
    const wantsWebhook = this.opts.channels.includes('webhook') && this.opts.webhookUrl !== ''
    const wantsAgents = this.opts.channels.includes('agent')
    if (!wantsWebhook && !wantsAgents) return
    let wire: RevocationWire
    try {
      wire = signRevocation(buildRevocationMessage(subject, type, now, event), subject.revocationKey)
    } catch (err) {
      this.log.error(
        { agentId: subject.agentId, err: (err as Error).message },
        'cannot sign revocation message',
      )
      return
    }
    if (wantsWebhook) this.enqueue({ channel: 'webhook', agentId: subject.agentId, wire, attempt: 0 })
    if (wantsAgents) this.enqueue({ channel: 'agent', agentId: subject.agentId, wire, attempt: 0 })
  }

  private enqueue(job: Job): void {
    if (this.closed) return
    const max = this.opts.maxQueue ?? 1000
    if (this.queue.length >= max) {
      this.queue.shift()
      this.dropped++
      this.log.warn('revocation queue full: dropped the oldest notification')
    }
    this.queue.push(job)
    this.pump()
  }

  private pump(): void {
    const limit = this.opts.concurrency ?? 4
    while (this.active < limit && this.queue.length > 0) {
      const job = this.queue.shift() as Job
      this.active++
      this.deliver(job).finally(() => {
        this.active--
        this.pump()
      })
    }
  }

  private async deliver(job: Job): Promise<void> {
    try {
      if (job.channel === 'webhook') {
        const status = await this.transport.postWebhook(this.opts.webhookUrl, job.wire)
        if (status !== 200 && status !== 202) throw new Error(`webhook answered ${status}`)
      } else {
        await this.transport.postToAgents(job.agentId, job.wire)
      }
      this.delivered++
    } catch (err) {
      const attempt = job.attempt + 1
      if (attempt >= this.opts.maxRetries || this.closed) {
        this.log.warn(
          { agentId: job.agentId, channel: job.channel, err: (err as Error).message },
          'revocation not delivered',
        )
        return
      }
      const base = this.opts.retryInterval
      const delayS = this.opts.exponentialBackoff && base > 1 ? base ** attempt : base
      const t = setTimeout(() => {
        this.timers.delete(t)
        this.enqueue({ ...job, attempt })
      }, delayS * 1000)
      t.unref()
      this.timers.add(t)
    }
  }

  /** Waits for in-flight deliveries (up to `timeoutMs`) and stops retrying. */
  async close(timeoutMs = 2000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while ((this.active > 0 || this.queue.length > 0) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20))
    this.closed = true
    for (const t of this.timers) clearTimeout(t)
    this.timers.clear()
  }
}

/** Webhook POST with undici; TLS client material when the URL is https. */
export async function postWebhookWithUndici(
  url: string,
  wire: RevocationWire,
  opts: { timeoutMs: number; dispatcher?: import('undici').Dispatcher },
): Promise<number> {
  const res = await request(url, {
    method: 'POST',
    body: JSON.stringify(wire),
    headers: { 'content-type': 'application/json' },
    headersTimeout: opts.timeoutMs,
    bodyTimeout: opts.timeoutMs,
    ...(opts.dispatcher ? { dispatcher: opts.dispatcher } : {}),
  })
  await res.body.dump()
  return res.statusCode
}
