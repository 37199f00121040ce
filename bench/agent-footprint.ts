/**
 * Agent footprint on swtpm, measured on a real `keylime agent` process (the way it runs on a machine): start to
 * registered and activated, resident memory idle and under quotes (next to what an idle Node process costs), CPU
 * per quote spent in the agent process (swtpm's own work is another process), RSS and open descriptors over many
 * quotes, and serving a 1,000,000-entry IMA list from an offset.
 *   node --import tsx bench/agent-footprint.ts [quotes] [ima-entries]
 * KEYLIME_BENCH_CLI names another entry for the `keylime` command (e.g. a compiled or bundled CLI) to compare.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import {
  appendFileSync,
  closeSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  writeSync,
} from 'node:fs'
import { readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ImaMeasurementList } from '../src/agent/ima-list.ts'
import { AgentClient } from '../src/api/agent/client.ts'
import { createLogger } from '../src/common/log.ts'
import { loadRegistrarConfig } from '../src/config/registrar.ts'
import { ensureTlsDir } from '../src/crypto/ca.ts'
import { freePort, startSwtpm } from '../src/devtools/swtpm.ts'
import { removeWorkDir } from '../src/devtools/work-dir.ts'
import { startRegistrar } from '../src/registrar/server.ts'
import { createAk, createEk, flushContext, readEkCertificate } from '../src/tpm/keylime-client.ts'
import { Tpm } from '../src/tpm/tpm.ts'

const QUOTES = Number(process.argv[2] ?? 10_000)
const IMA_ENTRIES = Number(process.argv[3] ?? 1_000_000)
const TICKS = 100 // USER_HZ on Linux

function rssMiB(pid: number): number {
  const kb = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]
  return Number(kb) / 1024
}
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? []
  return (Number(fields[11]) + Number(fields[12])) / TICKS
}
const fds = (pid: number) => readdirSync(`/proc/${pid}/fd`).length
const mib = (n: number) => `${n.toFixed(1)} MiB`
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function idleNodeRss(args: string[]): Promise<number> {
  const child = spawn(process.execPath, [...args, '-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' })
  await sleep(1500)
  const rss = rssMiB(child.pid as number)
  child.kill()
  return rss
}

function waitForLine(child: ChildProcess, text: string, ms: number): Promise<void> {
  return new Promise((done, fail) => {
    let out = ''
    const timer = setTimeout(() => fail(new Error(`no "${text}" within ${ms} ms:\n${out}`)), ms)
    const on = (c: Buffer) => {
      out += c.toString()
      if (out.includes(text)) {
        clearTimeout(timer)
        done()
      }
    }
    child.stdout?.on('data', on)
    child.stderr?.on('data', on)
  })
}

const work = mkdtempSync(join(tmpdir(), 'agent-footprint-'))
const swtpm = await startSwtpm()
let agent: ChildProcess | undefined
try {
  console.log(
    `idle node process: ${mib(await idleNodeRss([]))}; with the tsx loader the CLI uses: ${mib(await idleNodeRss(['--import', 'tsx']))}`,
  )

  // The TPM's own share of start-up: EK, EK certificate, AK (what registration needs besides activation).
  {
    const tpm = await Tpm.open(swtpm.transport)
    const t = performance.now()
    const ek = await createEk(tpm, 'rsa')
    await readEkCertificate(tpm, 'rsa', ek.publicArea)
    const ak = await createAk(tpm, ek.handle, { hashAlg: 'sha256', signAlg: 'rsassa' })
    console.log(`TPM time for EK + EK certificate + AK on swtpm: ${(performance.now() - t).toFixed(0)} ms`)
    await flushContext(tpm, ak.handle)
    await flushContext(tpm, ek.handle)
    await tpm.close()
  }

  const env = { KEYLIME_DIR: join(work, 'registrar') }
  const { config } = loadRegistrarConfig({
    configDirs: [],
    env,
    flags: { tls_dir: 'generate', port: 0, tls_port: 0, database_url: 'sqlite' },
  })
  const registrar = await startRegistrar(config, createLogger('bench', 'silent'), { env })
  const agentDir = join(work, 'agent')
  await ensureTlsDir(join(agentDir, 'cv_ca'))
  const imaPath = join(agentDir, 'ima')
  appendFileSync(imaPath, '10 aa ima-ng sha256:bb boot_aggregate\n')
  const port = await freePort()
  const emptyConf = join(work, 'agent.conf')
  appendFileSync(emptyConf, '[agent]\n')
  const started = performance.now()
  agent = spawn(
    process.execPath,
    [
      process.env.KEYLIME_BENCH_CLI ?? 'bin/keylime.js',
      'agent',
      ...['--config', emptyConf, '--tpm', swtpm.transport, '--keylime-dir', agentDir],
      ...[
        '--port',
        String(port),
        '--contact-port',
        String(port),
        '--registrar-port',
        String(registrar.httpPort),
      ],
      ...['--uuid', 'f00df00d-0000-4000-8000-000000000001', '--run-as', '', '--ima-ml-path', imaPath],
      ...['--measuredboot-ml-path', join(agentDir, 'none')],
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, KEYLIME_LOG_LEVEL: 'info' } },
  )
  const logLines: string[] = []
  agent.stdout?.on('data', (c: Buffer) => logLines.push(...c.toString().split('\n')))
  await waitForLine(agent, 'activated', 60_000)
  const wallToActive = performance.now() - started
  const times = logLines
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { time: number; msg: string })
  const firstLog = times[0]?.time ?? 0
  const activeLog = times.find((l) => l.msg.includes('activated'))?.time ?? 0
  console.log(
    `process start to registered + activated: ${wallToActive.toFixed(0)} ms wall (Node and tsx start-up included); ` +
      `${activeLog - firstLog} ms from the agent's first log line (TPM and registrar included)`,
  )
  const pid = agent.pid as number
  await sleep(2000)
  console.log(`agent RSS idle after registration: ${mib(rssMiB(pid))}, ${fds(pid)} open descriptors`)

  const client = new AgentClient({
    baseUrl: `https://127.0.0.1:${port}`,
    apiVersion: '2.6',
    tls: {
      ca: await readFile(join(agentDir, 'server-cert.crt'), 'utf8'),
      cert: await readFile(join(agentDir, 'cv_ca', 'client-cert.crt'), 'utf8'),
      key: await readFile(join(agentDir, 'cv_ca', 'client-private.pem'), 'utf8'),
    },
  })
  for (let i = 0; i < 50; i++)
    await client.integrityQuote({ nonce: `w${i}`, mask: [10], partial: true, imaMlEntry: 1 })
  const tenth = Math.max(1, Math.floor(QUOTES / 10))
  const cpu0 = cpuSeconds(pid)
  const t0 = performance.now()
  let peak = 0
  let early = { rss: 0, fds: 0 }
  for (let i = 0; i < QUOTES; i++) {
    await client.integrityQuote({ nonce: `q${i}`, mask: [10], partial: true, imaMlEntry: 1 })
    if (i % 100 === 99) peak = Math.max(peak, rssMiB(pid))
    if (i === Math.floor(QUOTES / 2) - 1)
      console.log(`after ${i + 1} quotes: RSS ${mib(rssMiB(pid))}, ${fds(pid)} descriptors`)
    if (i === tenth - 1) {
      early = { rss: rssMiB(pid), fds: fds(pid) }
      console.log(`after ${tenth} quotes: RSS ${mib(early.rss)}, ${early.fds} descriptors`)
    }
  }
  const wall = performance.now() - t0
  const cpu = cpuSeconds(pid) - cpu0
  console.log(
    `${QUOTES} quotes over mTLS: ${((QUOTES * 1000) / wall).toFixed(0)}/s, agent CPU ${((cpu * 1e6) / QUOTES).toFixed(0)} µs per quote (swtpm excluded), peak RSS ${mib(peak)}`,
  )
  console.log(
    `after ${QUOTES} quotes: RSS ${mib(rssMiB(pid))} (${(rssMiB(pid) - early.rss).toFixed(1)} MiB since quote ${tenth}), ${fds(pid)} descriptors`,
  )
  await client.close()
  agent.kill('SIGTERM')
  await new Promise((r) => agent?.once('exit', r))
  {
    const tpm = await Tpm.open(swtpm.transport)
    const { getHandleCounts } = await import('../src/tpm/keylime-client.ts')
    console.log(
      `TPM after the agent stopped: ${JSON.stringify(await getHandleCounts(tpm))} (transient objects, sessions)`,
    )
    await tpm.close()
  }
  await registrar.close()

  // IMA list of IMA_ENTRIES lines: the first request indexes it once, later ones read only the new tail.
  const big = join(work, 'ima-big')
  const fd = openSync(big, 'w')
  const line = (i: number) =>
    `10 ${'a'.repeat(40)} ima-ng sha256:${i.toString(16).padStart(64, '0')} /usr/lib/f${i}\n`
  let chunk = ''
  for (let i = 0; i < IMA_ENTRIES; i++) {
    chunk += line(i)
    if (chunk.length > 1 << 20) {
      writeSync(fd, chunk)
      chunk = ''
    }
  }
  writeSync(fd, chunk)
  closeSync(fd)
  const list = new ImaMeasurementList(big)
  const heap0 = process.memoryUsage().heapUsed
  let t = performance.now()
  const first = await list.read(IMA_ENTRIES - 10)
  const firstMs = performance.now() - t
  const heapIndex = (process.memoryUsage().heapUsed - heap0) / 2 ** 20
  appendFileSync(big, line(IMA_ENTRIES) + line(IMA_ENTRIES + 1))
  t = performance.now()
  const next = await list.read(IMA_ENTRIES)
  console.log(
    `IMA list of ${IMA_ENTRIES} entries: first read from entry ${first?.entry} (indexes the file once) ${firstMs.toFixed(0)} ms, index ~${heapIndex.toFixed(1)} MiB heap; ` +
      `next read from entry ${next?.entry} after 2 appended entries ${(performance.now() - t).toFixed(2)} ms, ${next?.text.length} bytes`,
  )
} finally {
  agent?.kill('SIGKILL')
  await swtpm.stop()
  removeWorkDir(work)
}
