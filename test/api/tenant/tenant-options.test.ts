/**
 * `keylime tenant` options of upstream's `keylime_tenant` (keylime-config-and-cli.md §4), run in-process against
 * real servers over mTLS: a registrar and two verifiers sharing one database, and a plain HTTP server that serves
 * policies, allowlists, keys and GPG signatures. Covers the policy sources (`--runtime-policy-url`, `--allowlist[-url]`,
 * `--exclude`, `--allowlist-name`, `--mb-policy default`), the deprecated verification keys
 * (`--signature-verification-key*`, GPG-checked), the default UUID, the verifier lookup of `delete`, and the output
 * lines scripts parse.
 */
import { execFileSync } from 'node:child_process'
import { createHash, generateKeyPairSync } from 'node:crypto'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { Kysely, SqliteDialect } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type SimFleet, startSimFleet } from '../../../bench/fleet-agents.ts'
import { boundPort, type KeylimeServer, tlsServerOptions } from '../../../src/api/server.ts'
import { openDatabase } from '../../../src/db/database.ts'
import { type RegistrarDatabase, RegistrarRepository } from '../../../src/db/registrar-repository.ts'
import { migrateVerifierDatabase, type VerifierDatabase } from '../../../src/db/verifier-repository.ts'
import { ImaKeyring, parseKeyringJson, parseRuntimePolicy } from '../../../src/evidence/ima/index.ts'
import { buildRegistrarApp } from '../../../src/registrar/app.ts'
import { RegistrarService } from '../../../src/registrar/registrar-service.ts'
import { buildVerifierApp } from '../../../src/verifier/app.ts'
import { DEFAULT_VERIFIER_OPTIONS } from '../../../src/verifier/options.ts'
import { VerifierService } from '../../../src/verifier/verifier-service.ts'
import { runKeylime } from '../../helpers/cli.ts'
import { runtimePolicyJson } from '../../helpers/runtime-policy.ts'
import { enrollBody, silentLog } from '../../unit/verifier/harness.ts'
import { makeTestPki } from '../registrar/tls-material.ts'

let dir: string
let fleet: SimFleet
let verifierDb: Kysely<VerifierDatabase>
let registrarDb: Kysely<RegistrarDatabase>
const verifiers: { id: string; service: VerifierService; app: KeylimeServer }[] = []
let registrar: KeylimeServer
let files: Server
let filesUrl: string
const served = new Map<string, { status: number; body: string | Buffer; location?: string }>()
let conf: string
let gpgHome: string

const sha256 = (b: string | Buffer) => createHash('sha256').update(b).digest('hex')
const tenant = (...args: string[]) => runKeylime(['tenant', '--config', conf, ...args])
const agentId = (i: number) => (fleet.agents[i] as SimFleet['agents'][number]).id

