/**
 * The CLI's one error path, command by command: exact command line, exit status and the one line on stderr
 * (`keylime <command>: <what failed>: <why> (<what to do>)`), no stack unless --debug. Most cases run the real
 * command tree in-process (`run`, as bin/keylime.js does); the services and --debug run as processes, to see
 * everything they print.
 */
import { spawnSync } from 'node:child_process'
import { createHash, generateKeyPairSync } from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ensureTlsDir } from '../../src/crypto/ca.ts'
import { imaNgEntryFor } from '../../src/devtools/ima-writer.ts'
import { runKeylime as keylime } from '../helpers/cli.ts'
import { asciiImaList, generatedImaEntries } from '../helpers/ima-lists.ts'
import { freePort, startSwtpm } from '../helpers/swtpm.ts'

const ROOT = resolve(import.meta.dirname, '../..')
const dir = mkdtempSync(join(tmpdir(), 'kl-cli-errors-'))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

/** Runs `keylime ...args` as a process (from source, as every test does). */
function keylimeProcess(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [join(ROOT, 'bin/keylime.js'), ...args], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 60_000,
  })
  return { out: r.stdout, err: r.stderr, code: r.status }
}

/** The stderr lines that are not structured log lines (the services log JSON to stdout/stderr). */
const messageLines = (stderr: string) => stderr.split('\n').filter((l) => l !== '' && !l.startsWith('{'))

const write = (name: string, text: string | Buffer) => {
  const path = join(dir, name)
  writeFileSync(path, text)
  return path
}

