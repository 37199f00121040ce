/**
 * IMA benchmark: replay + policy check throughput, 20 MiB policy load/compile time, and memory for 1,000 agents
 * sharing one compiled policy. Run: `node --import tsx bench/ima.ts` (add `--expose-gc` for steadier memory figures).
 */
import { createHash, generateKeyPairSync, sign } from 'node:crypto'
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

const gc = (globalThis as { gc?: () => void }).gc ?? (() => {})
const mib = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MiB`

function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest()
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
{
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
{
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
{
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
{
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
