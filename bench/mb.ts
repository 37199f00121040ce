/**
 * Measured-boot benchmark: event-log parsing and replay throughput over the real corpus, and policy evaluations
 * per second on a typical log. Run: `node --import tsx bench/mb.ts`.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import {
  checkMeasuredBoot,
  createReferenceState,
  evaluateMbPolicy,
  parseEventLog,
  parseMbPolicy,
  replayEventLog,
} from '../src/evidence/mb/index.ts'
import { TESTDATA_DIR } from '../test/corpus/fixture.ts'

const dir = join(TESTDATA_DIR, 'eventlogs')
const logs = readdirSync(dir)
  .filter((f) => f.endsWith('.bin'))
  .map((f) => readFileSync(join(dir, f)))
  .filter((b) => {
    try {
      parseEventLog(b)
      return true
    } catch {
      return false
    }
  })
const corpusBytes = logs.reduce((n, b) => n + b.length, 0)

function timeIt(label: string, minMs: number, fn: () => void): number {
  for (let i = 0; i < 3; i++) fn() // warm-up
  let runs = 0
  const start = process.hrtime.bigint()
  let elapsed = 0
  while (elapsed < minMs) {
    fn()
    runs++
    elapsed = Number(process.hrtime.bigint() - start) / 1e6
  }
  const perSec = (runs * 1000) / elapsed
  process.stdout.write(`${label.padEnd(44)} ${(elapsed / runs).toFixed(3).padStart(9)} ms/run\n`)
  return perSec
}

const parsePerSec = timeIt(
  `parse corpus (${logs.length} logs, ${(corpusBytes / 1024).toFixed(0)} KiB)`,
  1500,
  () => {
    for (const b of logs) parseEventLog(b)
  },
)
const replayPerSec = timeIt('parse + replay all banks, corpus', 1500, () => {
  for (const b of logs) replayEventLog(parseEventLog(b))
})

const typical = readFileSync(join(dir, 'keylime-ovmf-el9-secureboot.bin'))
const typicalLog = parseEventLog(typical)
const policy = parseMbPolicy(JSON.stringify(createReferenceState(typicalLog)))
const evalPerSec = timeIt(`policy evaluation (${typicalLog.events.length} events, parsed log)`, 1500, () => {
  if (!evaluateMbPolicy(policy, typicalLog).ok) throw new Error('typical log must pass')
})
const quoted = new Map([...(replayEventLog(typicalLog).get('sha256') ?? new Map())])
const checkPerSec = timeIt('checkMeasuredBoot (parse+replay+compare+policy)', 1500, () => {
  const r = checkMeasuredBoot({
    eventLog: typical,
    quotedPcrs: quoted,
    hashAlg: 'sha256',
    policy,
    evaluatePolicy: true,
  })
  if (!r.verdict.ok) throw new Error('typical log must pass')
})

const mib = corpusBytes / (1024 * 1024)
process.stdout.write(
  `${JSON.stringify(
    {
      parse_mib_per_s: +(mib * parsePerSec).toFixed(1),
      parse_replay_mib_per_s: +(mib * replayPerSec).toFixed(1),
      policy_evaluations_per_s: Math.round(evalPerSec),
      check_measured_boot_per_s: Math.round(checkPerSec),
      typical_log_bytes: typical.length,
    },
    null,
    1,
  )}\n`,
)
