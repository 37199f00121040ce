/**
 * The systemd units in packaging/systemd: `systemd-analyze verify` accepts each (with ExecStart pointed at this
 * checkout's CLI), each runs a real `keylime` command, and the hardening an operator relies on is there. A service
 * started under a `$NOTIFY_SOCKET` of the test's own (a Python receiver, as node has no Unix datagram sockets) sends
 * READY=1 only once its port accepts connections, as `Type=notify` expects; the push agent, which has no port, only
 * once the registrar has activated it.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { createInterface } from 'node:readline'
import Database from 'better-sqlite3'
import { afterAll, describe, expect, it } from 'vitest'
import { freePort, startSwtpm, swtpmLocalCaCertificates } from '../helpers/swtpm.ts'

const ROOT = resolve(import.meta.dirname, '../..')
const UNITS = join(ROOT, 'packaging/systemd')
const work = mkdtempSync(join(tmpdir(), 'keylime-units-'))
afterAll(() => rmSync(work, { recursive: true, force: true }))

/** `Key=value` lines of a unit (last one wins, as systemd reads them). */
/** Each directive's value; a directive given more than once (Environment) keeps its values joined by newlines. */
function directives(text: string): Map<string, string> {
  const out = new Map<string, string>()
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line)
    if (m) {
      const earlier = out.get(m[1] as string)
      out.set(m[1] as string, earlier === undefined ? (m[2] as string) : `${earlier}\n${m[2]}`)
    }
  }
  return out
}

function verify(name: string, text: string) {
  const path = join(work, name)
  // systemd checks that ExecStart's program exists: point it at this checkout's CLI
  writeFileSync(
    path,
    text.replace(/^ExecStart=\/usr\/bin\/keylime /m, `ExecStart=${process.execPath} ${ROOT}/bin/keylime.js `),
  )
  return spawnSync('systemd-analyze', ['verify', path], { encoding: 'utf8', cwd: work, timeout: 60_000 })
}

const units = readdirSync(UNITS).filter((f) => f.endsWith('.service'))

describe('systemd units', () => {
  it('ships one unit per service', () => {
    expect(units.sort()).toEqual([
      'keylime-agent.service',
      'keylime-push-agent.service',
      'keylime-registrar.service',
      'keylime-verifier.service',
    ])
  })

  for (const unit of units) {
    it(`${unit}: systemd-analyze verify accepts it, its command exists, it is hardened`, () => {
      const text = readFileSync(join(UNITS, unit), 'utf8')
      const r = verify(unit, text)
      expect(r.status, r.stderr).toBe(0)
      expect(r.stderr.trim()).toBe('')
      const d = directives(text)
      const command = (d.get('ExecStart') ?? '').split(' ').slice(1)
      const help = spawnSync(process.execPath, [join(ROOT, 'bin/keylime.js'), ...command, '--help'], {
        encoding: 'utf8',
        env: { ...process.env, KEYLIME_FROM_SOURCE: '1' },
        timeout: 60_000,
      })
      expect(help.status, help.stderr).toBe(0)
      expect(d.get('Type')).toBe('notify')
      expect(d.get('NotifyAccess')).toBe('all')
      expect(d.get('NoNewPrivileges')).toBe('yes')
      expect(d.get('ProtectSystem')).toBe('strict')
      expect(d.get('ReadWritePaths')).toBe('/var/lib/keylime')
      if (unit === 'keylime-agent.service' || unit === 'keylime-push-agent.service') {
        // the V8 flags bench/agent.ts measures (docs/agent.md): both agents run without JIT
        expect(d.get('Environment')).toBe(
          'KEYLIME_DIR=/var/lib/keylime\n"NODE_OPTIONS=--max-semi-space-size=1 --v8-pool-size=1 --jitless"',
        )
        // only the TPM device is reachable
        expect(d.get('DevicePolicy')).toBe('closed')
        expect(d.get('DeviceAllow')).toBe('/dev/tpmrm0 rw')
        expect(d.get('ReadOnlyPaths')).toBe('/sys/kernel/security')
      } else {
        expect(d.get('Environment')).toBe('KEYLIME_DIR=/var/lib/keylime')
        expect(d.get('User')).toBe('keylime')
        expect(d.get('CapabilityBoundingSet')).toBe('')
        expect(d.get('PrivateDevices')).toBe('yes')
      }
      if (unit === 'keylime-agent.service') {
        // root only to start: the agent itself drops to run_as
        expect(d.get('User')).toBe('root')
        expect(d.get('SocketBindDeny')).toBeUndefined()
      }
      if (unit === 'keylime-push-agent.service') {
        // never root: the tss group opens the TPM, one capability reads the securityfs logs; no port at all
        expect(d.get('User')).toBe('keylime')
        expect(d.get('Group')).toBe('tss')
        expect(d.get('CapabilityBoundingSet')).toBe('CAP_DAC_READ_SEARCH')
        expect(d.get('AmbientCapabilities')).toBe('CAP_DAC_READ_SEARCH')
        expect(d.get('SocketBindDeny')).toBe('any')
        // one agent per TPM: starting one stops the other (as upstream's push agent unit)
        expect(d.get('Conflicts')).toBe('keylime-agent.service')
        expect(d.get('ExecStart')).toBe('/usr/bin/keylime push-agent')
      }
    })
  }

  it('systemd-analyze really checks: a misspelt hardening value is reported', () => {
    const text = readFileSync(join(UNITS, 'keylime-verifier.service'), 'utf8').replace(
      'ProtectSystem=strict',
      'ProtectSystem=strictly',
    )
    const r = verify('broken.service', text)
    // systemd only warns (exit 0) and ignores the line; the unit test above therefore requires an empty stderr
    expect(r.stderr).toMatch(/protect system value/i)
  })
})

