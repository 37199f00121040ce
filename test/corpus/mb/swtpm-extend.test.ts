/**
 * The extend plan drives a real (software) TPM: extending a real machine's log into swtpm with tpm2_pcrextend
 * reproduces the PCR values that machine's TPM quoted, including a StartupLocality-3 log (TPM2_Startup sent at
 * locality 3 through the control channel). This is what the demo does so a quote matches a log.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { toHex } from '../../../src/evidence/mb/guid.ts'
import { extendPlan, parseEventLog } from '../../../src/evidence/mb/index.ts'
import { freePort } from '../../helpers/swtpm.ts'
import { fixture, fixtureJson } from '../fixture.ts'

interface Swtpm {
  env: NodeJS.ProcessEnv
  stop(): void
}

/** A fresh swtpm whose TPM2_Startup(CLEAR) is sent at `locality` (3 sets PCR 0 to 00…03, like the firmware did). */
async function startSwtpm(locality: number): Promise<Swtpm> {
  const dir = mkdtempSync(join(tmpdir(), 'mb-swtpm-'))
  execFileSync('swtpm_setup', ['--tpm2', '--tpmstate', dir, '--pcr-banks', 'sha1,sha256'], {
    stdio: 'ignore',
    timeout: 60_000,
  })
  const port = await freePort(true) // data port and the next one (control) both free
  const ctrl = port + 1 // the tpm2-tss swtpm TCTI expects the control channel on the next port
  const proc: ChildProcess = spawn(
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
      'not-need-init',
    ],
    { stdio: 'ignore' },
  )
  const stop = () => {
    proc.kill()
    rmSync(dir, { recursive: true, force: true })
  }
  try {
    for (let i = 0; ; i++) {
      try {
        execFileSync('swtpm_ioctl', ['--tcp', `127.0.0.1:${ctrl}`, '-l', String(locality)], {
          stdio: 'ignore',
          timeout: 30_000,
        })
        break
      } catch (e) {
        if (i > 300) throw e // swtpm can take seconds to listen on a loaded machine
        await new Promise((r) => setTimeout(r, 100))
      }
    }
    // raw TPM2_Startup(TPM_SU_CLEAR): tpm2_startup's TCTI would reset the locality to 0 first
    const rsp = await new Promise<Buffer>((resolve, reject) => {
      const sock = connect(port, '127.0.0.1')
      const timer = setTimeout(() => {
        sock.destroy()
        reject(new Error('no answer to TPM2_Startup'))
      }, 5000)
      let answer: Buffer | undefined
      sock.on('connect', () => sock.write(Buffer.from('80010000000c000001440000', 'hex')))
      sock.on('data', (d) => {
        answer = d
        sock.destroy()
      })
      // swtpm serves one client at a time: resolve only once the connection is fully closed
      sock.on('close', () => {
        clearTimeout(timer)
        if (answer) resolve(answer)
        else reject(new Error('swtpm closed the connection without answering'))
      })
      sock.once('error', (e) => {
        clearTimeout(timer)
        reject(e)
      })
    })
    expect(rsp.readUInt32BE(6)).toBe(0) // TPM_RC_SUCCESS
  } catch (e) {
    stop()
    throw e
  }
  return { env: { ...process.env, TPM2TOOLS_TCTI: `swtpm:host=127.0.0.1,port=${port}` }, stop }
}

function readPcrs(env: NodeJS.ProcessEnv, pcrs: number[]): Record<string, Record<string, string>> {
  const out = execFileSync('tpm2_pcrread', [`sha1:${pcrs.join(',')}+sha256:${pcrs.join(',')}`], {
    env,
    encoding: 'utf8',
    timeout: 30_000,
  })
  const values: Record<string, Record<string, string>> = {}
  let bank = ''
  for (const line of out.split('\n')) {
    const b = /^\s*(sha1|sha256):\s*$/.exec(line)
    if (b) bank = b[1] as string
    const m = /^\s*(\d+)\s*:\s*0x([0-9A-F]+)/i.exec(line)
    if (m && bank) {
      const bankValues = values[bank] ?? {}
      bankValues[m[1] as string] = (m[2] as string).toLowerCase()
      values[bank] = bankValues
    }
  }
  return values
}

describe('extend plan into swtpm', () => {
  it.each([
    ['go-tpm-tools-arch-linux-workstation.bin', null],
    ['go-tpm-tools-glinux-alex.bin', 3],
  ])(
    '%s: swtpm ends with the PCRs the real TPM quoted (StartupLocality %s)',
    async (name, locality) => {
      const plan = extendPlan(parseEventLog(fixture(`eventlogs/${name}`)))
      expect(plan.startupLocality).toBe(locality)
      expect(plan.hcrtm).toBe(false)
      const tpm = await startSwtpm(plan.startupLocality ?? 0)
      try {
        for (const step of plan.steps) {
          const spec = Object.entries(step.digests)
            .map(([bank, d]) => `${bank}=${toHex(d as Uint8Array)}`)
            .join(',')
          execFileSync('tpm2_pcrextend', [`${step.pcr}:${spec}`], { env: tpm.env, timeout: 30_000 })
        }
        const quoted = fixtureJson<{ quoted_pcrs: { pcrs: Record<string, Record<string, string>> } }>(
          `eventlogs/${name}.reference.json`,
        ).quoted_pcrs.pcrs
        const touched = [...new Set(plan.steps.map((s) => s.pcr))].sort((a, b) => a - b)
        const got = readPcrs(tpm.env, touched)
        for (const bank of ['sha1', 'sha256']) {
          for (const pcr of touched) {
            expect(got[bank]?.[String(pcr)], `${bank} PCR ${pcr}`).toBe(
              quoted[bank]?.[String(pcr)]?.toLowerCase(),
            )
          }
        }
      } finally {
        tpm.stop()
      }
    },
    60_000,
  )
})
