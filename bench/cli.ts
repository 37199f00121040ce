/**
 * Start-up cost of the compiled CLI, whole processes as an operator runs them:
 *   npm run build && node --import tsx bench/cli.ts [runs]
 * Starts a verifier and a registrar (LocalCluster, compiled processes) with one swtpm agent enrolled, then times
 * `keylime --version`, `keylime --help`, `keylime tenant -c cvlist` and `keylime tenant -c status -u UUID` against
 * them. Prints wall-clock min/median/max per command and the CPU per run (user + system, from the children's
 * accumulated times in /proc/self/stat), next to the targets.
 */
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { LocalCluster, waitFor } from '../src/devtools/local-cluster.ts'

const runs = Number(process.argv[2] ?? 10)
const ROOT = resolve(import.meta.dirname, '..')
const BIN = join(ROOT, 'bin/keylime.js')
if (!existsSync(join(ROOT, 'dist/cli/main.js'))) {
  process.stderr.write('bench/cli.ts times the compiled CLI: run `npm run build` first\n')
  process.exit(2)
}
// The processes started here (the cluster's too) run dist/, not the sources.
delete process.env.KEYLIME_FROM_SOURCE

/** CPU seconds of all waited-for children so far (cutime + cstime, clock ticks of 10 ms). */
function childrenCpuSeconds(): number {
  const fields = readFileSync('/proc/self/stat', 'utf8').split(') ')[1]?.split(' ') ?? []
  // After "pid (comm) ": state is field 3, so cutime (16) and cstime (17) are at 13 and 14.
  return (Number(fields[13]) + Number(fields[14])) / 100
}

function time(label: string, args: string[], target?: number): Record<string, number | string> {
  const walls: number[] = []
  const cpuBefore = childrenCpuSeconds()
  for (let i = 0; i < runs; i++) {
    const started = process.hrtime.bigint()
    const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' })
    walls.push(Number(process.hrtime.bigint() - started) / 1e6)
    if (r.status !== 0) throw new Error(`keylime ${args.join(' ')} exited ${r.status}: ${r.stderr}`)
  }
  const cpuMs = ((childrenCpuSeconds() - cpuBefore) / runs) * 1000
  walls.sort((a, b) => a - b)
  const median = walls[Math.floor(walls.length / 2)] as number
  const row = {
    command: label,
    wall_min_ms: Math.round(walls[0] as number),
    wall_median_ms: Math.round(median),
    wall_max_ms: Math.round(walls.at(-1) as number),
    cpu_ms_per_run: Math.round(cpuMs),
    ...(target === undefined ? {} : { target_ms: target }),
  }
  const verdict =
    target === undefined
      ? ''
      : median < target
        ? `  (target < ${target} ms: met)`
        : `  (target < ${target} ms: missed)`
  process.stdout.write(
    `${label.padEnd(34)} wall median ${row.wall_median_ms} ms (min ${row.wall_min_ms}, max ${row.wall_max_ms}), CPU ${row.cpu_ms_per_run} ms/run${verdict}\n`,
  )
  return row
}

const dir = mkdtempSync(join(tmpdir(), 'kl-bench-cli-'))
const cluster = new LocalCluster({ dir, quoteInterval: 2, stepTimeout: 90 })
try {
  await cluster.startServices()
  const agent = await cluster.startAgent('agent1')
  const tenant = (...args: string[]) =>
    spawnSync(process.execPath, [BIN, 'tenant', '--config', cluster.tenantConf, ...args], {
      encoding: 'utf8',
    })
  await waitFor('the agent to register', 60, () =>
    tenant('-c', 'regstatus', '-u', agent.uuid).status === 0 ? true : undefined,
  )
  const add = tenant('-c', 'add', '-u', agent.uuid)
  if (add.status !== 0) throw new Error(`tenant add failed: ${add.stderr}`)
  process.stdout.write(
    `${runs} runs each, node ${process.version}, load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}\n`,
  )
  const rows = [
    time('keylime --version', ['--version'], 150),
    time('keylime --help', ['--help']),
    time('keylime tenant -c cvlist', ['tenant', '--config', cluster.tenantConf, '-c', 'cvlist']),
    time(
      'keylime tenant -c status -u UUID',
      ['tenant', '--config', cluster.tenantConf, '-c', 'status', '-u', agent.uuid],
      400,
    ),
  ]
  process.stdout.write(`${JSON.stringify({ bench: 'cli', runs, rows })}\n`)
} finally {
  await cluster.stop()
  rmSync(dir, { recursive: true, force: true })
}
