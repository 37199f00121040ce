/**
 * Extends a UEFI event log (a real machine's or a synthetic one) into a (software) TPM so that the TPM's quote
 * matches the log: used by e2e tests and the demo to attest a swtpm agent with a measured-boot log.
 */
import { execFile } from 'node:child_process'
import { connect } from 'node:net'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { extendPlan, parseEventLog } from '../evidence/mb/index.ts'
import { pcrExtend } from '../tpm/keylime-client.ts'
import { Tpm } from '../tpm/tpm.ts'
import type { SwtpmInstance } from './swtpm.ts'

export type ExtendBank = 'sha1' | 'sha256' | 'sha384' | 'sha512'

export interface ExtendOptions {
  /** PCR banks to extend (those the TPM has active); default sha1 and sha256. */
  banks?: ExtendBank[]
  /**
   * Locality the TPM was started at (TPM2_Startup); default 0. A log with a StartupLocality event replays only into a
   * TPM started at that locality (`startupAtLocality`), since PCR 0's initial value depends on it.
   */
  tpmStartupLocality?: number
}

/**
 * Extends every measurement of `logBytes` into the TPM at `transport`, in log order. Refuses logs whose replay
 * needs a TPM started at another locality than `tpmStartupLocality`, or with an H-CRTM sequence (the log has only
 * the digest of the H-CRTM data, which the TPM would have to hash itself). Returns the number of extends.
 */
export async function extendEventLogIntoTpm(
  transport: string,
  logBytes: Uint8Array,
  options: ExtendOptions = {},
): Promise<number> {
  const banks = options.banks ?? ['sha1', 'sha256']
  const plan = extendPlan(parseEventLog(logBytes))
  if (plan.hcrtm)
    throw new Error('event log starts with an H-CRTM sequence; it cannot be replayed into this TPM')
  const needed = plan.startupLocality ?? 0
  const started = options.tpmStartupLocality ?? 0
  if (needed !== started)
    throw new Error(
      `event log needs TPM2_Startup at locality ${needed}, but the TPM was started at locality ${started}`,
    )
  const tpm = await Tpm.open(transport)
  try {
    for (const step of plan.steps) {
      const digests: Partial<Record<ExtendBank, Uint8Array>> = {}
      for (const bank of banks) {
        const d = step.digests[bank]
        if (d) digests[bank] = d
      }
      if (Object.keys(digests).length > 0) await pcrExtend(tpm, step.pcr, digests)
    }
  } finally {
    await tpm.close()
  }
  return plan.steps.length
}

const run = promisify(execFile)
/** TPM2_Startup(TPM_SU_CLEAR), as raw bytes: a TPM client library would first reset the locality to 0. */
const STARTUP_CLEAR = Buffer.from('80010000000c000001440000', 'hex')

/**
 * Powers on a swtpm started with `startSwtpm({ startup: false })` and sends TPM2_Startup(CLEAR) at `locality`, as
 * platforms whose firmware starts the TPM at locality 3 do (PCR 0 then starts at 00…03), then returns to locality 0
 * for ordinary clients. Uses `swtpm_ioctl` (swtpm-tools) for the control channel.
 */
export async function startupAtLocality(swtpm: SwtpmInstance, locality: number): Promise<void> {
  const ctrl =
    swtpm.port !== 0
      ? ['--tcp', `127.0.0.1:${swtpm.port + 1}`]
      : ['--unix', join(swtpm.stateDir, 'swtpm.ctrl')]
  await run('swtpm_ioctl', [...ctrl, '-i'], { timeout: 10_000 })
  await run('swtpm_ioctl', [...ctrl, '-l', String(locality)], { timeout: 10_000 })
  const data =
    swtpm.port !== 0 ? { host: '127.0.0.1', port: swtpm.port } : { path: join(swtpm.stateDir, 'swtpm.sock') }
  const response = await exchange(data, STARTUP_CLEAR)
  const rc = response.length >= 10 ? response.readUInt32BE(6) : -1
  if (rc !== 0)
    throw new Error(`TPM2_Startup at locality ${locality} failed (response ${response.toString('hex')})`)
  await run('swtpm_ioctl', [...ctrl, '-l', '0'], { timeout: 10_000 })
}

/** Sends one command on a fresh data connection and returns the response once swtpm has closed it. */
function exchange(
  address: { host: string; port: number } | { path: string },
  command: Buffer,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = connect(address)
    const chunks: Buffer[] = []
    const timer = setTimeout(() => socket.destroy(new Error('swtpm did not answer TPM2_Startup')), 10_000)
    socket.on('connect', () => socket.write(command))
    socket.on('data', (d: Buffer) => {
      chunks.push(d)
      const got = Buffer.concat(chunks)
      // the response header carries its size; close once it is complete (swtpm serves one connection at a time)
      if (got.length >= 6 && got.length >= got.readUInt32BE(2)) socket.end()
    })
    socket.on('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    socket.on('close', () => {
      clearTimeout(timer)
      resolve(Buffer.concat(chunks))
    })
  })
}
