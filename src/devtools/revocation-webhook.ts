/**
 * A local webhook that receives the verifier's revocation notifications and checks each signature with the
 * RevocationNotifier certificate, as an operator's receiver would: used by the demo and the end-to-end tests.
 */
import { createServer, type Server } from 'node:http'
import { type RevocationMessage, verifyRevocation } from '../crypto/revocation.ts'

export interface RevocationWebhook {
  /** Every notification in arrival order: the verified message, or why it was rejected. */
  received: { message: RevocationMessage | null; error?: string }[]
  close(): Promise<void>
}

/** Listens on 127.0.0.1:`port`; `notifierCertPem` is read at each notification (the CA may create it later). */
export function startRevocationWebhook(port: number, notifierCertPem: () => string): RevocationWebhook {
  const received: RevocationWebhook['received'] = []
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      try {
        const wire = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown
        received.push({ message: verifyRevocation(wire, notifierCertPem()) })
      } catch (err) {
        received.push({ message: null, error: (err as Error).message })
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}')
    })
  })
  server.listen(port, '127.0.0.1')
  return { received, close: () => new Promise<void>((resolve) => server.close(() => resolve())) }
}