const POLICY = runtimePolicyJson({ '/usr/bin/ls': ['b'.repeat(64)] })

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kl-tenant-opts-'))
  fleet = await startSimFleet({ count: 3, shareKeys: true })
  const pki = makeTestPki()
  const tlsDir = join(dir, 'cv_ca')
  mkdirSync(tlsDir)
  writeFileSync(join(tlsDir, 'cacert.crt'), pki.caCert)
  writeFileSync(join(tlsDir, 'client-cert.crt'), pki.clientCert)
  writeFileSync(join(tlsDir, 'client-private.pem'), pki.clientKey)
  const https = tlsServerOptions({
    certPem: pki.serverCert,
    keyPem: pki.serverKey,
    trustedClientCaPems: [pki.caCert],
  }) as Record<string, unknown>

  // two verifiers of one deployment (one database), with different verifier ids
  verifierDb = new Kysely<VerifierDatabase>({
    dialect: new SqliteDialect({ database: new Database(':memory:') }),
  })
  await migrateVerifierDatabase(verifierDb)
  for (const id of ['va', 'vb']) {
    const service = new VerifierService({
      db: verifierDb,
      options: { ...DEFAULT_VERIFIER_OPTIONS, verifierId: id, enableAgentMtls: false },
      log: silentLog,
      clientTls: null,
      leaseAddress: id,
    })
    // the attestation loop is not started: these tests look at what the tenant stores and deletes
    const app = await buildVerifierApp({ service, https })
    await app.listen({ host: '127.0.0.1', port: 0 })
    verifiers.push({ id, service, app })
  }

  registrarDb = await openDatabase<RegistrarDatabase>('sqlite', {
    dataDir: dir,
    name: 'reg_data',
    migrations: 'registrar',
  })
  // a registered and activated agent, as the registrar keeps it (push-model enrolment reads only this record)
  for (let i = 0; i < 3; i++) {
    const ak = (fleet.agents[i] as SimFleet['agents'][number]).quoter.akTpm
    await registrarDb
      .insertInto('registrarmain')
      .values({
        agent_id: agentId(i),
        aik_tpm: ak,
        ek_tpm: ak,
        ekcert: null,
        ek_ca_chain: null,
        iak_tpm: null,
        idevid_tpm: null,
        iak_cert: null,
        idevid_cert: null,
        mtls_cert: 'disabled',
        ip: null,
        port: null,
        key: 'k',
        active: 1,
        regcount: 1,
        virtual: 0,
        provider_keys: null,
      })
      .execute()
  }
  registrar = buildRegistrarApp({
    service: new RegistrarService({ repo: new RegistrarRepository(registrarDb) }),
    https: https as never,
  })
  await registrar.listen({ host: '127.0.0.1', port: 0 })

  files = createServer((req, res) => {
    const f = served.get(req.url ?? '')
    if (!f) {
      res.writeHead(404).end('no such file')
      return
    }
    res.writeHead(f.status, f.location ? { location: f.location } : {}).end(f.body)
  })
  await new Promise<void>((r) => files.listen(0, '127.0.0.1', r))
  filesUrl = `http://127.0.0.1:${(files.address() as AddressInfo).port}`

  writeFileSync(
    join(dir, 'allowlist.txt'),
    `${'c'.repeat(64)}  /usr/bin/cat\n${'d'.repeat(64)} /usr/lib/with space\n${'f'.repeat(64)} %keyring:.ima\nonly-a-digest\n`,
  )
  const mbRefstate = join(dir, 'refstate.json')
  writeFileSync(mbRefstate, JSON.stringify({ scrtm_and_bios: [] }))
  conf = join(dir, 'tenant.conf')
  writeFileSync(
    conf,
    [
      '[tenant]',
      'verifier_ip = 127.0.0.1',
      `verifier_port = ${boundPort((verifiers[0] as (typeof verifiers)[number]).app)}`,
      'registrar_ip = 127.0.0.1',
      `registrar_port = ${boundPort(registrar)}`,
      `tls_dir = ${tlsDir}`,
      `mb_refstate = ${mbRefstate}`,
      'retry_interval = 0.1',
      'exponential_backoff = False',
      'max_retries = 5',
      // the simulated agents have no EK certificate; EK checks have tests of their own
      'require_ek_cert = False',
      '',
    ].join('\n'),
  )

  // a GPG key that signs IMA verification keys
  gpgHome = mkdtempSync(join(tmpdir(), 'kl-gpg-'))
  const gpg = (...args: string[]) =>
    execFileSync('gpg', ['--homedir', gpgHome, '--batch', ...args], { stdio: 'pipe', timeout: 30_000 })
  gpg('--passphrase', '', '--quick-gen-key', 'Keylime test <test@example.org>', 'ed25519', 'sign', 'never')
  writeFileSync(join(dir, 'gpg-public.asc'), gpg('--armor', '--export', 'test@example.org'))
}, 60_000)

afterAll(async () => {
  await Promise.allSettled([...verifiers.map((v) => v.app.close()), registrar?.close()])
  await new Promise((r) => files?.close(r))
  await verifierDb?.destroy()
  await registrarDb?.destroy()
  await fleet?.close()
  try {
    execFileSync('gpgconf', ['--homedir', gpgHome, '--kill', 'gpg-agent'], { stdio: 'pipe', timeout: 30_000 })
  } catch {
    // no agent was started
  }
  rmSync(gpgHome, { recursive: true, force: true })
  rmSync(dir, { recursive: true, force: true })
})