/** Receives datagrams on a Unix socket as systemd does: prints each on a line, closes passed fds (the barrier). */
const RECEIVER = `
import array, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
print("bound", flush=True)
while True:
    msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(64))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            for fd in fds:
                os.close(fd)
    print(msg.decode().replace("\\n", " "), flush=True)
`

function portAccepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })
}

/** A `$NOTIFY_SOCKET` of the test's own: each message with the result of `check` taken the moment it arrived. */
async function notifyReceiver<T>(
  socketPath: string,
  check: () => Promise<T>,
  children: ChildProcess[],
): Promise<{ ready: Promise<{ text: string; checked: Promise<T> }> }> {
  const receiver = spawn('python3', ['-c', RECEIVER, socketPath], { stdio: ['ignore', 'pipe', 'inherit'] })
  children.push(receiver)
  const messages = createInterface({ input: receiver.stdout as NodeJS.ReadableStream })
  let bound!: () => void
  const isBound = new Promise<void>((r) => {
    bound = r
  })
  let gotReady!: (m: { text: string; checked: Promise<T> }) => void
  const ready = new Promise<{ text: string; checked: Promise<T> }>((r) => {
    gotReady = r
  })
  messages.on('line', (line) => {
    if (line === 'bound') return bound()
    // checked the moment the message arrives: what READY=1 promises must already hold
    if (line.includes('READY=1')) gotReady({ text: line, checked: check() })
  })
  await isBound
  return { ready }
}

