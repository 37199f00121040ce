import { createServer } from 'node:net'

/** A TCP port the OS reports free on 127.0.0.1 (nothing stops another process from taking it before the caller). */
export async function freeLocalPort(): Promise<number> {
  const s = createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const port = (s.address() as { port: number }).port
  await new Promise((r) => s.close(r))
  return port
}
