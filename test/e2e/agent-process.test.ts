/**
 * `keylime agent` as a real process: configured by a TOML file plus flags, it registers with the registrar,
 * serves quotes over mTLS, and on SIGTERM exits 0 after flushing its transient TPM objects. It runs with the Node
 * flags of its systemd unit (no JIT among them), as on an attested machine.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AgentClient } from '../../src/api/agent/client.ts'
import { RegistrarClient } from '../../src/api/registrar/client.ts'
import { createLogger } from '../../src/common/log.ts'
import { loadRegistrarConfig } from '../../src/config/registrar.ts'
import { ensureTlsDir } from '../../src/crypto/ca.ts'
import { verifyImaIncrement } from '../../src/evidence/ima/verify.ts'
import { verifyQuote } from '../../src/evidence/quote/index.ts'
import { type RunningRegistrar, startRegistrar } from '../../src/registrar/server.ts'
import { getHandleCounts } from '../../src/tpm/keylime-client.ts'
import { Tpm } from '../../src/tpm/tpm.ts'
import { freeLocalPort } from '../helpers/free-port.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

const UUID = 'c0ffee00-0000-4000-8000-000000000001'
/** `NODE_OPTIONS` of packaging/systemd/keylime-agent.service. */
const UNIT_NODE_OPTIONS =
  /^Environment="NODE_OPTIONS=([^"]*)"/m.exec(
    readFileSync(new URL('../../packaging/systemd/keylime-agent.service', import.meta.url), 'utf8'),
  )?.[1] ?? ''
let dir: string
let swtpm: SwtpmInstance
let registrar: RunningRegistrar
let child: ChildProcess | undefined

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'agent-proc-'))
  swtpm = await startSwtpm()
  const env = { KEYLIME_DIR: dir }
  const { config } = loadRegistrarConfig({
    configDirs: [],
    env,
    flags: { tls_dir: 'generate', port: 0, tls_port: 0, database_url: 'sqlite' },
  })
  registrar = await startRegistrar(config, createLogger('reg', 'silent'), { env })
  await ensureTlsDir(join(dir, 'agent', 'cv_ca'))
}, 60_000)

afterAll(async () => {
  child?.kill('SIGKILL')
  await registrar?.close()
  await swtpm?.stop()
  rmSync(dir, { recursive: true, force: true })
})

describe('keylime agent process', () => {
  it('registers, serves quotes over mTLS, and shuts down cleanly on SIGTERM', async () => {
    // the IMA emulator CLI first: boot_aggregate + one file, PCR 10 extended on the same TPM
    const list = join(dir, 'ascii_runtime_measurements')
    writeFileSync(join(dir, 'measured.txt'), 'measured by the emulator')
    const emulated = execFileSync(
      process.execPath,
      [
        'bin/keylime.js',
        'agent',
        'ima-emulate',
        '--tpm',
        swtpm.transport,
        '--list',
        list,
        join(dir, 'measured.txt'),
      ],
      { timeout: 60_000 },
    ).toString()
    expect(emulated.split('\n').filter(Boolean)).toHaveLength(2)
    const port = await freeLocalPort()
    const conf = join(dir, 'agent.conf')
    writeFileSync(
      conf,
      [
        '[agent]',
        `uuid = "${UUID}"`,
        `keylime_dir = "${join(dir, 'agent')}"`,
        `registrar_port = ${registrar.httpPort}`,
        `ima_ml_path = "${list}"`,
        'run_as = ""', // no `keylime` account here; test/e2e/agent-run-as.test.ts covers run_as
        '',
      ].join('\n'),
    )
    child = spawn(
      process.execPath,
      ['bin/keylime.js', 'agent', '--config', conf, '--tpm', swtpm.transport, '--port', String(port)],
      {
        env: { ...process.env, KEYLIME_LOG_LEVEL: 'info', NODE_OPTIONS: UNIT_NODE_OPTIONS },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    )
    let output = ''
    child.stdout?.on('data', (c: Buffer) => {
      output += c.toString()
    })
    child.stderr?.on('data', (c: Buffer) => {
      output += c.toString()
    })
    const exited = new Promise<number | null>((done) => child?.once('exit', (code) => done(code)))

    let mtlsCert = ''
    for (let i = 0; i < 200 && !mtlsCert; i++) {
      await new Promise((r) => setTimeout(r, 100))
      if (output.includes('listening on'))
        mtlsCert = readFileSync(join(dir, 'agent', 'server-cert.crt'), 'utf8')
    }
    expect(mtlsCert, output).not.toBe('')
    const agentClient = new AgentClient({
      baseUrl: `https://127.0.0.1:${port}`,
      apiVersion: '2.6',
      tls: {
        ca: mtlsCert,
        cert: readFileSync(join(dir, 'agent', 'cv_ca', 'client-cert.crt'), 'utf8'),
        key: readFileSync(join(dir, 'agent', 'cv_ca', 'client-private.pem'), 'utf8'),
      },
    })
    const q = await agentClient.identityQuote('processnonce1')
    const iq = await agentClient.integrityQuote({ nonce: 'processnonce2', mask: [10], partial: true })
    await agentClient.close()
    expect(iq.ima_measurement_list).toBe(readFileSync(list, 'utf8'))

    const read = (f: string) => readFileSync(join(dir, 'reg_ca', f), 'utf8')
    const admin = new RegistrarClient({
      baseUrl: `https://127.0.0.1:${registrar.tlsPort}`,
      tls: { ca: read('cacert.crt'), cert: read('client-cert.crt'), key: read('client-private.pem') },
    })
    const shown = await admin.show(UUID)
    await admin.close()
    expect(shown.port).toBe(9002) // contact_port default; the listener port is separate
    const ak = Buffer.from(shown.aik_tpm, 'base64')
    expect(
      verifyQuote({ akPublic: ak, quote: q.quote, nonce: 'processnonce1', hashAlg: 'sha256' }).verdict.ok,
    ).toBe(true)
    const iv = verifyQuote({ akPublic: ak, quote: iq.quote, nonce: 'processnonce2', hashAlg: 'sha256' })
    expect(iv.verdict.ok).toBe(true)
    const replay = verifyImaIncrement({
      listText: iq.ima_measurement_list ?? '',
      firstEntry: 0,
      state: null,
      quotedPcr10: { hashAlg: 'sha256', value: iv.pcrs?.get(10) ?? null },
      policy: null,
    })
    expect(replay.verdict).toEqual({ ok: true })
    expect(replay.matchedAt).toBe(2)
    expect(output).not.toContain('PRIVATE KEY')

    child.kill('SIGTERM')
    expect(await exited).toBe(0)
    expect(output).toContain('transient TPM objects flushed')
    const tpm = await Tpm.open(swtpm.transport)
    try {
      expect(await getHandleCounts(tpm)).toEqual({ transient: 0, sessions: 0 })
    } finally {
      await tpm.close()
    }
  }, 60_000)
})