describe('Type=notify readiness', () => {
  const children: ChildProcess[] = []
  afterAll(() => {
    for (const c of children) c.kill('SIGKILL')
  })
  const registrarDir = join(work, 'registrar')
  let registrarPort = 0

  it('the registrar sends READY=1 over $NOTIFY_SOCKET once its port accepts connections', async () => {
    const socketPath = join(work, 'notify.sock')
    const port = await freePort()
    const { ready } = await notifyReceiver(socketPath, () => portAccepts(port), children)
    const registrar = spawn(
      process.execPath,
      [
        join(ROOT, 'bin/keylime.js'),
        'registrar',
        '--tls-dir',
        'generate',
        '--port',
        String(port),
        '--tls-port',
        '0',
        '--database-url',
        'sqlite',
      ],
      {
        env: {
          ...process.env,
          KEYLIME_FROM_SOURCE: '1',
          KEYLIME_DIR: registrarDir,
          NOTIFY_SOCKET: socketPath,
        },
        stdio: ['ignore', 'ignore', 'inherit'],
      },
    )
    children.push(registrar)
    const first = await ready
    expect(first.text).toContain('STATUS=registrar listening')
    expect(await first.checked).toBe(true)
    registrarPort = port
  }, 60_000)

  it('the push agent (no port of its own) sends READY=1 once the registrar has activated it', async () => {
    expect(registrarPort).toBeGreaterThan(0)
    const socketPath = join(work, 'notify-push.sock')
    const activeRows = async () => {
      const db = new Database(join(registrarDir, 'reg_data.sqlite'), { readonly: true })
      try {
        return db.prepare('select agent_id, active from registrarmain').all()
      } finally {
        db.close()
      }
    }
    const { ready } = await notifyReceiver(socketPath, activeRows, children)
    const swtpm = await startSwtpm({ dir: join(work, 'swtpm') })
    const dir = join(work, 'push-agent')
    mkdirSync(dir, { recursive: true })
    writeFileSync(join(dir, 'ascii_runtime_measurements'), '')
    try {
      const agent = spawn(
        process.execPath,
        [
          join(ROOT, 'bin/keylime.js'),
          'push-agent',
          '--registrar-url',
          `http://127.0.0.1:${registrarPort}`,
          // nothing listens there: readiness is about registration, attestation is retried for ever
          '--verifier-url',
          `https://127.0.0.1:${await freePort()}`,
          '--ca-certificate',
          swtpmLocalCaCertificates()[0] as string,
        ],
        {
          env: {
            ...process.env,
            KEYLIME_FROM_SOURCE: '1',
            KEYLIME_DIR: dir,
            KEYLIME_AGENT_KEYLIME_DIR: dir,
            KEYLIME_AGENT_UUID: 'd432fbb3-d2f1-4a97-9ef7-75bd81c00000',
            KEYLIME_AGENT_TPM: swtpm.transport,
            KEYLIME_AGENT_IMA_ML_PATH: join(dir, 'ascii_runtime_measurements'),
            KEYLIME_AGENT_MEASUREDBOOT_ML_PATH: join(dir, 'no-boot-log'),
            NOTIFY_SOCKET: socketPath,
          },
          stdio: ['ignore', 'ignore', 'inherit'],
        },
      )
      children.push(agent)
      const first = await ready
      expect(first.text).toContain('STATUS=push agent registered and activated')
      expect(await first.checked).toEqual([{ agent_id: 'd432fbb3-d2f1-4a97-9ef7-75bd81c00000', active: 1 }])
      agent.kill('SIGTERM')
      expect(await new Promise((r) => agent.once('exit', r))).toBe(0)
    } finally {
      await swtpm.stop()
    }
  }, 90_000)
})

describe('notifySystemdReady', () => {
  it('does nothing outside systemd; a socket nobody reads is logged, never thrown', async () => {
    const { notifySystemdReady } = await import('../../src/common/systemd.ts')
    const lines: { msg: string; stderr?: string }[] = []
    const log = {
      error: (o: { stderr: string }, msg: string) => lines.push({ msg, stderr: o.stderr }),
      debug: (_o: unknown, msg: string) => lines.push({ msg }),
    } as unknown as Parameters<typeof notifySystemdReady>[1]
    await notifySystemdReady('x', log, {})
    expect(lines).toEqual([])
    await notifySystemdReady('x', log, { ...process.env, NOTIFY_SOCKET: join(work, 'nobody.sock') })
    expect(lines).toEqual([{ msg: 'systemd readiness notification failed', stderr: expect.any(String) }])
  })
})

