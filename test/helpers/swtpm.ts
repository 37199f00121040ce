/**
 * Test harness: a fresh swtpm per call. State is created with `swtpm_setup --tpm2 --create-ek-cert
 * --create-platform-cert` (SHA-1 and SHA-256 banks active), then `swtpm socket` listens on two free
 * consecutive TCP ports (data P, control P+1, the tpm2-tools convention) and starts the TPM itself
 * (`--flags not-need-init,startup-clear`).
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process'
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

function listenable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer()
    srv.once('error', () => resolve(false))
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)))
  })
}

async function freePortPair(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 40000)
    if ((await listenable(port)) && (await listenable(port + 1))) return port
  }
  throw new Error('no free pair of TCP ports found')
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
    { timeout: 60_000 },
  )
  for (let attempt = 0; ; attempt++) {
    const port = await freePortPair()
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
      { stdio: ['ignore', 'ignore', 'pipe'] },
    )
    let stderr = ''
    child.stderr?.on('data', (d) => {
      stderr += String(d)
    })
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
    let up = false
    for (let i = 0; i < 100 && child.exitCode === null; i++) {
      if (await canConnect(port + 1)) {
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
    let stopped = false
    return {
      transport: `swtpm:host=127.0.0.1,port=${port}`,
      tcti: `swtpm:host=127.0.0.1,port=${port}`,
      port,
      stateDir,
      async stop() {
        if (stopped) return
        stopped = true
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