/** An EC public key (PEM) as IMA verification keys are given, and its GPG detached signature. */
function signedKey(name: string): { key: string; sig: string; keyPem: string } {
  const keyPem = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).publicKey.export({
    type: 'spki',
    format: 'pem',
  }) as string
  const key = join(dir, `${name}.pem`)
  writeFileSync(key, keyPem)
  const sig = `${key}.asc`
  execFileSync(
    'gpg',
    [
      '--homedir',
      gpgHome,
      '--batch',
      '--pinentry-mode',
      'loopback',
      '--passphrase',
      '',
      '--armor',
      '--detach-sign',
      '-o',
      sig,
      key,
    ],
    { stdio: 'pipe', timeout: 30_000 },
  )
  return { key, sig, keyPem }
}

const storedPolicy = async (name: string) => verifiers[0]?.service.repo.getAllowlist(name)

describe('runtime policy sources', () => {
  it('--runtime-policy-url downloads the policy and checks its SHA-256', async () => {
    served.set('/policy.json', { status: 200, body: POLICY })
    const url = `${filesUrl}/policy.json`
    const ok = await tenant(
      '-c',
      'addruntimepolicy',
      '--runtime-policy-name',
      'from-url',
      '--runtime-policy-url',
      url,
      '--runtime-policy-checksum',
      sha256(POLICY),
    )
    expect(ok.code, ok.err).toBe(0)
    expect(ok.err).toContain(`Downloading IMA policy from ${url}`)
    expect((await storedPolicy('from-url'))?.ima_policy).toBe(POLICY)

    const wrong = await tenant(
      '-c',
      'addruntimepolicy',
      '--runtime-policy-name',
      'bad-sum',
      '--runtime-policy-url',
      url,
      '--runtime-policy-checksum',
      'ab'.repeat(32),
    )
    expect(wrong.code).toBe(2)
    expect(wrong.err).toMatch(/runtime policy checksum mismatch/)
    expect(await storedPolicy('bad-sum')).toBeUndefined()

    const noSum = await tenant(
      '-c',
      'addruntimepolicy',
      '--runtime-policy-name',
      'x',
      '--runtime-policy-url',
      url,
    )
    expect(noSum.code).toBe(2)
    expect(noSum.err).toContain(
      '--runtime_policy-url must have --runtime_policy-checksum to verifier integrity',
    )

    const missing = await tenant(
      '-c',
      'addruntimepolicy',
      '--runtime-policy-name',
      'x',
      '--runtime-policy-url',
      `${filesUrl}/nope.json`,
      '--runtime-policy-checksum',
      sha256(POLICY),
    )
    expect(missing.code).toBe(1)
    expect(missing.err).toContain(
      `Downloading IMA policy (${filesUrl}/nope.json) failed with status code 404!`,
    )

    // redirects are not followed, as upstream (a redirect could lead anywhere the checksum was not made for)
    served.set('/moved.json', { status: 302, body: '', location: '/policy.json' })
    const moved = await tenant(
      '-c',
      'addruntimepolicy',
      '--runtime-policy-name',
      'x',
      '--runtime-policy-url',
      `${filesUrl}/moved.json`,
      '--runtime-policy-checksum',
      sha256(POLICY),
    )
    expect(moved.err).toContain('failed with status code 302!')

    const both = await tenant(
      '-c',
      'addruntimepolicy',
      '--runtime-policy-name',
      'x',
      '--runtime-policy',
      join(dir, 'p.json'),
      '--runtime-policy-url',
      url,
    )
    expect(both.code).toBe(2)
    expect(both.err).toContain(
      '--runtime_policy and --runtime_policy-url cannot be specified at the same time',
    )
  })

  it('--allowlist and --exclude are converted to a runtime policy; --allowlist-name names it', async () => {
    const list = join(dir, 'allowlist.txt')
    const exclude = join(dir, 'exclude.txt')
    writeFileSync(exclude, '# temporary files\n/tmp/.*\n\n/var/log/.*\n')
    const r = await tenant(
      '-c',
      'addallowlist',
      '--allowlist-name',
      'legacy',
      '--allowlist',
      list,
      '--exclude',
      exclude,
    )
    expect(r.code, r.err).toBe(0)
    expect(r.err).toMatch(/--allowlist is deprecated/)
    const stored = parseRuntimePolicy((await storedPolicy('legacy'))?.ima_policy as string)
    expect(stored.digests).toEqual({
      '/usr/bin/cat': ['c'.repeat(64)],
      '/usr/lib/with space': ['d'.repeat(64)],
    })
    expect(stored.keyrings).toEqual({ '.ima': ['f'.repeat(64)] })
    // as upstream: a line without a path is reported and skipped
    expect(r.err).toContain('Line #3 in Allowlist does not consist of hash and file path: only-a-digest')
    expect(stored.excludes).toEqual(['/tmp/.*', '/var/log/.*'])
    expect(stored.meta.generator).toBe(3)
    // upstream prints the verifier's answer as a Python dict
    const listed = await tenant('-c', 'listruntimepolicy')
    expect(listed.out).toMatch(
      /^list command response: 200\.\n\{'code': 200, 'status': 'Success', 'results': \{'runtimepolicy names': \[.*'legacy'.*\]\}\}\n$/,
    )
  })

  it('--allowlist-url takes upstream\'s JSON allowlist ("hashes")', async () => {
    served.set('/allowlist.json', {
      status: 200,
      body: JSON.stringify({ meta: { version: 1 }, hashes: { '/usr/bin/env': ['e'.repeat(64)] } }),
    })
    const r = await tenant(
      '-c',
      'addruntimepolicy',
      '--runtime-policy-name',
      'legacy-url',
      '--allowlist-url',
      `${filesUrl}/allowlist.json`,
    )
    expect(r.code, r.err).toBe(0)
    const stored = parseRuntimePolicy((await storedPolicy('legacy-url'))?.ima_policy as string)
    expect(stored.digests).toEqual({ '/usr/bin/env': ['e'.repeat(64)] })
  })

  it('refuses what upstream refuses, in its words', async () => {
    const list = join(dir, 'allowlist.txt')
    for (const [args, message] of [
      [
        ['-c', 'addruntimepolicy', '--runtime-policy-name', 'n'],
        '--allowlist or --runtime_policy is required to add a runtime policy',
      ],
      [
        ['-c', 'addruntimepolicy', '--runtime-policy-name', 'n', '--runtime-policy', list, '--exclude', list],
        '--exclude cannot be used without an --allowlist',
      ],
      [
        [
          '-c',
          'addruntimepolicy',
          '--runtime-policy-name',
          'n',
          '--allowlist',
          list,
          '--allowlist-url',
          `${filesUrl}/a`,
        ],
        '--allowlist and --allowlist-url cannot be specified at the same time',
      ],
      [
        [
          '-c',
          'addruntimepolicy',
          '--runtime-policy-name',
          'n',
          '--allowlist',
          list,
          '--runtime-policy-checksum',
          'ab',
        ],
        '--runtime_policy-checksum must have either --runtime_policy or --runtime_policy-url',
      ],
    ] as const) {
      const r = await tenant(...args)
      expect(r.code, args.join(' ')).toBe(2)
      expect(r.err).toContain(message)
    }
    // an allowlist that is already a runtime policy is pointed to the right option
    const policyFile = join(dir, 'policy-as-allowlist.json')
    writeFileSync(policyFile, POLICY)
    const r = await tenant('-c', 'addruntimepolicy', '--runtime-policy-name', 'n', '--allowlist', policyFile)
    expect(r.code).toBe(2)
    expect(r.err).toMatch(/already a runtime policy: pass it with --runtime-policy/)
  })
})