describe('configuration and start-up errors', () => {
  it('keylime agent -c <missing file>: 2, one line naming the file', async () => {
    const missing = join(dir, 'nonexistent.toml')
    const r = await keylime(['agent', '-c', missing])
    expect(r.code).toBe(2)
    expect(r.err).toBe(
      `keylime agent: config file not found: ${missing} (fix agent.conf or the KEYLIME_AGENT_* variable it names)\n`,
    )
  })

  it('keylime agent -c <malformed TOML>: 2, the file and what is wrong', async () => {
    const bad = write('bad.toml', '[agent\nport = ')
    const r = await keylime(['agent', '-c', bad])
    expect(r.code).toBe(2)
    expect(r.err).toMatch(new RegExp(`^keylime agent: ${bad}: invalid TOML: .*\\(fix agent\\.conf.*\\)\\n$`))
  })

  it('keylime agent with an unknown run_as user: 2, says how to opt out', async () => {
    const conf = write('run-as.toml', '[agent]\nrun_as = "no-such-user-kl:tss"\n')
    const r = await keylime(['agent', '-c', conf])
    expect(r.code).toBe(2)
    expect(r.err).toBe(
      'keylime agent: run_as: user \'no-such-user-kl\' does not exist on this system (fix the account or permissions it names, or set run_as = "" in agent.conf (--run-as "") to keep running as the starting user)\n',
    )
  })

  it('keylime agent without a TPM device: 4, names the device and what to check', async () => {
    const conf = write(
      'no-tpm.toml',
      `[agent]\nrun_as = ""\ntpm = "device:${dir}/tpmrm0"\nkeylime_dir = "${dir}/agent"\n`,
    )
    mkdirSync(join(dir, 'agent'), { recursive: true })
    const r = await keylime(['agent', '-c', conf])
    expect(r.code).toBe(4)
    expect(messageLines(r.err)).toEqual([
      expect.stringMatching(
        new RegExp(
          `^keylime agent: cannot open TPM device ${dir}/tpmrm0: .*\\(check the TPM transport \\(--tpm`,
        ),
      ),
    ])
  })

  it('keylime agent with the registrar unreachable after its retries: 4, printed once', async () => {
    const swtpm = await startSwtpm()
    try {
      const port = await freePort()
      const agentDir = join(dir, 'agent-noreg')
      mkdirSync(agentDir)
      writeFileSync(join(agentDir, 'ima'), '')
      const conf = write(
        'no-registrar.toml',
        [
          '[agent]',
          'run_as = ""',
          `tpm = "${swtpm.transport}"`,
          `keylime_dir = "${agentDir}"`,
          `registrar_port = ${port}`,
          'port = 0',
          'exponential_backoff_max_retries = 1',
          'exponential_backoff_initial_delay = 100',
          `ima_ml_path = "${agentDir}/ima"`,
          `measuredboot_ml_path = "${agentDir}/none"`,
          '',
        ].join('\n'),
      )
      const r = keylimeProcess(['agent', '-c', conf], { KEYLIME_LOG_LEVEL: 'silent' })
      expect([r.code, r.err]).toEqual([
        4,
        `keylime agent: registrar unreachable: GET /version: connection refused by 127.0.0.1:${port} (check registrar_ip/registrar_port in agent.conf and that the registrar is running)\n`,
      ])
    } finally {
      await swtpm.stop()
    }
  })

  it('keylime tenant --config <missing> -c cvlist: 2', async () => {
    const r = await keylime(['tenant', '--config', join(dir, 'nonexistent.conf'), '-c', 'cvlist'])
    expect([r.code, r.err]).toEqual([
      2,
      `keylime tenant: config file not found: ${dir}/nonexistent.conf (fix the flag, configuration file or KEYLIME_* variable it names)\n`,
    ])
  })

  it('keylime tenant with a malformed INI: 2, file and line', async () => {
    const bad = write('bad-tenant.conf', '[tenant]\nthis is not an option\n')
    const r = await keylime(['tenant', '--config', bad, '-c', 'cvlist'])
    expect(r.code).toBe(2)
    expect(r.err).toMatch(new RegExp(`^keylime tenant: ${bad}:2: expected .*\\n$`))
  })

  it('keylime verifier --port 99999: 2, printed once, no stack', () => {
    const r = keylimeProcess(['verifier', '--port', '99999'], { KEYLIME_DIR: join(dir, 'v1') })
    expect(r.code).toBe(2)
    expect(messageLines(r.err)).toEqual([
      'keylime verifier: reading the configuration: --port: 99999 is out of range (0-65535) (fix the flag, configuration file or KEYLIME_* variable it names)',
    ])
  })

  it('keylime verifier with PostgreSQL refusing connections: 4, printed once, says connection refused', async () => {
    const port = await freePort()
    const r = keylimeProcess(['verifier', '--database-url', `postgresql://postgres@127.0.0.1:${port}/test`], {
      KEYLIME_DIR: join(dir, 'v2'),
    })
    expect(r.code).toBe(4)
    const lines = messageLines(r.err)
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(
      new RegExp(
        `^keylime verifier: starting: .*connection refused by 127\\.0\\.0\\.1:${port} \\(check database_url, and that the database server runs and accepts this user\\)$`,
      ),
    )
  })

  it('keylime verifier with MariaDB refusing connections: 4, printed once, says connection refused', async () => {
    const port = await freePort()
    const r = keylimeProcess(
      ['verifier', '--database-url', `mysql+pymysql://root@127.0.0.1:${port}/keylime`],
      {
        KEYLIME_DIR: join(dir, 'v3'),
      },
    )
    expect(r.code).toBe(4)
    const lines = messageLines(r.err)
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(
      new RegExp(
        `^keylime verifier: starting: .*connection refused by 127\\.0\\.0\\.1:${port} \\(check database_url, and that the database server runs and accepts this user\\)$`,
      ),
    )
  })

  it('--debug adds the stack (with TypeScript file names) after the one line', () => {
    const r = keylimeProcess(['eventlog', join(dir, 'missing.bin'), '--debug'])
    expect(r.code).toBe(2)
    const [first, ...rest] = r.err.split('\n')
    expect(first).toBe(
      `keylime eventlog: reading ${dir}/missing.bin: no such file or directory: ${dir}/missing.bin (check the path)`,
    )
    expect(rest.join('\n')).toMatch(/at .*src\/cli\/commands\/eventlog\.ts/)
  })
})

describe('options the services do not implement are refused at start-up', () => {
  it.each([
    [
      ['verifier', '--enabled-revocation-notifications', "['agent','zeromq']"],
      {},
      'keylime verifier: reading the configuration: [revocations] enabled_revocation_notifications: ZeroMQ revocation notifications not implemented by Keylime TS; the "agent" and "webhook" channels are implemented (remove the option or set it back to its default)\n',
    ],
    [
      ['verifier'],
      { KEYLIME_VERIFIER_DURABLE_ATTESTATION_IMPORT: 'keylime.da.examples.redis.py' },
      'keylime verifier: reading the configuration: [verifier] durable_attestation_import: durable attestation (persistent store, transparency log, time-stamp authority) not implemented by Keylime TS (remove the option or set it back to its default)\n',
    ],
    [
      ['registrar'],
      { KEYLIME_REGISTRAR_SERVER_KEY_PASSWORD: 'secret' },
      'keylime registrar: reading the configuration: [registrar] server_key_password: password-protected TLS keys not implemented by Keylime TS; unencrypted keys readable only by the keylime user are implemented (remove the option or set it back to its default)\n',
    ],
    [
      ['ca', 'init', '--dir', join(dir, 'ca-refused')],
      { KEYLIME_CA_PASSWORD: 'secret' },
      "keylime ca init: [ca] password: upstream's password-protected private.yml not implemented by Keylime TS; keys in 0600 PEM files are implemented (remove the option or set it back to its default)\n",
    ],
  ])('keylime %j with %j: 2', async (args, env, line) => {
    const empty = write('empty.conf', '')
    const component = args[0] as string
    const r = await keylime(args, {
      KEYLIME_DIR: join(dir, 'refuse'),
      [`KEYLIME_${component.toUpperCase()}_CONFIG`]: empty,
      ...env,
    })
    expect([r.code, r.err]).toEqual([2, line])
  })
})