describe('Containerfile', () => {
  const text = readFileSync(join(ROOT, 'Containerfile'), 'utf8')
  /** Instructions with continuation lines joined, comments dropped. */
  const instructions = text
    .replace(/\\\n/g, ' ')
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.startsWith('#'))
    .map((l) => {
      const [op = '', ...rest] = l.trim().split(/\s+/)
      return { op: op.toUpperCase(), args: rest.join(' ') }
    })
  const stages: { name: string; body: typeof instructions }[] = []
  for (const i of instructions) {
    if (i.op === 'FROM') stages.push({ name: /\bAS (\S+)/i.exec(i.args)?.[1] ?? '', body: [] })
    else stages[stages.length - 1]?.body.push(i)
  }
  const runtime = stages[stages.length - 1] as (typeof stages)[0]

  it('dockerfile-utils (the Docker language server linter) reports nothing', async () => {
    const { validate } = await import('dockerfile-utils')
    expect(validate(text).map((d) => `${d.range.start.line + 1}: ${d.message}`)).toEqual([])
    // the linter is live: a deprecated instruction is reported
    expect(validate(`${text}\nMAINTAINER someone\n`).length).toBeGreaterThan(0)
  })

  it('is multi-stage; the runtime stage holds only the installed package, runs unprivileged, checks its health', () => {
    expect(stages.map((s) => s.name)).toEqual(['build', 'install', 'runtime'])
    // nothing of the build reaches the runtime but the folder the install stage filled from the packed tarball
    const copies = runtime.body.filter((i) => i.op === 'COPY')
    expect(copies.map((c) => c.args)).toEqual(['--from=install /opt/keylime /opt/keylime'])
    expect(runtime.body.some((i) => /npm (ci|install)|tsx|--include=dev/.test(i.args))).toBe(false)
    const user = runtime.body.filter((i) => i.op === 'USER').at(-1)?.args ?? ''
    expect(user).toMatch(/^[1-9]\d*:[1-9]\d*$/)
    expect(runtime.body.some((i) => i.op === 'RUN' && i.args.includes(`--uid ${user.split(':')[0]}`))).toBe(
      true,
    )
    expect(runtime.body.find((i) => i.op === 'ENTRYPOINT')?.args).toBe('["keylime"]')
    expect(runtime.body.find((i) => i.op === 'HEALTHCHECK')?.args).toContain('/healthz')
  })

  it('installs the packed package with the script .ci/run exercises', () => {
    const install = stages.find((s) => s.name === 'install')
    expect(install?.body.map((i) => i.args)).toContain(
      'sh packaging/install-packed.sh /pkg/keylime-ts-*.tgz /opt/keylime',
    )
    expect(stages[0]?.body.some((i) => i.args.includes('npm pack --pack-destination /pkg'))).toBe(true)
    const ci = readFileSync(join(ROOT, '.ci/run'), 'utf8')
    expect(ci).toMatch(/packaging\/install-packed\.sh" \.\/keylime-ts-\*\.tgz \./)
    expect(readFileSync(join(ROOT, 'packaging/install-packed.sh'), 'utf8')).toMatch(/npm install --omit=dev/)
  })

  it('its HEALTHCHECK command answers 0 against a live probe listener and 1 without one', async () => {
    const { startProbeListener, boundPort } = await import('../../src/api/server.ts')
    const exec = JSON.parse(
      /CMD (\[.*\])$/.exec(runtime.body.find((i) => i.op === 'HEALTHCHECK')?.args ?? '')?.[1] ?? '[]',
    ) as string[]
    const probe = await startProbeListener({
      host: '127.0.0.1',
      port: 0,
      readiness: async () => ({ ok: true }),
    })
    const port = boundPort(probe)
    const withPort = exec.map((a) => a.replace('127.0.0.1:9090', `127.0.0.1:${port}`))
    expect(withPort[0]).toBe('node')
    // asynchronously: the listener answers from this process's event loop
    const status = () =>
      new Promise<number | null>((done) => {
        const c = spawn(process.execPath, withPort.slice(1), { stdio: 'ignore' })
        c.once('exit', (code) => done(code))
      })
    expect(await status()).toBe(0)
    await probe.close()
    expect(await status()).toBe(1)
  })
})
