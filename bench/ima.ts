/**
 * IMA benchmark: replay + policy check throughput, 20 MiB policy load/compile time, memory for 1,000 agents sharing
 * one compiled policy, and the whole pipeline (quote + IMA replay + 100k-path policy) on the verifier's evidence pool
 * with every core, and one 1,000,000-entry list on one thread and on the pool. Run: `node --import tsx bench/ima.ts`
 * (add `--expose-gc` for steadier memory figures); `--pool-only [--workers N]` runs only the pool parts,
 * `--list-only [--workers N] [--list-entries N]` only the one long list; `--chunk-chars 0` keeps the pool from
 * splitting a list between workers (to compare).
 */
import { createHash, generateKeyPairSync, sign } from 'node:crypto'
import { availableParallelism, loadavg } from 'node:os'
import { formatImaSigEntry, imaSignatureField } from '../src/devtools/ima-writer.ts'
import {
  compileRuntimePolicy,
  computeKeyId,
  emptyRuntimePolicy,
  formatImaLine,
  formatImaNgEntry,
  ImaKeyring,
  type ImaReplayState,
  type PcrBank,
  parseImaLine,
  parseRuntimePolicy,
  replayImaEntries,
  verifyImaIncrement,
} from '../src/evidence/ima/index.ts'
import type { CompiledRuntimePolicy } from '../src/evidence/ima/policy.ts'
import { type EvidenceInput, evaluateEvidence } from '../src/evidence/pipeline.ts'
import { akKeyObject, parseTpmPolicy } from '../src/evidence/quote/index.ts'
import { failure } from '../src/evidence/verdict.ts'
import { EvidencePool } from '../src/verifier/evidence-pool.ts'
import { CompiledPolicies } from '../src/verifier/policy-store.ts'
import { SoftQuoter } from './fleet-quoter.ts'

const LIST_ONLY = process.argv.includes('--list-only')
const POOL_ONLY = process.argv.includes('--pool-only') || LIST_ONLY
const workersAt = process.argv.indexOf('--workers')
const WORKERS = workersAt > 0 ? Number(process.argv[workersAt + 1]) : availableParallelism()
// `--chunk-chars 0`: the pool leaves each IMA list to one worker (no helpers), to compare
const chunkAt = process.argv.indexOf('--chunk-chars')
const CHUNK_CHARS = chunkAt > 0 ? Number(process.argv[chunkAt + 1]) || Number.MAX_SAFE_INTEGER : undefined

