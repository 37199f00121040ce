import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterEach, describe, expect, it } from 'vitest'
import { AgentClient, AgentClientError, type ResponseBudget } from '../../../src/api/agent/client.ts'

let server: Server | null = null
afterEach(async () => {
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()))
  server = null
})

/** An agent whose /version reply is `bytes` long (valid JSON), sent in 64 KiB chunks, optionally without a length. */
async function agentReplying(bytes: number, declareLength: boolean): Promise<string> {
  const srv = createServer((_req, res) => {
    const head = '{"code":200,"status":"Success","results":{"supported_version":"2.2","pad":"'
    const tail = '"}}'
    const pad = bytes - head.length - tail.length
    if (declareLength) res.setHeader('content-length', String(bytes))
    res.write(head)
    let left = pad
    const chunk = 'x'.repeat(65_536)
    while (left > 0) {
      const n = Math.min(left, chunk.length)
      res.write(chunk.slice(0, n))
      left -= n
    }
    res.end(tail)
  })
  server = srv
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()))
  return `http://127.0.0.1:${(srv.address() as AddressInfo).port}`
}

describe('agent client reply limits', () => {
  for (const declareLength of [true, false]) {
    it(`refuses a reply over maxResponseBytes (${declareLength ? 'declared' : 'chunked'})`, async () => {
      const client = new AgentClient({
        baseUrl: await agentReplying(5 * 1024 * 1024, declareLength),
        apiVersion: '2.2',
        maxResponseBytes: 1024 * 1024,
      })
      const err = await client.getVersion().catch((e: unknown) => e)
      expect(err).toBeInstanceOf(AgentClientError)
      expect((err as AgentClientError).isTooLarge).toBe(true)
      await client.close()
    })
  }

  it('reads a reply within the limit and returns the budget it used', async () => {
    const budget: ResponseBudget = { limit: 1024 * 1024, used: 0 }
    const client = new AgentClient({
      baseUrl: await agentReplying(512 * 1024, false),
      apiVersion: '2.2',
      maxResponseBytes: 1024 * 1024,
      responseBudget: budget,
    })
    expect((await client.getVersion()).supported_version).toBe('2.2')
    expect(budget.used).toBe(0)
    await client.close()
  })

  it('drops a reply that would exceed the shared budget as a transient failure', async () => {
    const budget: ResponseBudget = { limit: 256 * 1024, used: 0 }
    const client = new AgentClient({
      baseUrl: await agentReplying(512 * 1024, false),
      apiVersion: '2.2',
      maxResponseBytes: 1024 * 1024,
      responseBudget: budget,
    })
    const err = (await client.getVersion().catch((e: unknown) => e)) as AgentClientError
    expect(err).toBeInstanceOf(AgentClientError)
    expect(err.isTooLarge).toBe(false)
    expect(err.httpStatus).toBeUndefined()
    expect(err.message).toMatch(/budget/)
    expect(budget.used).toBe(0)
    await client.close()
  })
})
