/**
 * The verifier's connection policy in numbers: N simulated mTLS agents (bench/fleet-server.ts, a child process)
 * asked for `/version` through `AgentConnections`, once with keep-alive (a short quote interval) and once with
 * close-and-resume (a long one). Reports the verifier's memory per open connection and its CPU per request in each
 * mode (plus one full handshake per agent to start), i.e. the trade-off docs/performance.md describes.
 *
 *   node --expose-gc --import tsx bench/agent-connections.ts [--agents 2000] [--rounds 3]
 */
import { spawn } from 'node:child_process'
import { loadavg } from 'node:os'
import { resolve } from 'node:path'
import { createInterface } from 'node:readline'
import { AgentConnections } from '../src/verifier/agent-connections.ts'

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? Number(process.argv[i + 1]) : dflt
}
const AGENTS = arg('agents', 2000)
const ROUNDS = arg('rounds', 3)
const CONCURRENCY = 64

const child = spawn(
  process.execPath,
  ['--import', 'tsx', resolve(import.meta.dirname, 'fleet-server.ts'), String(AGENTS), '--tls', '256'],
  { stdio: ['ignore', 'pipe', 'ignore'] },
)
const line = await new Promise<string>((res) => createInterface({ input: child.stdout }).once('line', res))
const info = JSON.parse(line) as {
  port: number
  agents: { id: string; ip: string; cert: number }[]
  certs: string[]
  verifierTls: { cert: string; key: string }
}
const gc = (globalThis as { gc?: () => void }).gc ?? (() => undefined)

async function round(conns: AgentConnections): Promise<void> {
  let next = 0
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < info.agents.length) {
        const a = info.agents[next++] as (typeof info.agents)[number]
        await conns
          .client({
            agentId: a.id,
            ip: a.ip,
            port: info.port,
            apiVersion: '2.6',
            mtlsCert: info.certs[a.cert] as string,
          })
          .getVersion()
      }
    }),
  )
}

async function measure(label: string, quoteIntervalMs: number) {
  const tls = { ...info.verifierTls, trustedServerCa: [] }
  const conns = new AgentConnections(tls, 30_000, { quoteIntervalMs, maxOpenConnections: AGENTS * 2 })
  gc()
  const rss0 = process.memoryUsage().rss
  let cpu = process.cpuUsage()
  await round(conns) // first contact: a full handshake per agent
  const firstUs = (process.cpuUsage(cpu).user + process.cpuUsage(cpu).system) / AGENTS
  await new Promise((r) => setTimeout(r, 200))
  gc()
  const open = conns.openConnections
  const rssPerConnection = open > 0 ? (process.memoryUsage().rss - rss0) / open : 0
  cpu = process.cpuUsage()
  for (let i = 0; i < ROUNDS; i++) await round(conns)
  const used = process.cpuUsage(cpu)
  const steadyUs = (used.user + used.system) / (AGENTS * ROUNDS)
  await conns.close()
  console.log(
    `${label}: ${AGENTS} agents, ${open} connections open after a round, ${Math.round(rssPerConnection / 1024)} KB RSS per open connection, first request ${Math.round(firstUs)} us CPU (full handshake), then ${Math.round(steadyUs)} us CPU per request`,
  )
}

console.log(`load average ${loadavg()[0]?.toFixed(1)}`)
await measure('keep-alive (interval 2 s)', 2000)
await measure('close and resume the TLS session (interval 60 s)', 60_000)
child.kill('SIGKILL')
process.exit(0)
