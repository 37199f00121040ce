/**
 * A local receiver for the verifier's webhook notifications (revocations): every JSON body posted to it is kept in
 * arrival order, as sent or as `record` turns it, and answered 200. Tests check signatures themselves.
 */
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'

export interface WebhookReceiver<T> {
  port: number
  /** `http://127.0.0.1:<port>/`; any path is accepted. */
  url: string
  received: T[]
  close(): Promise<void>
}

/** A revocation notification's wire form: the message (JSON text) and its signature. */
export interface SignedNotification {
  msg: string
  signature: string
}

export async function startWebhookReceiver<T = SignedNotification>(
  record: (body: unknown) => T = (body) => body as T,
): Promise<WebhookReceiver<T>> {
  const received: T[] = []
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      received.push(record(JSON.parse(Buffer.concat(chunks).toString('utf8'))))
      res.writeHead(200).end()
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as AddressInfo).port
  return {
    port,
    url: `http://127.0.0.1:${port}/`,
    received,
    close: () => new Promise<void>((r) => server.close(() => r())),
  }
}

/** The message inside a notification, parsed. */
export const notificationMessage = <M = Record<string, unknown>>(body: unknown): M =>
  JSON.parse((body as SignedNotification).msg) as M
