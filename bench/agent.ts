/**
 * The agent on swtpm, measured on a real `keylime agent` process as operators run it: bin/keylime.js, which runs the
 * compiled dist/ bundle (`npm run build` first), with the Node flags of packaging/systemd/keylime-agent.service.
 *   node --import tsx bench/agent.ts [quotes=10000] [ima-entries=1000000]
 * Prints what bare Node costs on this machine, start to registered (split into Node's start, the TPM's own time and
 * the rest), resident memory idle and under quotes, agent CPU per quote (swtpm is another process), quote latency
 * split into TPM and agent time, heap/descriptors/handles/TPM objects over all quotes, a restart, the agent without
 * the unit's flags, and a 1,000,000-entry IMA list served from an offset by the running agent.
 * The TPM's time is measured by a proxy between the agent and swtpm: from each command's first byte to the end of
 * its response.
 * Env: KEYLIME_BENCH_CLI (another `keylime` entry, e.g. src via KEYLIME_FROM_SOURCE=1), KEYLIME_BENCH_NODE_OPTIONS
 * (flags for the agent process instead of the unit's).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import {
  appendFileSync,
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs'
import { readFile } from 'node:fs/promises'
import { connect, createServer, type Server } from 'node:net'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { Agent, request } from 'undici'
import { AgentClient } from '../src/api/agent/client.ts'
import { createLogger } from '../src/common/log.ts'
import { loadRegistrarConfig } from '../src/config/registrar.ts'
import { ensureTlsDir } from '../src/crypto/ca.ts'
import { freePort, startSwtpm } from '../src/devtools/swtpm.ts'
import { removeWorkDir } from '../src/devtools/work-dir.ts'
import { startRegistrar } from '../src/registrar/server.ts'
import { getHandleCounts } from '../src/tpm/keylime-client.ts'
import { Tpm } from '../src/tpm/tpm.ts'

const QUOTES = Number(process.argv[2] ?? 10_000)
const IMA_ENTRIES = Number(process.argv[3] ?? 1_000_000)
const TICKS = 100 // USER_HZ on Linux
const UNIT = new URL('../packaging/systemd/keylime-agent.service', import.meta.url)
const unitFlags = /^Environment="NODE_OPTIONS=([^"]*)"/m.exec(readFileSync(UNIT, 'utf8'))?.[1] ?? ''
const FLAGS = (process.env.KEYLIME_BENCH_NODE_OPTIONS ?? unitFlags).split(' ').filter(Boolean)
const CLI = process.env.KEYLIME_BENCH_CLI ?? 'bin/keylime.js'

const rssMiB = (pid: number) =>
  Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? []
  return (Number(fields[11]) + Number(fields[12])) / TICKS
}
const fds = (pid: number) => readdirSync(`/proc/${pid}/fd`).length
const mib = (n: number) => `${n.toFixed(1)} MiB`
const ms = (n: number) => `${n.toFixed(n < 10 ? 2 : 0)} ms`
const sleep = (t: number) => new Promise((r) => setTimeout(r, t))
const load = () =>
  `load average ${loadavg()
    .map((l) => l.toFixed(2))
    .join(' ')}`
function stats(values: number[]): string {
  const s = [...values].sort((a, b) => a - b)
  const at = (q: number) => s[Math.min(s.length - 1, Math.floor(q * s.length))] as number
  return `median ${ms(at(0.5))}, p95 ${ms(at(0.95))}, max ${ms(at(1))}`
}

/** Idle RSS of `node -e` with the given flags, and the median wall and CPU time of `node -e 0`. */
async function bareNode(flags: string[]): Promise<{ rss: number; startMs: number; cpuMs: number }> {
  const child = spawn(process.execPath, [...flags, '-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' })
  await sleep(1500)
  const rss = rssMiB(child.pid as number)
  child.kill()
  const times: number[] = []
  const cpu: number[] = []
  const report = 'const u = process.cpuUsage(); process.stdout.write(String((u.user + u.system) / 1000))'
  for (let i = 0; i < 5; i++) {
    const t = performance.now()
    const run = spawnSync(process.execPath, [...flags, '-e', report], { encoding: 'utf8' })
    times.push(performance.now() - t)
    cpu.push(Number(run.stdout))
  }
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[2] as number
  return { rss, startMs: median(times), cpuMs: median(cpu) }
}

/**
 * TCP proxy in front of swtpm's data port that adds up the TPM's time: from a command's first byte to the last byte
 * of its response (the response header carries its size). swtpm serves one command at a time.
 */
