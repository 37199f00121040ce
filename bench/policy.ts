/**
 * Runtime policy creation from a root filesystem: `keylime policy create runtime --rootfs` over 100,000 files (the
 * issue's target: under 10 s on this 2-core machine), timed as the whole command an operator runs (compiled CLI),
 * with the page cache warm (a second run) and cold is left to the reader: `echo 3 > /proc/sys/vm/drop_caches`.
 *
 *   node --import tsx bench/policy.ts [files=100000] [--root DIR]     (needs /usr/bin/time: Debian package time)
 *
 * The synthetic tree is built once under $TMPDIR and reused: sizes like a /usr tree's small files (70% 0.5-4 KiB,
 * 25% 4-32 KiB, 5% 32-256 KiB; about 1.3 GB in all), 100 files per directory.
 */
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { availableParallelism, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const args = process.argv.slice(2)
const rootFlag = args.indexOf('--root')
const files = Number(args.find((a, i) => /^\d+$/.test(a) && args[i - 1] !== '--root') ?? 100_000)
const here = dirname(fileURLToPath(import.meta.url))
const cli = join(here, '..', 'bin', 'keylime.js')

function buildTree(root: string, count: number): void {
  const marker = `${root}.complete`
  if (existsSync(marker)) return
  process.stderr.write(`building ${count} files under ${root} (once)...\n`)
  let seed = 1
  const rnd = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff
    return seed / 0x7fffffff
  }
  const block = Buffer.alloc(256 * 1024)
  for (let i = 0; i < block.length; i += 32) createHash('sha256').update(String(i)).digest().copy(block, i)
  for (let i = 0; i < count; i++) {
    const dir = join(root, 'usr', `d${Math.floor(i / 10_000)}`, `s${Math.floor(i / 100) % 100}`)
    if (i % 100 === 0) mkdirSync(dir, { recursive: true })
    const r = rnd()
    const size =
      r < 0.7
        ? 512 + Math.floor(rnd() * 3584)
        : r < 0.95
          ? 4096 + Math.floor(rnd() * 28_672)
          : 32_768 + Math.floor(rnd() * 229_376)
    const offset = Math.floor(rnd() * (block.length - size))
    writeFileSync(join(dir, `f${i}`), block.subarray(offset, offset + size))
  }
  writeFileSync(marker, '')
}

const root = rootFlag >= 0 ? (args[rootFlag + 1] as string) : join(tmpdir(), `keylime-bench-rootfs-${files}`)
if (rootFlag < 0) buildTree(root, files)
if (!existsSync(join(here, '..', 'dist')))
  throw new Error('run `npm run build` first: the benchmark times the compiled CLI')

function run(): { seconds: number; count: number; cpu: number } {
  const out = join(tmpdir(), 'keylime-bench-policy.json')
  const started = process.hrtime.bigint()
  const r = spawnSync(
    '/usr/bin/time',
    ['-f', '%U %S', process.execPath, cli, 'policy', 'create', 'runtime', '--rootfs', root, '-q', '-o', out],
    {
      encoding: 'utf8',
    },
  )
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  if (r.status !== 0) throw new Error(`policy create failed: ${r.stderr}`)
  const [user, sys] = r.stderr.trim().split('\n').at(-1)?.split(' ').map(Number) ?? [0, 0]
  const count = Object.keys((JSON.parse(readFileSync(out, 'utf8')) as { digests: object }).digests).length
  return { seconds, count, cpu: (user ?? 0) + (sys ?? 0) }
}

run() // warm the page cache
const results = [run(), run(), run()]
const median = [...results].sort((a, b) => a.seconds - b.seconds)[1] as (typeof results)[number]
process.stdout.write(
  `policy create runtime --rootfs ${root}: ${median.count.toLocaleString('en-US')} files in ${median.seconds.toFixed(2)} s ` +
    `(median of 3, warm cache; CPU ${median.cpu.toFixed(2)} s over ${availableParallelism()} cores; ` +
    `${Math.round(median.count / median.seconds).toLocaleString('en-US')} files/s)\n`,
)