describe('network errors of the tenant', () => {
  let plainHttp: Server
  let tlsDir: string
  beforeAll(async () => {
    tlsDir = join(dir, 'tenant-tls')
    await ensureTlsDir(tlsDir)
    plainHttp = createServer((_req, res) => res.end('not TLS'))
    await new Promise<void>((r) => plainHttp.listen(0, '127.0.0.1', r))
  })
  afterAll(() => new Promise<void>((r) => plainHttp.close(() => r())))

  it('keylime tenant -c cvlist against a port without TLS: 4, says so and which ports are TLS', async () => {
    const port = (plainHttp.address() as AddressInfo).port
    const conf = write('tenant.conf', '[tenant]\n')
    const r = await keylime([
      'tenant',
      '--config',
      conf,
      '--tls-dir',
      tlsDir,
      '-c',
      'cvlist',
      '--cvport',
      String(port),
    ])
    expect([r.code, r.err]).toEqual([
      4,
      "keylime tenant: verifier list: GET /v2.6/agents/: the server does not speak TLS on that port (check the port: the verifier's HTTPS port is 8881, the registrar's 8891)\n",
    ])
  })

  it('keylime tenant -c cvlist against a closed port: 4, connection refused', async () => {
    const port = await freePort()
    const conf = write('tenant.conf', '[tenant]\n')
    const r = await keylime([
      'tenant',
      '--config',
      conf,
      '--tls-dir',
      tlsDir,
      '-c',
      'cvlist',
      '--cvport',
      String(port),
    ])
    expect([r.code, r.err]).toEqual([
      4,
      `keylime tenant: verifier list: GET /v2.6/agents/: connection refused by 127.0.0.1:${port} (is the service running and listening on that address and port?)\n`,
    ])
  })
})

describe('exit statuses agree between commands', () => {
  it('usage errors from the option parser are 2, with the command named', async () => {
    const r = await keylime(['tpm', 'pcrread', '--bogus'])
    expect([r.code, r.err]).toEqual([
      2,
      "keylime tpm pcrread: unknown option '--bogus' (see keylime tpm pcrread --help)\n",
    ])
    const port = await keylime(['tenant', '-c', 'cvlist', '--cvport', '99999'])
    expect([port.code, port.err]).toEqual([
      2,
      "keylime tenant: option '--cvport <port>' argument '99999' is invalid. \"99999\" is not a port (1-65535) (see keylime tenant --help)\n",
    ])
    const top = await keylime(['frobnicate'])
    expect([top.code, top.err]).toEqual([2, "keylime: unknown command 'frobnicate' (see keylime --help)\n"])
  })

  it('a missing input file is 2 for eventlog, ima replay and policy create alike', async () => {
    const missing = join(dir, 'missing.bin')
    for (const args of [
      ['eventlog', missing],
      ['ima', 'replay', missing],
      ['policy', 'create', 'measured-boot', '-e', missing],
      ['policy', 'create', 'runtime', '-m', missing],
    ]) {
      const r = await keylime(args)
      const command = args.slice(0, args[0] === 'policy' ? 3 : args[0] === 'ima' ? 2 : 1).join(' ')
      expect([r.code, r.err], args.join(' ')).toEqual([
        2,
        `keylime ${command}: reading ${missing}: no such file or directory: ${missing} (check the path)\n`,
      ])
    }
  })

  it('a failed check is 1: a signature that does not verify, a list the policy rejects (naming line and path)', async () => {
    const entries = generatedImaEntries(3)
    const list = write('ima.ascii', asciiImaList(entries))
    const policyPath = join(dir, 'policy.json')
    expect((await keylime(['policy', 'create', 'runtime', '-m', list, '-o', policyPath])).code).toBe(0)
    // A program run after the policy was made.
    const intruder = imaNgEntryFor('/usr/bin/intruder', 'mining')
    const tampered = write('ima-tampered.ascii', asciiImaList([...entries, intruder]))
    const replay = await keylime(['ima', 'replay', '--policy', policyPath, tampered])
    expect(replay.code).toBe(1)
    expect(replay.out).toContain(
      `${tampered}:${entries.length + 1}: /usr/bin/intruder: ima.validation.ima-ng.not_in_allowlist: File not found in allowlist: /usr/bin/intruder`,
    )

    const signer = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
    const other = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
    const key = write('signer.pem', signer.privateKey.export({ type: 'pkcs8', format: 'pem' }))
    const otherPub = write('other.pub', other.publicKey.export({ type: 'spki', format: 'pem' }))
    const signed = join(dir, 'policy.dsse.json')
    expect(
      (await keylime(['policy', 'sign', 'runtime', '-r', policyPath, '-k', key, '-o', signed])).code,
    ).toBe(0)
    const verify = await keylime(['policy', 'verify', 'runtime', '-r', signed, '-k', otherPub])
    expect([verify.code, verify.err]).toEqual([
      1,
      'keylime policy verify runtime: Runtime policy signature verification failed\n',
    ])
  })

  it('ima replay of a file that is not an IMA list: 2, no raw bytes on the terminal', async () => {
    const binary = write(
      'random.bin',
      Buffer.concat([Buffer.from('\x7fELF\x02\x01\x01'), createHash('sha512').update('x').digest()]),
    )
    const r = await keylime(['ima', 'replay', binary])
    expect([r.code, r.err]).toEqual([
      2,
      `keylime ima replay: ${binary}: neither an ASCII nor a binary IMA measurement list (give ascii_runtime_measurements or binary_runtime_measurements)\n`,
    ])
  })
})