describe('add --push-model with the deprecated and default policy options', () => {
  it('sends the GPG-checked verification keys as ima_sign_verification_keys, the allowlist and mb_refstate', async () => {
    const local = signedKey('ima-key-local')
    const remote = signedKey('ima-key-remote')
    served.set('/ima-key.pem', { status: 200, body: remote.keyPem })
    served.set('/ima-key.pem.asc', { status: 200, body: readFileSync(remote.sig) })
    const list = join(dir, 'allowlist.txt')
    const r = await tenant(
      '-c',
      'add',
      '-u',
      agentId(0),
      '--push-model',
      // a pull-mode verifier needs an address even for an agent it does not poll here (its loop is not started)
      '-t',
      '127.0.0.1',
      '-tp',
      String(fleet.port),
      '--allowlist',
      list,
      '--sign_verification_key',
      local.key,
      '--signature-verification-key-sig',
      local.sig,
      '--signature-verification-key-sig-key',
      join(dir, 'gpg-public.asc'),
      '--signature-verification-key-url',
      `${filesUrl}/ima-key.pem`,
      '--signature-verification-key-sig-url',
      `${filesUrl}/ima-key.pem.asc`,
      '--signature-verification-key-sig-url-key',
      join(dir, 'gpg-public.asc'),
      '--mb-policy',
      'default',
    )
    expect(r.code, r.err).toBe(0)
    expect(r.err).toContain(`Signature verification on ${local.key} was successful`)
    expect(r.err).toContain(`Signature verification on ${filesUrl}/ima-key.pem was successful`)
    const row = await verifiers[0]?.service.repo.getAgent(agentId(0))
    const ring = ImaKeyring.fromJSON(parseKeyringJson(row?.ima_sign_verification_keys as string, 'keys'))
    expect(ring.size).toBe(2)
    // the IMA PCR and the measured-boot PCRs are quoted
    const mask = BigInt(JSON.parse(row?.tpm_policy as string).mask)
    expect(mask & (1n << 10n)).toBe(1n << 10n)
    expect(mask & 1n).toBe(1n)
    const mb = await verifiers[0]?.service.repo.getMbPolicyById(row?.mb_policy_id as number)
    expect(JSON.parse(mb?.mb_policy as string)).toEqual({ scrtm_and_bios: [] })
    const rt = await verifiers[0]?.service.repo.getAllowlistById(row?.ima_policy_id as number)
    expect(parseRuntimePolicy(rt?.ima_policy as string).digests['/usr/bin/cat']).toEqual(['c'.repeat(64)])
  })

  it('refuses a key whose GPG signature does not match, and a signature without its GPG key', async () => {
    const a = signedKey('ima-key-a')
    const b = signedKey('ima-key-b')
    const bad = await tenant(
      '-c',
      'add',
      '-u',
      agentId(1),
      '--push-model',
      '--signature-verification-key',
      a.key,
      '--signature-verification-key-sig',
      b.sig,
      '--signature-verification-key-sig-key',
      join(dir, 'gpg-public.asc'),
    )
    expect(bad.code).toBe(1)
    expect(bad.err).toMatch(/signature verification of the IMA file signing key .* failed/)
    const noGpgKey = await tenant(
      '-c',
      'add',
      '-u',
      agentId(1),
      '--push-model',
      '--signature-verification-key',
      a.key,
      '--signature-verification-key-sig',
      a.sig,
    )
    expect(noGpgKey.code).toBe(2)
    expect(noGpgKey.err).toContain(`A gpg key is missing for key signature file '${a.sig}'`)
    const notAKey = await tenant(
      '-c',
      'add',
      '-u',
      agentId(1),
      '--push-model',
      '--signature-verification-key',
      join(dir, 'allowlist.txt'),
    )
    expect(notAKey.code).toBe(2)
    expect(notAKey.err).toMatch(/is not a file with a key/)
    expect(await verifiers[0]?.service.repo.getAgent(agentId(1))).toBeUndefined()
  })
})

