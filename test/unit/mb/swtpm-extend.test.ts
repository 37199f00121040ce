/**
 * The extend plan drives a real (software) TPM: extending a real machine's log into swtpm with tpm2_pcrextend
 * reproduces the PCR values that machine's TPM quoted. This is what the demo does so a quote matches a log.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { toHex } from '../../../src/evidence/mb/guid.ts'
import { extendPlan, parseEventLog } from '../../../src/evidence/mb/index.ts'
import { fixture, fixtureJson } from '../../helpers/fixture.ts'

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address()
      srv.close(() => resolve(typeof addr === 'object' && addr ? addr.port : 0))
    })
  })
}

let dir = ''
let swtpm: ChildProcess | undefined
let env: NodeJS.ProcessEnv = {}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'mb-swtpm-'))
  execFileSync('swtpm_setup', ['--tpm2', '--tpmstate', dir, '--pcr-banks', 'sha1,sha256'], {
    stdio: 'ignore',
  })
  const port = await freePort()
  const ctrl = port + 1 // the tpm2-tss swtpm TCTI expects the control channel on the next port
  swtpm = spawn(
    'swtpm',
    [
      'socket',
      '--tpm2',
      '--tpmstate',
      `dir=${dir}`,
      '--server',
      `type=tcp,port=${port},bindaddr=127.0.0.1`,
      '--ctrl',
      `type=tcp,port=${ctrl},bindaddr=127.0.0.1`,
      '--flags',
      'not-need-init,startup-clear',
    ],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  )
  env = { ...process.env, TPM2TOOLS_TCTI: `swtpm:host=127.0.0.1,port=${port}` }
  for (let i = 0; i < 50; i++) {
    try {
      execFileSync('tpm2_pcrread', ['sha256:0'], { env, stdio: 'ignore' })
      return
    } catch {
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  throw new Error('swtpm did not come up')
}, 30_000)

afterAll(() => {
  swtpm?.kill()
  if (dir) rmSync(dir, { recursive: true, force: true })
})

describe('extend plan into swtpm', () => {
  it('reproduces the PCRs a real TPM quoted for go-tpm-tools-arch-linux-workstation', () => {
    const name = 'go-tpm-tools-arch-linux-workstation.bin'
    const plan = extendPlan(parseEventLog(fixture(`eventlogs/${name}`)))
    expect(plan.startupLocality).toBeNull()
    expect(plan.hcrtm).toBe(false)
    for (const step of plan.steps) {
      const spec = Object.entries(step.digests)
        .map(([bank, d]) => `${bank}=${toHex(d as Uint8Array)}`)
        .join(',')
      execFileSync('tpm2_pcrextend', [`${step.pcr}:${spec}`], { env })
    }
    const quoted = fixtureJson<{ quoted_pcrs: { pcrs: Record<string, Record<string, string>> } }>(
      `eventlogs/${name}.reference.json`,
    ).quoted_pcrs.pcrs
    const touched = [...new Set(plan.steps.map((s) => s.pcr))].sort((a, b) => a - b)
    const out = execFileSync('tpm2_pcrread', [`sha1:${touched.join(',')}+sha256:${touched.join(',')}`], {
      env,
      encoding: 'utf8',
    })
    let bank = ''
    let compared = 0
    for (const line of out.split('\n')) {
      const b = /^\s*(sha1|sha256):\s*$/.exec(line)
      if (b) bank = b[1] as string
      const m = /^\s*(\d+)\s*:\s*0x([0-9A-F]+)/i.exec(line)
      if (m && bank) {
        expect(m[2]?.toLowerCase(), `${bank} PCR ${m[1]}`).toBe(quoted[bank]?.[m[1] as string]?.toLowerCase())
        compared++
      }
    }
    expect(compared).toBe(touched.length * 2)
  }, 60_000)
})
