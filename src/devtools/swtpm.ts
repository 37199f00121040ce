/**
 * Development TPM: a fresh swtpm (software TPM 2.0) with an EK certificate, listening on two free TCP ports
 * (data P, control P+1, the tpm2-tools convention) and already started (`--flags not-need-init,startup-clear`).
 * Used by `keylime demo` and the test suite; production agents use `/dev/tpmrm0`.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { existsSync, mkdirSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { connect, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)

export interface SwtpmInstance {
  /** Transport spec for `Tpm.open`, e.g. `swtpm:host=127.0.0.1,port=40321`. */
  transport: string
  /** The same endpoint as a tpm2-tools TCTI (`-T` / TPM2TOOLS_TCTI). */
  tcti: string
  port: number
  stateDir: string
  stop(): Promise<void>
}

/** Where `swtpm_setup --create-ek-cert` keeps the local CA that signs swtpm EK certificates (Debian default). */
export const SWTPM_LOCALCA_DIR = '/var/lib/swtpm-localca'

/** PEM files of swtpm's local CA (root and intermediate), to put in a tenant `tpm_cert_store` for development. */
export function swtpmLocalCaCertificates(dir = SWTPM_LOCALCA_DIR): string[] {
  return ['swtpm-localca-rootca-cert.pem', 'issuercert.pem']
    .map((f) => join(dir, f))
    .filter((p) => existsSync(p))
}

export function swtpmInstalled(): boolean {
  const path = (process.env.PATH ?? '').split(':')
  return ['swtpm', 'swtpm_setup'].every((bin) => path.some((dir) => existsSync(join(dir, bin))))
}

function listenable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer()
    srv.once('error', () => resolve(false))
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)))
  })
}

/** A free TCP port on 127.0.0.1 (and, with `pair`, the next one free too). */
export async function freePort(pair = false): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 40000)
    if ((await listenable(port)) && (!pair || (await listenable(port + 1)))) return port
  }
  throw new Error('no free TCP port found on 127.0.0.1')
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port })
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

export async function startSwtpm(options: { dir?: string; pcrBanks?: string } = {}): Promise<SwtpmInstance> {
  const stateDir = options.dir ?? (await mkdtemp(join(tmpdir(), 'keylime-swtpm-')))
  const ownsDir = options.dir === undefined
  if (!ownsDir) mkdirSync(stateDir, { recursive: true, mode: 0o700 })
  await run(
    'swtpm_setup',
    [
      '--tpm2',
      '--tpmstate',
      stateDir,
      '--create-ek-cert',
      '--create-platform-cert',
      '--pcr-banks',
      options.pcrBanks ?? 'sha1,sha256',
      '--overwrite',
    ],
    { timeout: 120_000 },
  )
  const port = await freePort(true)
  const child: ChildProcess = spawn(
    'swtpm',
    [
      'socket',
      '--tpm2',
      '--tpmstate',
      `dir=${stateDir}`,
      '--server',
      `type=tcp,port=${port},bindaddr=127.0.0.1`,
      '--ctrl',
      `type=tcp,port=${port + 1},bindaddr=127.0.0.1`,
      '--flags',
      'not-need-init,startup-clear',
    ],
    { stdio: 'ignore' },
  )
  let exited = false
  child.once('exit', () => {
    exited = true
  })
  for (let i = 0; i < 200 && !(await canConnect(port)); i++) {
    if (exited) throw new Error('swtpm exited during start-up')
    await new Promise((r) => setTimeout(r, 25))
  }
  const stop = async () => {
    if (!exited) {
      child.kill('SIGTERM')
      await new Promise<void>((r) => (exited ? r() : child.once('exit', () => r())))
    }
    if (ownsDir) await rm(stateDir, { recursive: true, force: true })
  }
  return {
    transport: `swtpm:host=127.0.0.1,port=${port}`,
    tcti: `swtpm:host=127.0.0.1,port=${port}`,
    port,
    stateDir,
    stop,
  }
}
