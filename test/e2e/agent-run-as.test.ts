/**
 * `run_as`: a `keylime agent` process started as root opens its TPM, registers and binds its port as root, then runs
 * on as nobody:nogroup and still serves quotes, including the root-only IMA list it opened before the switch.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { chmodSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { resolveRunAs } from '../../src/agent/privileges.ts'
import { isTmpfs } from '../../src/agent/secure-dir.ts'
import { AgentClient } from '../../src/api/agent/client.ts'
import { RegistrarClient } from '../../src/api/registrar/client.ts'
import { createLogger } from '../../src/common/log.ts'
import { loadRegistrarConfig } from '../../src/config/registrar.ts'
import { ensureTlsDir } from '../../src/crypto/ca.ts'
import { freePort } from '../../src/devtools/swtpm.ts'
import { removeWorkDir } from '../../src/devtools/work-dir.ts'
import { verifyQuote } from '../../src/evidence/quote/index.ts'
import { type RunningRegistrar, startRegistrar } from '../../src/registrar/server.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

const UUID = 'c0ffee00-0000-4000-8000-00000000a5a5'
const NOBODY = 65534
const isRoot = process.getuid?.() === 0
let dir: string
let swtpm: SwtpmInstance
let registrar: RunningRegistrar
const children: ChildProcess[] = []

/** Starts `keylime agent` with the given run_as; resolves when `until` shows up in its output or it exits. */
async function runAgent(runAs: string, until: string) {
  const port = await freePort()
  const conf = join(dir, `agent-${children.length}.conf`)
  writeFileSync(
    conf,
    [
      '[agent]',
      `uuid = "${UUID}"`,
      `keylime_dir = "${join(dir, 'agent')}"`,
      `registrar_port = ${registrar.httpPort}`,
      `ima_ml_path = "${join(dir, 'ima-list')}"`,
      `run_as = "${runAs}"`,
      // not root, the agent cannot mount the tmpfs for its secure directory
      `secure_dir_allow_disk = ${!isRoot}`,
      '',
    ].join('\n'),
  )
  const child = spawn(
    process.execPath,
    ['bin/keylime.js', 'agent', '--config', conf, '--tpm', swtpm.transport, '--port', String(port)],
    { env: { ...process.env, KEYLIME_LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] },
  )
  children.push(child)
  let output = ''
  const collect = (c: Buffer) => {
    output += c.toString()
  }
  child.stdout?.on('data', collect)
  child.stderr?.on('data', collect)
  let exitCode: number | null | undefined
  child.once('exit', (code) => {
    exitCode = code
  })
  for (let i = 0; i < 150 && exitCode === undefined && !output.includes(until); i++) {
    await new Promise((r) => setTimeout(r, 100))
  }
  return { child, port, output: () => output, exitCode: () => exitCode }
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'agent-run-as-'))
  chmodSync(dir, 0o755) // nobody must be able to reach its work directory below this one
  swtpm = await startSwtpm()
  const env = { KEYLIME_DIR: dir }
  const { config } = loadRegistrarConfig({
    configDirs: [],
    env,
    flags: { tls_dir: 'generate', port: 0, tls_port: 0, database_url: 'sqlite' },
  })
  registrar = await startRegistrar(config, createLogger('reg', 'silent'), { env })
  await ensureTlsDir(join(dir, 'agent', 'cv_ca'))
  // Readable by root only, like securityfs: the agent must open it before giving up root.
  writeFileSync(join(dir, 'ima-list'), '10 aa sha256:bb boot_aggregate\n', { mode: 0o600 })
}, 60_000)

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL')
  await registrar?.close()
  await swtpm?.stop()
  // the agent mounted a tmpfs on its secure directory as root and, as nobody, could not unmount it
  removeWorkDir(dir)
})

function processIds(pid: number | undefined, name: 'Uid' | 'Gid' | 'Groups'): string[] | undefined {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  return status
    .match(new RegExp(`^${name}:\\s*(.*)$`, 'm'))?.[1]
    ?.trim()
    .split(/\s+/)
}