const gc = (globalThis as { gc?: () => void }).gc ?? (() => {})
const mib = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MiB`

function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest()
}

/** One agent's evidence for the pool: a PCR 10 quote over the whole list, checked against `policy` from entry 0. */
function poolInput(
  quoter: SoftQuoter,
  listText: string,
  policy: CompiledRuntimePolicy,
): (nonce: string) => EvidenceInput {
  const akPublic = akKeyObject(new Uint8Array(Buffer.from(quoter.akTpm, 'base64')))
  return (nonce) => ({
    akPublic,
    quote: quoter.quote(nonce, [10]),
    nonce,
    hashAlg: 'sha256',
    encAlg: 'ecc',
    signAlg: 'ecdsa',
    accepted: { hash: ['sha256'], encryption: ['ecc'], signing: ['ecdsa'] },
    tpmPolicy: parseTpmPolicy('{}'),
    previousClock: null,
    requiredPcrs: [10],
    measuredBoot: null,
    ima: {
      listText,
      firstEntry: 0,
      state: null,
      policy,
      ignoreTomtouErrors: true,
      missingListEvent: failure('pcr_validation.unused_pcr_10', 'none', true),
    },
  })
}

function buildPolicyJson(targetBytes: number): { json: string; paths: string[] } {
  const policy = emptyRuntimePolicy()
  const paths: string[] = []
  let size = 0
  for (let i = 0; size < targetBytes; i++) {
    const path = `/usr/lib/pkg-${i % 997}/share/file-${i}.so`
    const hex = sha256(path).toString('hex')
    policy.digests[path] = [hex]
    paths.push(path)
    size += path.length + hex.length + 10
  }
  policy.excludes = ['/tmp/', '/var/log/', '/proc/', '.*\\.pyc$']
  policy.meta.generator = 3
  return { json: JSON.stringify(policy), paths }
}

// 1. Throughput with a 100,000-entry policy, for the usual bank / template-hash-column combinations.
if (!POOL_ONLY) {
  const cases: { bank: PcrBank; column: 'sha1' | 'sha256'; excludedShare: number }[] = [
    { bank: 'sha256', column: 'sha1', excludedShare: 0 },
    { bank: 'sha256', column: 'sha256', excludedShare: 0 },
    { bank: 'sha1', column: 'sha1', excludedShare: 0 },
    // Entries outside the policy that `excludes` lets through: the only ones that run the regular expression.
    { bank: 'sha1', column: 'sha1', excludedShare: 0.1 },
  ]
  for (const { bank, column, excludedShare } of cases) {
    const every = excludedShare === 0 ? 0 : Math.round(1 / excludedShare)
    const paths = Array.from({ length: 100_000 }, (_, i) =>
      every !== 0 && i % every === 0 ? `/var/log/app/file-${i}` : `/usr/bin/prog-${i}`,
    )
    const policy = emptyRuntimePolicy()
    for (const p of paths) if (!p.startsWith('/var/log/')) policy.digests[p] = [sha256(p).toString('hex')]
    policy.excludes = ['/tmp/', '/var/log/', '/proc/', '.*\\.pyc$']
    policy.ima.log_hash_alg = column
    const compiled = compileRuntimePolicy(parseRuntimePolicy(JSON.stringify(policy)))
    const lines = paths.map((p) => {
      const entry = formatImaNgEntry(p, sha256(p), 'sha256')
      return formatImaLine({ ...parseImaLine(entry.line), templateHash: entry.templateDigests[column] })
    })
    const listText = `${lines.join('\n')}\n`
    const quoted = replayImaEntries(
      lines.map((l) => parseImaLine(l)),
      bank,
    ).toString('hex')
    const run = () =>
      verifyImaIncrement({
        listText,
        firstEntry: 0,
        state: null,
        quotedPcr10: { hashAlg: bank, value: quoted },
        policy: compiled,
      })
    run() // warm-up
    const rounds = 5
    // CPU time, not wall time: the machine is shared, and the figure asked for is per core.
    const cpu0 = process.cpuUsage()
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < rounds; i++) {
      const r = run()
      if (!r.verdict.ok) throw new Error('benchmark list failed verification')
    }
    const wall = Number(process.hrtime.bigint() - t0) / 1e9
    const cpu = process.cpuUsage(cpu0)
    const cpuSecs = (cpu.user + cpu.system) / 1e6
    const rate = Math.round((lines.length * rounds) / cpuSecs)
    const wallRate = Math.round((lines.length * rounds) / wall)
    const digests = bank === column ? 2 : 3
    console.log(
      `replay+check, ${bank} bank, ${column} template-hash column (${digests} digests/entry), 100k-entry policy${excludedShare === 0 ? '' : `, ${excludedShare * 100}% of entries excluded`}: ${rate.toLocaleString('en')} entries per CPU-second (${wallRate.toLocaleString('en')}/s wall)`,
    )
  }
}

// 1b. Signed files (ima-sig, no digest in the policy): the first agent pays for every signature check, the next
// agents with the same files hit the process-wide outcome cache.
if (!POOL_ONLY) {
  const curves = [
    ['RSA-2048', () => generateKeyPairSync('rsa', { modulusLength: 2048 })],
    ['ECDSA P-256', () => generateKeyPairSync('ec', { namedCurve: 'P-256' })],
  ] as const
  for (const [label, makeKeys] of curves) {
    const keys = makeKeys()
    const keyId = computeKeyId(keys.publicKey)
    const keyring = new ImaKeyring()
    keyring.add(keys.publicKey, keyId)
    const count = label === 'RSA-2048' ? 5_000 : 500
    const lines: string[] = []
    for (let i = 0; i < count; i++) {
      const content = Buffer.from(`signed file ${label} ${i}`)
      const signature = sign('sha256', content, keys.privateKey)
      const digest = createHash('sha256').update(content).digest()
      lines.push(formatImaSigEntry(`/usr/lib/signed-${i}`, digest, imaSignatureField(keyId, signature)).line)
    }
    const listText = `${lines.join('\n')}\n`
    const quoted = replayImaEntries(
      lines.map((l) => parseImaLine(l)),
      'sha256',
    ).toString('hex')
    const run = () => {
      const cpu0 = process.cpuUsage()
      const r = verifyImaIncrement({
        listText,
        firstEntry: 0,
        state: null,
        quotedPcr10: { hashAlg: 'sha256', value: quoted },
        policy: compileRuntimePolicy(emptyRuntimePolicy()),
        verificationKeys: keyring,
      })
      if (!r.verdict.ok) throw new Error('signed benchmark list failed verification')
      const cpu = process.cpuUsage(cpu0)
      return Math.round(count / ((cpu.user + cpu.system) / 1e6))
    }
    const cold = run()
    const warm = Math.max(run(), run(), run()) // the first runs also warm up the JIT
    console.log(
      `ima-sig entries, ${label} file signatures: first agent ${cold.toLocaleString('en')} entries per CPU-second, next agents with the same files ${warm.toLocaleString('en')} (signature outcomes cached)`,
    )
  }
}

// 2. Load + compile a 20 MiB policy.
let shared: ReturnType<typeof compileRuntimePolicy> | null = null
if (!POOL_ONLY) {
  const { json, paths } = buildPolicyJson(20 * 1024 * 1024)
  const bytes = Buffer.from(json)
  gc()
  const before = process.memoryUsage().heapUsed
  const cpu0 = process.cpuUsage()
  const digestOfBytes = createHash('sha256').update(bytes).digest('hex') // the verifier's cache key
  shared = compileRuntimePolicy(parseRuntimePolicy(bytes))
  const cpu = process.cpuUsage(cpu0)
  const ms = (cpu.user + cpu.system) / 1e3
  gc()
  const after = process.memoryUsage().heapUsed
  console.log(
    `20 MiB policy (${mib(bytes.length)}, ${paths.length.toLocaleString('en')} paths): sha256+parse+validate+compile ${ms.toFixed(0)} ms CPU, compiled heap ≈ ${mib(after - before)} (key ${digestOfBytes.slice(0, 12)}…)`,
  )
}

// 3. 1,000 agents sharing the compiled policy: only their replay state is per agent.
if (!POOL_ONLY) {
  gc()
  const before = process.memoryUsage().heapUsed
  const states: ImaReplayState[] = []
  for (let i = 0; i < 1000; i++) {
    const line = formatImaNgEntry(`/usr/bin/agent-${i}`, sha256(String(i)), 'sha256').line
    const r = verifyImaIncrement({
      listText: line,
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: 'sha256', value: null },
      policy: null,
    })
    states.push({ ...r.state, nextEntry: 12345 + i, pcr10: { sha256: sha256(line).toString('hex') } })
  }
  gc()
  const after = process.memoryUsage().heapUsed
  const jsonSize = JSON.stringify(states[0]).length
  console.log(
    `1,000 agents sharing one compiled policy (${shared?.size.toLocaleString('en')} paths, compiled once): per-agent state ${jsonSize} bytes JSON, ≈ ${Math.max(0, Math.round((after - before) / 1000))} bytes heap each`,
  )
}

// 4. Every core: agents' first attestations (quote + 100,000 IMA entries against a 100,000-path policy) evaluated
// by the verifier's evidence pool, as the loop hands them over; wall-clock rate over all workers.
if (!LIST_ONLY) {
  const ENTRIES = 100_000
  const JOBS = WORKERS * 6
  const policies = new CompiledPolicies('accept-all')
  const paths = Array.from({ length: ENTRIES }, (_, i) => `/usr/lib/pkg-${i % 997}/file-${i}.so`)
  const policy = emptyRuntimePolicy()
  for (const p of paths) policy.digests[p] = [sha256(p).toString('hex')]
  const compiled = policies.compileRuntimeText(JSON.stringify(policy))
  const quoter = new SoftQuoter({ keyType: 'ecc' })
  const lines = paths.map((p) => {
    const e = formatImaNgEntry(p, sha256(p), 'sha256')
    quoter.extendDigest(10, e.templateDigests.sha256)
    return e.line
  })
  const listText = `${lines.join('\n')}\n`
  const input = poolInput(quoter, listText, compiled)
  const pool = new EvidencePool({ workers: WORKERS, sourceOf: (p) => policies.sourceOf(p) })
  pool.warm()
  // warm-up: every worker compiles the policy and JITs the replay
  await Promise.all(Array.from({ length: WORKERS * 2 }, (_, i) => pool.run(input(`warm-${i}`))))
  const inputs = Array.from({ length: JOBS }, (_, i) => input(`n-${i}`))
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  const results = await Promise.all(inputs.map((i) => pool.run(i)))
  const wall = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  if (!results.every((r) => r.verdict.ok)) throw new Error('benchmark evidence failed verification')
  const entries = ENTRIES * JOBS
  console.log(
    `evidence pool, ${WORKERS} workers: ${JOBS} attestations of ${ENTRIES.toLocaleString('en')} ima-ng entries each (100k-path policy, P-256 quote): ${Math.round(entries / wall).toLocaleString('en')} entries/s wall (target 1,000,000), ${Math.round(entries / ((cpu.user + cpu.system) / 1e6)).toLocaleString('en')} per CPU-second over all threads, load average ${loadavg()[0]?.toFixed(1)}`,
  )
  await pool.close()
}

// 5. One agent's 1,000,000-entry list (ima-ng, sha1 template-hash column, sha256 bank: three digests per entry)
// against a 100,000-path policy, the entries going round the policy's paths: on one thread (the event loop's way,
// `evidence_workers = 0`), then as one job on the evidence pool, whose idle workers check chunks of it.
{
  const entriesAt = process.argv.indexOf('--list-entries')
  const ENTRIES = entriesAt > 0 ? Number(process.argv[entriesAt + 1]) : 1_000_000
  const PATHS = 100_000
  const policies = new CompiledPolicies('accept-all')
  const paths = Array.from({ length: PATHS }, (_, i) => `/usr/lib/pkg-${i % 997}/file-${i}.so`)
  const policy = emptyRuntimePolicy()
  for (const p of paths) policy.digests[p] = [sha256(p).toString('hex')]
  policy.excludes = ['/tmp/', '/var/log/', '/proc/', '.*\\.pyc$']
  const compiled = policies.compileRuntimeText(JSON.stringify(policy))
  const quoter = new SoftQuoter({ keyType: 'ecc' })
  const perPath = paths.map((p) => formatImaNgEntry(p, sha256(p), 'sha256'))
  const lines: string[] = []
  for (let i = 0; i < ENTRIES; i++) {
    // a stride through the paths, so that consecutive entries are far apart in the policy, as in a real list
    const e = perPath[(i * 7919) % PATHS] as ReturnType<typeof formatImaNgEntry>
    quoter.extendDigest(10, e.templateDigests.sha256)
    lines.push(e.line)
  }
  // flat, as JSON.parse hands it to the verifier
  const listText = JSON.parse(JSON.stringify(`${lines.join('\n')}\n`)) as string
  lines.length = 0
  const input = poolInput(quoter, listText, compiled)
  const rounds = 3
  const measure = async (label: string, threads: number, evaluate: (nonce: string) => Promise<boolean>) => {
    await evaluate('warm-up')
    let best = { wall: Number.POSITIVE_INFINITY, cpu: 0 }
    for (let i = 0; i < rounds; i++) {
      const cpu0 = process.cpuUsage()
      const t0 = performance.now()
      if (!(await evaluate(`n-${i}`))) throw new Error('benchmark list failed verification')
      const wall = (performance.now() - t0) / 1000
      const cpu = process.cpuUsage(cpu0)
      if (wall < best.wall) best = { wall, cpu: (cpu.user + cpu.system) / 1e6 }
    }
    console.log(
      `one ${ENTRIES.toLocaleString('en')}-entry list, ${PATHS.toLocaleString('en')}-path policy, ${label} (${threads} thread${threads === 1 ? '' : 's'}): ${Math.round(ENTRIES / best.wall).toLocaleString('en')} entries/s wall (${best.wall.toFixed(2)} s, best of ${rounds}), ${best.cpu.toFixed(2)} CPU-s = ${Math.round(ENTRIES / best.cpu).toLocaleString('en')} entries per CPU-second, load average ${loadavg()[0]?.toFixed(1)}`,
    )
  }
  await measure('event loop alone', 1, async (nonce) => evaluateEvidence(input(nonce)).verdict.ok)
  const pool = new EvidencePool({
    workers: WORKERS,
    sourceOf: (p) => policies.sourceOf(p),
    ...(CHUNK_CHARS === undefined ? {} : { imaChunkChars: CHUNK_CHARS }),
  })
  pool.warm()
  await measure(
    `evidence pool of ${WORKERS} workers`,
    WORKERS,
    async (nonce) => (await pool.run(input(nonce))).verdict.ok,
  )
  await pool.close()
}