class TpmTimer {
  busyMs = 0
  commands = 0
  private server: Server | undefined
  port = 0

  async start(target: number): Promise<void> {
    this.server = createServer((client) => {
      const upstream = connect({ host: '127.0.0.1', port: target })
      let sentAt = 0
      let response: Buffer[] = []
      client.on('data', (chunk) => {
        if (sentAt === 0) sentAt = performance.now()
        upstream.write(chunk)
      })
      upstream.on('data', (chunk) => {
        response.push(chunk)
        const all = Buffer.concat(response)
        response = [all]
        if (all.length >= 6 && all.length >= all.readUInt32BE(2)) {
          this.busyMs += performance.now() - sentAt
          this.commands++
          sentAt = 0
          response = []
        }
        client.write(chunk)
      })
      client.on('close', () => upstream.destroy())
      upstream.on('close', () => client.destroy())
      client.on('error', () => upstream.destroy())
      upstream.on('error', () => client.destroy())
    })
    await new Promise<void>((r) => this.server?.listen(0, '127.0.0.1', r))
    const address = this.server.address()
    this.port = typeof address === 'object' && address ? address.port : 0
  }

  stop(): void {
    this.server?.close()
  }
}

/** Collects a process's output; `until` resolves at the first time a text appears. */
class ProcessOutput {
  text = ''
  private waiters: { text: string; done: (at: number) => void }[] = []
  constructor(child: ChildProcess) {
    const on = (c: Buffer) => {
      this.text += c.toString()
      const at = performance.now()
      const ready = this.waiters.filter((w) => this.text.includes(w.text))
      this.waiters = this.waiters.filter((w) => !ready.includes(w))
      for (const w of ready) w.done(at)
    }
    child.stdout?.on('data', on)
    child.stderr?.on('data', on)
  }
  until(text: string, timeoutMs: number): Promise<number> {
    if (this.text.includes(text)) return Promise.resolve(performance.now())
    return new Promise((done, fail) => {
      const timer = setTimeout(
        () => fail(new Error(`no "${text}" within ${timeoutMs} ms:\n${this.text}`)),
        timeoutMs,
      )
      this.waiters.push({
        text,
        done: (at) => {
          clearTimeout(timer)
          done(at)
        },
      })
    })
  }
  /** Epoch ms of the first JSON log line. */
  firstLogTime(): number {
    const line = this.text.split('\n').find((l) => l.startsWith('{'))
    return line ? Date.parse((JSON.parse(line) as { time: string }).time) : Number.NaN
  }
}