describe('status output, default UUID and delete across verifiers', () => {
  it("prints upstream's lines: Agent Info, Bulk Agent Info, Agent list", async () => {
    const port = boundPort((verifiers[0] as (typeof verifiers)[number]).app)
    const cv = await tenant('-c', 'cvstatus', '-u', agentId(0))
    expect(cv.code, cv.err).toBe(0)
    expect(cv.out).toContain(
      `Agent Info from Verifier (127.0.0.1:${port}):\n{"${agentId(0)}": {"operational_state": "Start", `,
    )
    const bulk = await tenant('-c', 'bulkinfo')
    expect(bulk.out).toMatch(
      new RegExp(`^Bulk Agent Info:\\n\\{"${agentId(0)}": \\{"operational_state": "Start", `),
    )
    const list = await tenant('-c', 'cvlist')
    expect(list.out).toBe(
      `Agent list from Verifier (127.0.0.1:${port}) retrieved: \n{"uuids": [["${agentId(0)}"]]}\n`,
    )
    const reg = await tenant('-c', 'regstatus', '-u', agentId(2))
    expect(reg.out).toContain(
      `Agent Info from Registrar (127.0.0.1:${boundPort(registrar)}):\n{"${agentId(2)}": {`,
    )
    expect(reg.out).toContain('"operational_state": "Registered"')
  })

  it("without -u uses upstream's default UUID, with a warning", async () => {
    const r = await tenant('-c', 'cvstatus')
    expect(r.err).toContain('Using default UUID d432fbb3-d2f1-4a97-9ef7-75bd81c00000')
    expect(r.code).toBe(1)
    expect(r.err).toContain('agent d432fbb3-d2f1-4a97-9ef7-75bd81c00000 is not enrolled at the verifier')
  })

  it('delete finds the verifier the agent is enrolled at; -nvc asks only the configured one', async () => {
    const [va, vb] = verifiers as [(typeof verifiers)[number], (typeof verifiers)[number]]
    const id = agentId(2)
    await vb.service.enrol(
      id,
      enrollBody(fleet.agents[2] as SimFleet['agents'][number], fleet.port, {
        verifier_ip: '127.0.0.1',
        verifier_port: boundPort(vb.app),
      }) as never,
    )
    // reactivate goes to the verifier the record names, which then holds the agent's lease
    await vb.service.repo.setState(id, 10)
    const reactivated = await tenant('-c', 'reactivate', '-u', id)
    expect(reactivated.code, reactivated.err).toBe(0)
    expect(reactivated.err).toContain(`agent ${id} is enrolled at verifier vb`)
    const row = await vb.service.repo.getAgent(id)
    expect([row?.operational_state, row?.lease_holder]).toEqual([1, vb.service.leaseHolder])

    // the configured verifier (va) sees the record but may not delete an agent of verifier vb
    const refused = await tenant('-c', 'delete', '-u', id, '-nvc')
    expect(refused.code).toBe(1)
    expect(refused.err).toContain(`agent ${id} is enrolled at verifier vb (127.0.0.1:${boundPort(vb.app)})`)
    expect(await va.service.repo.getAgent(id)).toBeDefined()

    const deleted = await tenant('-c', 'delete', '-u', id)
    expect(deleted.code, deleted.err).toBe(0)
    expect(deleted.err).toContain(`agent ${id} is enrolled at verifier vb (127.0.0.1:${boundPort(vb.app)})`)
    expect(deleted.out).toBe(`Agent ${id} deleted from the CV\n`)
    expect(await va.service.repo.getAgent(id)).toBeUndefined()

    const again = await tenant('-c', 'delete', '-u', id)
    expect(again.code).toBe(0)
    expect(again.out).toBe(`Agent ${id} is already absent from the CV\n`)
  })

  it('update enrols the agent again at the verifier it was found at, not at the configured one', async () => {
    const [va, vb] = verifiers as [(typeof verifiers)[number], (typeof verifiers)[number]]
    const id = agentId(2)
    const vbPort = boundPort(vb.app)
    await vb.service.enrol(
      id,
      enrollBody(fleet.agents[2] as SimFleet['agents'][number], fleet.port, {
        verifier_ip: '127.0.0.1',
        verifier_port: vbPort,
      }) as never,
    )
    // push model: the agent itself is not contacted; a pull-mode verifier still wants an address
    const update = (...extra: string[]) =>
      tenant('-c', 'update', '-u', id, '--push-model', '-t', '127.0.0.1', '-tp', String(fleet.port), ...extra)
    const updated = await update()
    expect(updated.code, updated.err).toBe(0)
    expect(updated.err).toContain(`agent ${id} is enrolled at verifier vb (127.0.0.1:${vbPort})`)
    const row = await vb.service.repo.getAgent(id)
    expect([row?.verifier_id, row?.verifier_ip, row?.verifier_port]).toEqual(['vb', '127.0.0.1', vbPort])

    // -nvc: deleted and added at the configured verifier only, which refuses to delete another verifier's agent
    const refused = await update('-nvc')
    expect(refused.code).toBe(1)
    expect(refused.err).toContain(`agent ${id} is enrolled at verifier vb (127.0.0.1:${vbPort})`)
    expect((await va.service.repo.getAgent(id))?.verifier_id).toBe('vb')
    await vb.service.repo.deleteAgent(id)
  })
})
