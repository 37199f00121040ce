/**
 * The parts of Keylime's HTTP conventions that need no framework: request ids, answers to requests node's parser
 * refuses, the probes' readiness (shared runs, a timeout) and the auth error bodies. The fastify factory
 * (`server.ts`) and the agent's own lean HTTP layer (`src/agent/http-server.ts`) both build on them, so the agent
 * never loads fastify.
 */
import type { Socket } from 'node:net'
import { TLSSocket } from 'node:tls'
import { errorEnvelope } from './envelope.ts'

/** Default body limit of a route: enough for any request that does not upload a policy. */
export const SMALL_BODY_LIMIT = 64 * 1024

/** Upstream sanitising of `X-Request-ID`: non-word characters stripped, at most 36 kept. */
export function sanitizeRequestId(raw: string | string[] | undefined): string | null {
  const v = Array.isArray(raw) ? raw[0] : raw
  if (v === undefined) return null
  const clean = v.replace(/\W/g, '').slice(0, 36)
  return clean === '' ? null : clean
}

/** Errors node's HTTP parser raises before a handler sees a request (bad request line, huge headers, timeouts). */
export function answerClientError(error: Error & { code?: string }, socket: Socket): void {
  if (error.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy()
    return
  }
  const [status, text] =
    error.code === 'HPE_HEADER_OVERFLOW'
      ? [431, 'Request Header Fields Too Large']
      : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, 'Request Timeout']
        : [400, 'Bad Request']
  const body = JSON.stringify(errorEnvelope(status, text))
  socket.end(
    `HTTP/1.1 ${status} ${text}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  )
}

export type ClientCertStatus = 'plain-http' | 'none' | 'untrusted' | 'trusted'

/** Whether a connection came with a client certificate chained to the listener's trusted CA. */
export function socketCertificateStatus(socket: unknown): ClientCertStatus {
  if (!(socket instanceof TLSSocket)) return 'plain-http'
  const peer = socket.getPeerCertificate()
  if (!peer || Object.keys(peer).length === 0) return 'none'
  return socket.authorized ? 'trusted' : 'untrusted'
}

/** The JSON (non-envelope) auth error bodies of keylime-api.md §0.3. */
export function authErrorBody(status: 401 | 403, detail: string) {
  return {
    errors: [{ status: String(status), title: status === 401 ? 'Unauthorized' : 'Forbidden', detail }],
  }
}

// ---- health, readiness, metrics ----

/**
 * The named checks of a service's readiness, each true when it holds (`{database: true, migrations: true}`).
 * Throwing counts as every check failing. Only the names and booleans are answered; causes go to the log.
 */
export type ReadinessCheck = () => Promise<Record<string, boolean>>

/** What `/metrics` renders: a prom-client `Registry` (registrar, verifier) or the agent's own writer. */
export interface MetricsSource {
  readonly contentType: string
  metrics(): Promise<string>
}

export interface ProbeOptions {
  readiness: ReadinessCheck
  /** What `/metrics` renders; no `/metrics` route without it. */
  metrics?: MetricsSource | undefined
}

/** A readiness check that has not answered by then fails: a probe must not hang on a stuck database. */
export const READINESS_TIMEOUT_MS = 2000

/** The `/readyz` answer: 200 when every check holds, else 503; the body names each check. */
export interface ReadinessAnswer {
  status: 200 | 503
  body: { status: 'ready' | 'not ready'; checks: Record<string, 'ok' | 'failing'> }
}

/**
 * Runs a service's readiness checks for `/readyz`: concurrent calls share one run, so a burst of probes costs one
 * database round trip; a check that throws or does not answer in time fails (the cause goes to `warn`).
 */
export function sharedReadiness(
  check: ReadinessCheck,
): (warn: (err: unknown) => void) => Promise<ReadinessAnswer> {
  let running: Promise<Record<string, boolean>> | null = null
  return async (warn) => {
    running ??= withTimeout(check(), READINESS_TIMEOUT_MS)
      .catch((err: unknown) => {
        warn(err)
        return { checks: false }
      })
      .finally(() => {
        running = null
      })
    const checks = await running
    const ready = Object.values(checks).every(Boolean)
    const named = Object.fromEntries(
      Object.entries(checks).map(([k, v]) => [k, v ? ('ok' as const) : ('failing' as const)]),
    )
    return { status: ready ? 200 : 503, body: { status: ready ? 'ready' : 'not ready', checks: named } }
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms)
    timer.unref()
    promise.then(
      (v) => {
        clearTimeout(timer)
        resolve(v)
      },
      (err: unknown) => {
        clearTimeout(timer)
        reject(err)
      },
    )
  })
}