const work = mkdtempSync(join(tmpdir(), 'agent-bench-'))
const swtpm = await startSwtpm()
const timer = new TpmTimer()
const agents: ChildProcess[] = []
try {
  console.log(`${load()}; agent flags: ${FLAGS.join(' ') || '(none)'}; CLI ${CLI}`)
  const bare = await bareNode([])
  const bareFlagged = await bareNode(FLAGS)
  console.log(
    `bare Node ${process.version} (node -e, idle): ${mib(bare.rss)}; with the agent's flags ${mib(bareFlagged.rss)}; ` +
      `node -e 0 starts and exits in ${ms(bareFlagged.startMs)} (${ms(bareFlagged.cpuMs)} CPU)`,
  )

  await timer.start(swtpm.port)
  const ctrl = swtpm.port + 1
  const transport = `swtpm:host=127.0.0.1,port=${timer.port},ctrl=${ctrl}`
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
  const imaLine = (i: number) =>
    `10 ${'a'.repeat(40)} ima-ng sha256:${i.toString(16).padStart(64, '0')} /usr/lib/f${i}\n`
  appendFileSync(imaPath, imaLine(0))
  const emptyConf = join(work, 'agent.conf')
  appendFileSync(emptyConf, '[agent]\n')
  const port = await freePort()

  /** Starts `keylime agent`; resolves once it is registered, activated and listening. */
  async function startAgentProcess(flags: string[], label: string): Promise<ChildProcess> {
    const tpm0 = { busy: timer.busyMs, n: timer.commands }
    const started = performance.now()
    const startedAt = Date.now()
    const agent = spawn(
      process.execPath,
      [
        ...flags,
        CLI,
        'agent',
        ...['--config', emptyConf, '--tpm', transport, '--keylime-dir', agentDir],
        ...['--port', String(port), '--contact-port', String(port)],
        ...['--registrar-port', String(registrar.httpPort), '--run-as', ''],
        ...['--uuid', 'f00df00d-0000-4000-8000-000000000001', '--ima-ml-path', imaPath],
        ...['--measuredboot-ml-path', join(agentDir, 'none')],
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, KEYLIME_LOG_LEVEL: 'info' } },
    )
    agents.push(agent)
    const out = new ProcessOutput(agent)
    let cpuAtActivation = Number.NaN
    const activated = out.until(' activated', 60_000).then((at) => {
      cpuAtActivation = cpuSeconds(agent.pid as number) * 1000
      return at
    })
    const listening = await out.until('listening on', 60_000)
    const wall = (await activated) - started
    const tpmMs = timer.busyMs - tpm0.busy
    const toFirstLog = out.firstLogTime() - startedAt
    const nodeStart = flags.length > 0 ? bareFlagged.startMs : bare.startMs
    console.log(
      `${label}: spawn to registered + activated ${ms(wall)}, to listening ${ms(listening - started)}; ` +
        `of that: Node start ~${ms(nodeStart)}, TPM ${ms(tpmMs)} (${timer.commands - tpm0.n} commands), ` +
        `the rest ${ms(wall - nodeStart - tpmMs)} (agent code and the in-process registrar; ` +
        `spawn to the agent's first log line, i.e. modules loaded, config read, TPM opened: ${ms(toFirstLog)}); ` +
        `agent process CPU until activated ${ms(cpuAtActivation)}, ${ms(cpuAtActivation - (flags.length > 0 ? bareFlagged : bare).cpuMs)} ` +
        `without Node's own start (CPU time is less disturbed by load than wall time)`,
    )
    return agent
  }

  const tls = {
    ca: '',
    cert: await readFile(join(agentDir, 'cv_ca', 'client-cert.crt'), 'utf8'),
    key: await readFile(join(agentDir, 'cv_ca', 'client-private.pem'), 'utf8'),
  }
  const base = `https://127.0.0.1:${port}`
  let metricsDispatcher: Agent | undefined
  /** Heap and handles as the agent's own /metrics reports them (prom-client's process metrics). */
  async function agentMetrics(): Promise<{ heap: number; handles: number }> {
    const res = await request(`${base}/metrics`, { dispatcher: metricsDispatcher })
    const text = await res.body.text()
    const value = (name: string) => Number(new RegExp(`^${name} (\\S+)`, 'm').exec(text)?.[1])
    return {
      heap: value('nodejs_heap_size_used_bytes') / 2 ** 20,
      handles: value('nodejs_active_handles_total'),
    }
  }
  async function tpmObjects(): Promise<string> {
    await sleep(100) // the agent lets go of swtpm's single connection once idle
    const tpm = await Tpm.open(swtpm.transport)
    try {
      const c = await getHandleCounts(tpm)
      return `${c.transient} transient objects, ${c.sessions} sessions`
    } finally {
      await tpm.close()
    }
  }
  async function stop(agent: ChildProcess): Promise<number> {
    const t = performance.now()
    agent.kill('SIGTERM')
    await new Promise((r) => agent.once('exit', r))
    return performance.now() - t
  }

  // 1. First start: EK, AK, keys and the mTLS certificate are created.
  const diagDir = join(work, 'diagnostics')
  mkdirSync(diagDir)
  let agent = await startAgentProcess(
    [...FLAGS, '--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${diagDir}`],
    'first start (creates AK, keys, certificate)',
  )
  let pid = agent.pid as number
  tls.ca = await readFile(join(agentDir, 'server-cert.crt'), 'utf8')
  metricsDispatcher = new Agent({
    connect: { ...tls, rejectUnauthorized: true, checkServerIdentity: () => undefined },
  })
  const client = new AgentClient({ baseUrl: base, apiVersion: '2.6', tls })
  /**
   * Live heap of the agent: the size of a heap snapshot (V8 collects garbage before taking one), written on
   * SIGUSR2 (`--heapsnapshot-signal`) into the diagnostic directory. A quote answered after the signal means the
   * snapshot, written on the agent's main thread, is complete.
   */
  async function liveHeapMiB(agentPid: number): Promise<number> {
    const before = new Set(readdirSync(diagDir))
    process.kill(agentPid, 'SIGUSR2')
    let file: string | undefined
    for (let i = 0; i < 100 && file === undefined; i++) {
      await sleep(100)
      file = readdirSync(diagDir).find((f) => !before.has(f) && f.endsWith('.heapsnapshot'))
    }
    if (file === undefined) throw new Error('the agent wrote no heap snapshot')
    await client.integrityQuote({ nonce: 'snapshot', mask: [10], partial: true, imaMlEntry: 1 })
    const snap = JSON.parse(readFileSync(join(diagDir, file), 'utf8')) as {
      snapshot: { meta: { node_fields: string[] } }
      nodes: number[]
    }
    rmSync(join(diagDir, file))
    const fields = snap.snapshot.meta.node_fields
    let total = 0
    for (let i = fields.indexOf('self_size'); i < snap.nodes.length; i += fields.length)
      total += snap.nodes[i] as number
    return total / 2 ** 20
  }
  await sleep(3000)
  console.log(`  idle RSS ${mib(rssMiB(pid))}, ${fds(pid)} descriptors`)

  // 2. Quotes.
  const WARM = 500
  for (let i = 0; i < WARM; i++)
    await client.integrityQuote({ nonce: `w${i}`, mask: [10], partial: true, imaMlEntry: 1 })
  const m0 = await agentMetrics()
  console.log(
    `  after ${WARM} quotes: RSS ${mib(rssMiB(pid))}, heap in use ${mib(m0.heap)}, ${m0.handles} handles, TPM: ${await tpmObjects()}`,
  )
  const window = Math.max(1, Math.floor(QUOTES / 5))
  const sampleEvery = Math.max(100, Math.floor(QUOTES / 2000) * 100)
  const samples: { at: number; rss: number; heap: number; handles: number; fds: number }[] = []
  const latency: number[] = []
  const cpu0 = cpuSeconds(pid)
  const tpm0 = timer.busyMs
  const t0 = performance.now()
  let peak = 0
  for (let i = 0; i < QUOTES; i++) {
    const t = performance.now()
    await client.integrityQuote({ nonce: `q${i}`, mask: [10], partial: true, imaMlEntry: 1 })
    latency.push(performance.now() - t)
    if (i % 100 === 99) {
      peak = Math.max(peak, rssMiB(pid))
      if ((i + 1) % sampleEvery === 0)
        samples.push({ at: i + 1, rss: rssMiB(pid), ...(await agentMetrics()), fds: fds(pid) })
    }
  }
  const wall = performance.now() - t0
  const cpu = cpuSeconds(pid) - cpu0
  const tpmPerQuote = (timer.busyMs - tpm0) / QUOTES
  console.log(
    `${QUOTES} integrity quotes over mTLS, one at a time: ${((QUOTES * 1000) / wall).toFixed(0)}/s, ${stats(latency)}; ` +
      `per quote: TPM ${ms(tpmPerQuote)}, agent CPU ${((cpu * 1e6) / QUOTES).toFixed(0)} µs (swtpm excluded); peak RSS ${mib(peak)}`,
  )
  const first = samples.filter((s) => s.at <= window)
  const last = samples.filter((s) => s.at > QUOTES - window)
  const low = (xs: typeof samples, k: 'heap' | 'rss') => Math.min(...xs.map((s) => s[k]))
  const end = samples[samples.length - 1]
  if (first.length > 0 && last.length > 0 && end)
    console.log(
      `  growth: lowest heap in use in the first ${window} quotes ${mib(low(first, 'heap'))}, in the last ${window} ${mib(low(last, 'heap'))}; ` +
        `lowest RSS ${mib(low(first, 'rss'))} -> ${mib(low(last, 'rss'))}; handles ${first[0]?.handles} -> ${end.handles}, ` +
        `descriptors ${first[0]?.fds} -> ${end.fds}; TPM: ${await tpmObjects()}`,
    )
  const identity: number[] = []
  for (let i = 0; i < 100; i++) {
    const t = performance.now()
    await client.identityQuote(`i${i}`)
    identity.push(performance.now() - t)
  }
  console.log(`identity quotes: ${stats(identity)}`)
  const concurrent = 8
  const perWorker = Math.ceil(Math.min(QUOTES, 800) / concurrent)
  const tc = performance.now()
  await Promise.all(
    Array.from({ length: concurrent }, async (_, w) => {
      for (let i = 0; i < perWorker; i++)
        await client.integrityQuote({ nonce: `c${w}x${i}`, mask: [10], partial: true, imaMlEntry: 1 })
    }),
  )
  console.log(
    `throughput with ${concurrent} concurrent clients (quotes serialised on the TPM): ${((concurrent * perWorker * 1000) / (performance.now() - tc)).toFixed(0)}/s; RSS ${mib(rssMiB(pid))}`,
  )
  // Last, as a heap snapshot costs the agent far more memory than it ever uses otherwise.
  const liveA = await liveHeapMiB(pid)
  const more = Math.min(QUOTES, 2000)
  for (let i = 0; i < more; i++)
    await client.integrityQuote({ nonce: `l${i}`, mask: [10], partial: true, imaMlEntry: 1 })
  console.log(
    `live heap (a heap snapshot's size, V8 collects garbage first): ${mib(liveA)}, and ${mib(await liveHeapMiB(pid))} after ${more} more quotes`,
  )
  console.log(`stop: exits ${ms(await stop(agent))} after SIGTERM; TPM: ${await tpmObjects()}`)

  // 3. Restart (AK, keys and certificate reused): the steady state of a machine after a reboot.
  for (let i = 1; i < 3; i++)
    await stop(await startAgentProcess(FLAGS, `restart ${i}/3 (AK and keys reused)`))
  agent = await startAgentProcess(FLAGS, 'restart 3/3 (AK and keys reused)')
  pid = agent.pid as number
  await sleep(3000)
  await client.integrityQuote({ nonce: 'r', mask: [10], partial: true, imaMlEntry: 1 })
  await sleep(500)
  const idle = rssMiB(pid)
  console.log(
    `  idle RSS ${mib(idle)} after one quote (bare Node with the same flags ${mib(bareFlagged.rss)}: the agent's own share ${mib(idle - bareFlagged.rss)}), ${fds(pid)} descriptors`,
  )

  // 4. IMA list of IMA_ENTRIES entries appended to the running agent's list, served from near its end.
  const fd = openSync(imaPath, 'a')
  let chunk = ''
  for (let i = 1; i <= IMA_ENTRIES; i++) {
    chunk += imaLine(i)
    if (chunk.length > 1 << 20) {
      writeSync(fd, chunk)
      chunk = ''
    }
  }
  writeSync(fd, chunk)
  closeSync(fd)
  let t = performance.now()
  let tpmAt = timer.busyMs
  const fromEntry = IMA_ENTRIES - 9
  const tail = await client.integrityQuote({
    nonce: 'ima1',
    mask: [10],
    partial: true,
    imaMlEntry: fromEntry,
  })
  const firstRead = performance.now() - t
  const firstTpm = timer.busyMs - tpmAt
  if (
    tail.ima_measurement_list_entry !== fromEntry ||
    !tail.ima_measurement_list?.startsWith(imaLine(fromEntry))
  )
    throw new Error(`IMA list served from entry ${tail.ima_measurement_list_entry}, not ${fromEntry}`)
  appendFileSync(imaPath, imaLine(IMA_ENTRIES + 1) + imaLine(IMA_ENTRIES + 2))
  t = performance.now()
  tpmAt = timer.busyMs
  const next = await client.integrityQuote({
    nonce: 'ima2',
    mask: [10],
    partial: true,
    imaMlEntry: IMA_ENTRIES + 1,
  })
  if (next.ima_measurement_list !== imaLine(IMA_ENTRIES + 1) + imaLine(IMA_ENTRIES + 2))
    throw new Error('the appended IMA entries were not served')
  console.log(
    `IMA list grown by ${IMA_ENTRIES} entries while the agent runs: quote from entry ${fromEntry} ${ms(firstRead)} (TPM ${ms(firstTpm)}; indexes the new part once), ` +
      `then from entry ${IMA_ENTRIES + 1} after 2 more ${ms(performance.now() - t)} (TPM ${ms(timer.busyMs - tpmAt)}); agent RSS ${mib(rssMiB(pid))} (${mib(rssMiB(pid) - idle)} more)`,
  )
  await stop(agent)

  // 5. The same restart without the unit's flags, for what they save.
  if (FLAGS.length > 0) {
    writeFileSync(imaPath, imaLine(0))
    agent = await startAgentProcess([], 'restart without the flags')
    pid = agent.pid as number
    await sleep(3000)
    await client.integrityQuote({ nonce: 'n', mask: [10], partial: true, imaMlEntry: 1 })
    await sleep(500)
    console.log(`  idle RSS ${mib(rssMiB(pid))} after one quote (bare Node ${mib(bare.rss)})`)
    await stop(agent)
  }
  await client.close()
  await metricsDispatcher.close()
  await registrar.close()
  console.log(load())
} finally {
  for (const a of agents) if (a.exitCode === null) a.kill('SIGKILL')
  timer.stop()
  await swtpm.stop()
  removeWorkDir(work)
}