describe('agent run_as', () => {
  if (!isRoot) {
    // The switch itself needs root (CI runs as root); a developer's run checks the other branch instead.
    it('is ignored with a notice when the agent is not root, which keeps running as its own user', async () => {
      const agent = await runAgent('nobody:nogroup', 'listening on')
      expect(agent.output()).toContain("run_as 'nobody:nogroup' is ignored: the agent is not running as root")
      expect(agent.output()).toContain('listening on')
      expect(processIds(agent.child.pid, 'Uid')?.[0]).toBe(String(process.getuid?.()))
      agent.child.kill('SIGTERM')
    }, 30_000)
    return
  }

  it('switches to nobody:nogroup after start-up and keeps serving quotes and the IMA list', async () => {
    const agent = await runAgent('nobody:nogroup', 'listening on') // logged after the switch
    const out = agent.output()
    expect(out).toContain(`dropped privileges to nobody:nogroup (uid ${NOBODY}, gid ${NOBODY})`)
    expect(out).toContain('listening on')

    const field = (name: 'Uid' | 'Gid' | 'Groups') => processIds(agent.child.pid, name)
    expect(field('Uid')).toEqual([`${NOBODY}`, `${NOBODY}`, `${NOBODY}`, `${NOBODY}`])
    expect(field('Gid')).toEqual([`${NOBODY}`, `${NOBODY}`, `${NOBODY}`, `${NOBODY}`])
    expect(field('Groups')).toEqual([`${NOBODY}`])
    // The secure directory (payloads land there later) now belongs to the agent's user.
    expect(statSync(join(dir, 'agent', 'secure')).uid).toBe(NOBODY)
    expect(isTmpfs(join(dir, 'agent', 'secure'))).toBe(true)

    const tls = (f: string) => readFileSync(join(dir, 'agent', f), 'utf8')
    const client = new AgentClient({
      baseUrl: `https://127.0.0.1:${agent.port}`,
      apiVersion: '2.6',
      tls: {
        ca: tls('server-cert.crt'),
        cert: tls('cv_ca/client-cert.crt'),
        key: tls('cv_ca/client-private.pem'),
      },
    })
    const q = await client.integrityQuote({ nonce: 'runasnonce1', mask: [10], partial: true })
    await client.close()
    expect(q.ima_measurement_list).toBe(readFileSync(join(dir, 'ima-list'), 'utf8'))

    const read = (f: string) => readFileSync(join(dir, 'reg_ca', f), 'utf8')
    const admin = new RegistrarClient({
      baseUrl: `https://127.0.0.1:${registrar.tlsPort}`,
      tls: { ca: read('cacert.crt'), cert: read('client-cert.crt'), key: read('client-private.pem') },
    })
    const ak = Buffer.from((await admin.show(UUID)).aik_tpm, 'base64')
    await admin.close()
    const checked = verifyQuote({ akPublic: ak, quote: q.quote, nonce: 'runasnonce1', hashAlg: 'sha256' })
    expect(checked.verdict.ok).toBe(true)

    const exited = new Promise<number | null>((done) => agent.child.once('exit', (code) => done(code)))
    agent.child.kill('SIGTERM')
    expect(await exited).toBe(0)
  }, 30_000)

  it('refuses to start when the run_as user does not exist', async () => {
    const agent = await runAgent('keylime-no-such-user:nogroup', 'listening on')
    await new Promise<void>((done) =>
      agent.exitCode() === undefined ? agent.child.once('exit', () => done()) : done(),
    )
    expect(agent.exitCode()).not.toBe(0)
    expect(agent.output()).toContain("run_as: user 'keylime-no-such-user' does not exist")
    expect(agent.output()).not.toContain('listening on')
  }, 20_000)

  it('names a missing group and a malformed value', () => {
    const log = createLogger('run-as', 'silent')
    expect(() => resolveRunAs('nobody:keylime-no-such-group', log)).toThrow(
      "run_as: group 'keylime-no-such-group' does not exist",
    )
    expect(() => resolveRunAs('nobody:', log)).toThrow("must be 'user:group' or 'user'")
    expect(resolveRunAs('', log)).toBeNull()
    expect(resolveRunAs('nobody', log)).toEqual({ label: 'nobody', uid: NOBODY, gid: NOBODY })
  })
})