describe('small ones', () => {
  it('policy create runtime with no input: 2, names the inputs', async () => {
    const r = await keylime(['policy', 'create', 'runtime'])
    expect([r.code, r.out, r.err]).toEqual([
      2,
      '',
      'keylime policy create runtime: no input: the policy would allow nothing (give an IMA list (-m, alone for the live one), a root filesystem (--rootfs), initrds (--ramdisk-dir), an RPM repository (--local-rpm-repo, --remote-rpm-repo), an allowlist (-a), a base policy (-p) or a signing key (-A))\n',
    ])
  })

  it('demo --quote-interval abc: 2 before anything starts', async () => {
    const r = await keylime(['demo', '--quote-interval', 'abc'])
    expect([r.code, r.err]).toEqual([
      2,
      "keylime demo: option '--quote-interval <seconds>' argument 'abc' is invalid. \"abc\" is not a number of seconds greater than 0 (see keylime demo --help)\n",
    ])
  })

  it('demo --dir on a non-empty folder: 2, with a hint', async () => {
    const used = join(dir, 'used-demo')
    mkdirSync(used)
    writeFileSync(join(used, 'cv_ca'), '')
    const r = await keylime(['demo', '--dir', used])
    expect([r.code, r.err]).toEqual([
      2,
      `keylime demo: --dir ${used} is not empty: the CA and agents of an earlier run would clash (give a new or empty folder, or remove that one)\n`,
    ])
  })

  it('ca pkg of a revoked certificate: 1, refused', async () => {
    const ca = join(dir, 'ca')
    expect((await keylime(['ca', 'init', '--dir', ca])).code).toBe(0)
    expect((await keylime(['ca', 'create', '-n', 'agent-x', '--dir', ca])).code).toBe(0)
    expect((await keylime(['ca', 'revoke', '-n', 'agent-x', '--dir', ca])).code).toBe(0)
    const r = await keylime(['ca', 'pkg', '-n', 'agent-x', '--dir', ca])
    expect(r.code).toBe(1)
    expect(r.err).toMatch(
      /^keylime ca pkg: the certificate of agent-x \(serial 2\) was revoked on \d{4}-\d\d-\d\d \(a revoked certificate is never packaged: move .*agent-x-cert\.crt and its key files away to have a new one issued\)\n$/,
    )
  })

  it('--help of every command group ends with the exit status table', async () => {
    for (const args of [['--help'], ['tenant', '--help'], ['ima', 'replay', '--help'], ['tpm', '--help']]) {
      const r = await keylime(args)
      expect(r.code, args.join(' ')).toBe(0)
      expect(r.out).toContain('2  bad usage or bad input (flags, arguments, files, configuration)')
    }
  })
})
