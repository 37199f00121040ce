/**
 * Idle resident memory of the compiled agent on swtpm, quicker than bench/agent.ts: a first start, then restarts,
 * each measured 3 s after one identity quote (RSS from /proc/PID/status, split into anonymous and file-backed pages
 * by /proc/PID/smaps_rollup), with a bare `node` under the same flags before and after.
 *   node --import tsx bench/agent-idle.ts [restarts=2] [--push]
 * `--push` runs `keylime push-agent` instead, measured after registration while it retries an unreachable verifier
 * (so its HTTPS client is loaded). Env: KEYLIME_BENCH_NODE_OPTIONS (Node flags instead of the unit's),
 * KEYLIME_BENCH_CLI (another `keylime` entry).
 */
import { spawn } from 'node:child_process'
import { appendFileSync, mkdtempSync, readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { AgentClient } from '../src/api/agent/client.ts'
import { createLogger } from '../src/common/log.ts'
import { loadRegistrarConfig } from '../src/config/registrar.ts'
import { ensureTlsDir } from '../src/crypto/ca.ts'
import { freePort, startSwtpm } from '../src/devtools/swtpm.ts'
import { removeWorkDir } from '../src/devtools/work-dir.ts'
import { startRegistrar } from '../src/registrar/server.ts'

const PUSH = process.argv.includes('--push')
const RESTARTS = Number(process.argv.slice(2).find((a) => /^\d+$/.test(a)) ?? 2)
const UNIT = new URL(`../packaging/systemd/keylime-${PUSH ? 'push-' : ''}agent.service`, import.meta.url)
const unitFlags = /^Environment="NODE_OPTIONS=([^"]*)"/m.exec(readFileSync(UNIT, 'utf8'))?.[1] ?? ''
const FLAGS = (process.env.KEYLIME_BENCH_NODE_OPTIONS ?? unitFlags).split(' ').filter(Boolean)
const CLI = process.env.KEYLIME_BENCH_CLI ?? new URL('../bin/keylime.js', import.meta.url).pathname
const UUID = 'f00df00d-0000-4000-8000-000000000001'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const load = () =>
  `load average ${loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')}`
const rssMiB = (pid: number) =>
  Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024
function split(pid: number): string {
  const smaps = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8')
  const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(smaps)?.[1])
  return `${(kib('Anonymous') / 1024).toFixed(1)} anonymous, ${((kib('Rss') - kib('Anonymous')) / 1024).toFixed(1)} file-backed`
}

async function bareNode(): Promise<string> {
  const child = spawn(process.execPath, [...FLAGS, '-e', 'setInterval(() => {}, 1e6)'], { stdio: 'ignore' })
  await sleep(1500)
  const line = `bare node ${rssMiB(child.pid as number).toFixed(1)} MiB (${split(child.pid as number)})`
  child.kill()
  return line
}

const work = mkdtempSync(join(tmpdir(), 'kl-agent-idle-'))
const swtpm = await startSwtpm()
const env = { KEYLIME_DIR: join(work, 'registrar') }
const { config } = loadRegistrarConfig({
  configDirs: [],
  env,
  flags: { tls_dir: 'generate', port: 0, tls_port: 0, database_url: 'sqlite' },
})
const registrar = await startRegistrar(config, createLogger('bench', 'silent'), { env })
const agentDir = join(work, 'agent')
await ensureTlsDir(join(agentDir, 'cv_ca'))
appendFileSync(join(agentDir, 'ima'), `10 ${'a'.repeat(40)} ima-ng sha256:${'0'.repeat(64)} /usr/lib/f0\n`)
const conf = join(work, 'agent.conf')
appendFileSync(conf, '[agent]\n')
const port = await freePort()

async function run(label: string): Promise<void> {
  const command = PUSH
    ? [
        'push-agent',
        '--verifier-url',
        'https://127.0.0.1:9',
        '--ca-certificate',
        join(agentDir, 'cv_ca', 'cacert.crt'),
      ]
    : ['agent', '--port', String(port), '--contact-port', String(port)]
  const agent = spawn(
    process.execPath,
    [
      ...[...FLAGS, CLI, ...command, '--config', conf, '--tpm', swtpm.transport, '--keylime-dir', agentDir],
      ...['--registrar-port', String(registrar.httpPort), '--run-as', '', '--uuid', UUID],
      ...['--ima-ml-path', join(agentDir, 'ima'), '--measuredboot-ml-path', join(agentDir, 'none')],
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, KEYLIME_LOG_LEVEL: 'info' } },
  )
  let output = ''
  await new Promise<void>((resolve, reject) => {
    const ready = PUSH ? 'attestation round failed' : 'listening on'
    agent.stdout?.on('data', (d: Buffer) => {
      output += d
      if (output.includes(ready)) resolve()
    })
    agent.stderr?.on('data', (d: Buffer) => {
      output += d
    })
    agent.once('exit', () => reject(new Error(`agent exited: ${output}`)))
  })
  if (!PUSH) {
    const client = new AgentClient({
      baseUrl: `https://127.0.0.1:${port}`,
      apiVersion: '2.6',
      tls: {
        ca: await readFile(join(agentDir, 'server-cert.crt'), 'utf8'),
        cert: await readFile(join(agentDir, 'cv_ca', 'client-cert.crt'), 'utf8'),
        key: await readFile(join(agentDir, 'cv_ca', 'client-private.pem'), 'utf8'),
      },
    })
    await client.identityQuote('nonce1234')
    await client.close()
  }
  await sleep(3000)
  const pid = agent.pid as number
  console.log(`${label}: idle RSS ${rssMiB(pid).toFixed(1)} MiB (${split(pid)}); ${load()}`)
  agent.kill('SIGTERM')
  await new Promise((r) => agent.once('exit', r))
}

try {
  console.log(`${PUSH ? 'push agent' : 'agent'}; flags: ${FLAGS.join(' ')}; ${await bareNode()}; ${load()}`)
  await run('first start')
  for (let i = 1; i <= RESTARTS; i++) await run(`restart ${i}`)
  console.log(`${await bareNode()}; ${load()}`)
} finally {
  await registrar.close()
  await swtpm.stop()
  removeWorkDir(work)
}
