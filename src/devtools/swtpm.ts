/**
 * Development TPM: a fresh swtpm (software TPM 2.0) per call, for `keylime demo` and the test suite (production
 * agents use `/dev/tpmrm0`). State is created with `swtpm_setup --tpm2 --create-ek-cert --create-platform-cert`
 * (SHA-1 and SHA-256 banks active, EK certificate signed by swtpm's local CA), then `swtpm socket` listens on two free
 * consecutive TCP ports (data P, control P+1, the tpm2-tools convention) or Unix sockets, and starts the TPM itself
 * (`--flags not-need-init,startup-clear`).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { connect, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)

export interface SwtpmInstance {
  /** Transport spec for `Tpm.open`, e.g. `swtpm:host=127.0.0.1,port=40321` or `swtpm:path=/s.sock,ctrl=/s.ctrl`. */
  transport: string
  /** The same endpoint as a tpm2-tools TCTI (`-T` / TPM2TOOLS_TCTI). */
  tcti: string
  /** TCP data port (0 for Unix sockets). */
  port: number
  stateDir: string
  stop(): Promise<void>
}

function listenable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer()
    srv.once('error', () => resolve(false))
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)))
  })
}

/**
 * Ports to pick from: below the kernel's ephemeral range where it leaves room, so an outgoing connection of another
 * process cannot take the port between the check and swtpm's bind.
 */
function listenPortRange(): { from: number; count: number } {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0])
    if (low > 12_000) return { from: 10_000, count: low - 10_001 }
  } catch {
    // not Linux: any unprivileged range
  }
  return { from: 20_000, count: 40_000 }
}

let portRange: { from: number; count: number } | undefined

/** A free TCP port on 127.0.0.1 (and, with `pair`, the next one free too). */
export async function freePort(pair = false): Promise<number> {
  portRange ??= listenPortRange()
  const { from, count } = portRange
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = from + Math.floor(Math.random() * count)
    if ((await listenable(port)) && (!pair || (await listenable(port + 1)))) return port
  }
  throw new Error('no free TCP port found on 127.0.0.1')
}

const freePortPair = () => freePort(true)

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

export interface StartSwtpmOptions {
  dir?: string
  /** PCR banks to activate (default `sha1,sha256`). */
  pcrBanks?: string
  /** `unix`: data and control on Unix sockets in the state dir (transport `swtpm:path=...,ctrl=...`). */
  socket?: 'tcp' | 'unix'
  /** false: leave the TPM powered off; the client must CMD_INIT via the control channel and TPM2_Startup. */
  startup?: boolean
  /** false: no EK and platform certificates from swtpm's local CA (the EK certificate indices stay free). */
  ekCertificates?: boolean
  /** Size of swtpm's persistent RSA EK (3072: a high-range H-6 EK at 0x8101001c; its ECC EK is P-384 either way). */
  rsaKeySize?: 2048 | 3072
}

function canConnectPath(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ path })
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

export async function startSwtpm(options: StartSwtpmOptions = {}): Promise<SwtpmInstance> {
  const stateDir = options.dir ?? (await mkdtemp(join(tmpdir(), 'keylime-swtpm-')))
  const ownsDir = options.dir === undefined
  if (!ownsDir) mkdirSync(stateDir, { recursive: true, mode: 0o700 })
  await run(
    'swtpm_setup',
    [
      '--tpm2',
      '--tpmstate',
      stateDir,
      ...(options.ekCertificates === false ? ['--createek'] : ['--create-ek-cert', '--create-platform-cert']),
      ...(options.rsaKeySize ? ['--rsa-keysize', String(options.rsaKeySize)] : []),
      '--pcr-banks',
      options.pcrBanks ?? 'sha1,sha256',
      '--overwrite',
    ],
    { timeout: 60_000 },
  )
  const unix = options.socket === 'unix'
  const dataPath = join(stateDir, 'swtpm.sock')
  const ctrlPath = join(stateDir, 'swtpm.ctrl')
  for (let attempt = 0; ; attempt++) {
    const port = unix ? 0 : await freePortPair()
    const args = ['socket', '--tpm2', '--tpmstate', `dir=${stateDir}`]
    if (unix) args.push('--server', `type=unixio,path=${dataPath}`, '--ctrl', `type=unixio,path=${ctrlPath}`)
    else {
      args.push('--server', `type=tcp,port=${port},bindaddr=127.0.0.1`)
      args.push('--ctrl', `type=tcp,port=${port + 1},bindaddr=127.0.0.1`)
    }
    if (options.startup !== false) args.push('--flags', 'not-need-init,startup-clear')
    const child: ChildProcess = spawn('swtpm', args, { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr?.on('data', (d) => {
      stderr += String(d)
    })
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
    // ready when both the control and the data socket accept and swtpm is still running: the control socket alone
    // can be up before the data socket, and a port taken meanwhile by another process answers while swtpm exits
    const listening = async () =>
      unix
        ? (await canConnectPath(ctrlPath)) && (await canConnectPath(dataPath))
        : (await canConnect(port + 1)) && (await canConnect(port))
    let up = false
    for (let i = 0; i < 100 && child.exitCode === null; i++) {
      if ((await listening()) && child.exitCode === null) {
        up = true
        break
      }
      await new Promise((r) => setTimeout(r, 50))
    }
    if (!up) {
      child.kill('SIGKILL')
      await exited
      if (attempt < 3) continue
      throw new Error(`swtpm did not start: ${stderr}`)
    }
    // If the test process exits without calling stop(), do not leave swtpm running.
    const killOnExit = () => child.kill('SIGKILL')
    process.once('exit', killOnExit)
    let stopped = false
    const transport = unix ? `swtpm:path=${dataPath},ctrl=${ctrlPath}` : `swtpm:host=127.0.0.1,port=${port}`
    return {
      transport,
      tcti: unix ? `swtpm:path=${dataPath}` : transport,
      port,
      stateDir,
      async stop() {
        if (stopped) return
        stopped = true
        process.off('exit', killOnExit)
        if (child.exitCode === null) {
          child.kill('SIGTERM')
          const timer = setTimeout(() => child.kill('SIGKILL'), 3000)
          await exited
          clearTimeout(timer)
        }
        if (ownsDir) await rm(stateDir, { recursive: true, force: true })
      },
    }
  }
}
