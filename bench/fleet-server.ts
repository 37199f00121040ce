/**
 * Child process of the fleet benchmark: serves N simulated agents (own ECC AK each, one shared RSA payload key) and
 * prints one JSON line `{port, agents: [{id, ip, akTpm, pcr15}]}` on stdout, then serves until killed.
 * Usage: node --import tsx bench/fleet-server.ts <count>
 */
import { startSimFleet } from './fleet-agents.ts'

const count = Number(process.argv[2] ?? '1000')
const fleet = await startSimFleet({ count, sharePayloadKey: true, akType: 'ecc' })
const agents = fleet.agents.map((a) => ({
  id: a.id,
  ip: a.ip,
  akTpm: a.quoter.akTpm,
  pcr15: (a.quoter.pcrs.get(15) as Buffer).toString('hex'),
}))
process.stdout.write(`${JSON.stringify({ port: fleet.port, agents })}\n`)
setInterval(() => {
  const quotes = fleet.agents.reduce((n, a) => n + a.quotes, 0)
  const vKeys = fleet.agents.reduce((n, a) => n + a.vKeys.length, 0)
  process.stderr.write(`${JSON.stringify({ quotes, vKeys })}\n`)
}, 1000)
