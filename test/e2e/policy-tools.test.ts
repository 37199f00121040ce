/**
 * `keylime policy` against real inputs made here with the system's own tools: initrds packed by cpio and compressed
 * by gzip/xz/zstd/lz4, RPM packages built by rpmbuild in repositories indexed by createrepo_c (one signed with gpg),
 * served over HTTP with range requests; signatures checked with the verify command and the verifier's own reader.
 */
import { execFileSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import {
  createReadStream,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { unwrapRuntimePolicy } from '../../src/verifier/policy-input.ts'
import { runKeylime as keylime } from '../helpers/cli.ts'
import { runtimePolicyJson } from '../helpers/runtime-policy.ts'

const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex')
let dir: string
/** Runs one of the system's tools; a missing one is named with the packages that bring it (as .ci/run installs). */
function sh(cmd: string, args: string[], opts: { cwd?: string; input?: Buffer } = {}): Buffer {
  try {
    return execFileSync(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], timeout: 60_000, ...opts })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    throw new Error(
      `${cmd} is not installed: these tests build their inputs with the system's tools ` +
        '(apt-get install -y cpio rpm createrepo-c zstd lz4 xz-utils gnupg; .ci/run installs what is missing)',
    )
  }
}

function digestsOf(policyJson: string): Record<string, string[]> {
  return (JSON.parse(policyJson) as { digests: Record<string, string[]> }).digests
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'keylime-policy-tools-'))
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('policy create runtime --rootfs', () => {
  it('hashes every regular file on worker threads, skipping the skip paths, spaces as _', async () => {
    const root = join(dir, 'rootfs')
    const files: Record<string, string> = {}
    for (let i = 0; i < 300; i++) files[`/usr/lib/m${i % 7}/f${i}`] = `content ${i} ${'x'.repeat(i * 37)}`
    files['/etc/with space'] = 'spaced'
    files['/var/log/skipped'] = 'never'
    for (const [p, c] of Object.entries(files)) {
      mkdirSync(join(root, p, '..'), { recursive: true })
      writeFileSync(join(root, p), c)
    }
    symlinkSync('/usr/lib/m0/f0', join(root, 'usr/link'))
    const r = await keylime(['policy', 'create', 'runtime', '--rootfs', root, '--max-workers', '3'])
    expect(r.err).toBe('')
    expect(r.code).toBe(0)
    const expected: Record<string, string[]> = {}
    for (const [p, c] of Object.entries(files))
      if (!p.startsWith('/var/')) expected[p.replaceAll(' ', '_')] = [sha256(c)]
    expect(digestsOf(r.out)).toEqual(expected)
  })
})

describe('policy create runtime -m without a file', () => {
  it('reads the live IMA list, named in the error where the kernel has none', async () => {
    const live = '/sys/kernel/security/ima/ascii_runtime_measurements'
    const r = await keylime(['policy', 'create', 'runtime', '-m'])
    if (statSync(live, { throwIfNoEntry: false })) expect(r.code).toBe(0)
    else expect([r.code, r.err]).toEqual([2, expect.stringContaining(`reading ${live}`)])
  })
})

describe('policy create runtime --ramdisk-dir', () => {
  let boot: string
  const mainFiles = {
    init: '#!/bin/sh\nexec /usr/bin/bash\n',
    'usr/bin/bash': 'ELF bash',
    'usr/lib/a.so': 'lib',
  }

  beforeAll(() => {
    const tree = (name: string, files: Record<string, string>) => {
      const root = join(dir, name)
      for (const [p, c] of Object.entries(files)) {
        mkdirSync(join(root, p, '..'), { recursive: true })
        writeFileSync(join(root, p), c)
      }
      return root
    }
    const early = tree('early', { 'kernel/x86/microcode/GenuineIntel.bin': 'microcode' })
    const main = tree('main', mainFiles)
    linkSync(join(main, 'usr/bin/bash'), join(main, 'usr/bin/sh')) // newc keeps the data with one link only
    symlinkSync('bash', join(main, 'usr/bin/rbash'))
    const cpio = (root: string) =>
      sh('sh', ['-c', 'find . | LC_ALL=C sort | cpio -o -H newc --quiet'], { cwd: root })
    const earlyCpio = cpio(early)
    const mainCpio = cpio(main)
    boot = join(dir, 'boot')
    mkdirSync(boot)
    writeFileSync(
      join(boot, 'initramfs-zstd.img'),
      Buffer.concat([earlyCpio, sh('zstd', ['-q', '-c'], { input: mainCpio })]),
    )
    writeFileSync(
      join(boot, 'initrd.img-xz'),
      Buffer.concat([earlyCpio, sh('xz', ['-c', '--check=crc32'], { input: mainCpio })]),
    )
    writeFileSync(join(boot, 'initrd.img-gz'), sh('gzip', ['-c'], { input: mainCpio }))
    writeFileSync(join(boot, 'initrd.img-lz4'), sh('lz4', ['-l', '-c'], { input: mainCpio }))
    writeFileSync(join(boot, 'initrd.img-plain'), mainCpio)
    writeFileSync(join(boot, 'vmlinuz-6.1'), 'not an initrd: ignored by name')
  })

  it('reads early + compressed main archives (zstd, xz, gzip, lz4, none): main files only, hard links resolved', async () => {
    const r = await keylime(['policy', 'create', 'runtime', '--ramdisk-dir', boot])
    expect(r.err).toBe('')
    expect(r.code).toBe(0)
    expect(digestsOf(r.out)).toEqual({
      '/init': [sha256(mainFiles.init)],
      '/usr/bin/bash': [sha256('ELF bash')],
      '/usr/bin/sh': [sha256('ELF bash')],
      '/usr/lib/a.so': [sha256('lib')],
    })
  })

  it('a corrupt or unknown initrd is a usage error naming the file, not a crash', async () => {
    const bad = join(dir, 'badboot')
    mkdirSync(bad)
    const gz = readFileSync(join(boot, 'initrd.img-gz'))
    writeFileSync(
      join(bad, 'initrd-corrupt.img'),
      Buffer.concat([gz.subarray(0, 20), Buffer.alloc(40, 0x55)]),
    )
    const r1 = await keylime(['policy', 'create', 'runtime', '--ramdisk-dir', bad])
    expect(r1.code).toBe(2)
    expect(r1.err).toContain('initrd-corrupt.img: gzip data is corrupt')
    rmSync(join(bad, 'initrd-corrupt.img'))
    writeFileSync(join(bad, 'initrd-unknown.img'), 'plain text')
    const r2 = await keylime(['policy', 'create', 'runtime', '--ramdisk-dir', bad])
    expect(r2.code).toBe(2)
    expect(r2.err).toContain('initrd-unknown.img: neither a cpio archive nor a known compression')
  })
})

/** Builds a noarch package holding `files` (path -> content) with rpmbuild; returns its path. */
function buildRpm(name: string, files: Record<string, string | Buffer>): string {
  const top = join(dir, `rpmbuild-${name}`)
  const src = join(top, 'content')
  for (const [p, c] of Object.entries(files)) {
    mkdirSync(join(src, p, '..'), { recursive: true })
    writeFileSync(join(src, p), c)
  }
  mkdirSync(join(top, 'SPECS'), { recursive: true })
  const spec = [
    `Name: ${name}`,
    'Version: 1.0',
    'Release: 1',
    'Summary: test package',
    'License: MIT',
    'BuildArch: noarch',
    '%description',
    'test package',
    '%install',
    `cp -a ${src}/. %{buildroot}/`,
    `ln -s ${Object.keys(files)[0]} %{buildroot}/usr/link-${name}`,
    '%files',
    ...Object.keys(files),
    `/usr/link-${name}`,
    '',
  ].join('\n')
  writeFileSync(join(top, 'SPECS', `${name}.spec`), spec)
  sh('rpmbuild', [
    '-bb',
    '--quiet',
    '--define',
    `_topdir ${top}`,
    '--define',
    '_build_id_links none',
    '--define',
    '__os_install_post %{nil}',
    join(top, 'SPECS', `${name}.spec`),
  ])
  return join(top, 'RPMS', 'noarch', `${name}-1.0-1.noarch.rpm`)
}

describe('policy create runtime from RPM repositories', () => {
  let repo: string
  let server: Server
  let base: string
  let served = 0
  const big = randomBytes(2 * 1024 * 1024)
  const expected = {
    '/usr/bin/alpha': [sha256('alpha binary')],
    '/usr/share/alpha/data': [sha256('alpha data')],
    '/usr/lib/beta/big.bin': [sha256(big)],
    '/usr/bin/beta': [sha256('beta binary')],
  }

  beforeAll(async () => {
    repo = join(dir, 'repo')
    mkdirSync(join(repo, 'Packages'), { recursive: true })
    for (const [name, files] of [
      ['alpha', { '/usr/bin/alpha': 'alpha binary', '/usr/share/alpha/data': 'alpha data' }],
      ['beta', { '/usr/bin/beta': 'beta binary', '/usr/lib/beta/big.bin': big }],
    ] as const) {
      const rpm = buildRpm(name, files)
      writeFileSync(join(repo, 'Packages', `${name}.rpm`), readFileSync(rpm))
    }
    sh('createrepo_c', ['-q', repo])
    // A static file server with range requests, counting the bytes it sends.
    server = createServer((req, res) => {
      const path = join(dir, decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname))
      let size: number
      try {
        size = statSync(path).size
      } catch {
        res.writeHead(404).end()
        return
      }
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '')
      const start = m ? Number(m[1]) : 0
      const end = m ? Math.min(Number(m[2]), size - 1) : size - 1
      res.writeHead(m ? 206 : 200, { 'content-length': end - start + 1 })
      served += end - start + 1
      createReadStream(path, { start, end }).pipe(res)
    })
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  })
  // no server when the set-up failed (a missing tool): that error is the one to read
  afterAll(() => new Promise<void>((r) => (server ? server.close(() => r()) : r())))

  it('local repository: digests of regular files from the package headers (links and directories left out)', async () => {
    const r = await keylime(['policy', 'create', 'runtime', '--local-rpm-repo', repo, '--max-workers', '2'])
    expect(r.code).toBe(0)
    expect(r.err).toContain('is not signed')
    expect(digestsOf(r.out)).toEqual(expected)
  })

  it('remote repository: the same digests, reading package headers only (range requests)', async () => {
    served = 0
    const r = await keylime(['policy', 'create', 'runtime', '--remote-rpm-repo', `${base}/repo`])
    expect(r.code).toBe(0)
    expect(digestsOf(r.out)).toEqual(expected)
    expect(served).toBeLessThan(200 * 1024) // the 2 MiB payload was never downloaded
  })

  it('remote repository with filelists-ext metadata: digests from it, no package read', async () => {
    const ext = join(dir, 'repo-ext')
    mkdirSync(join(ext, 'repodata'), { recursive: true })
    const xml = [
      '<?xml version="1.0" encoding="UTF-8"?>',
      '<filelists-ext xmlns="http://linux.duke.edu/metadata/filelists-ext" packages="1">',
      '<package pkgid="00" name="gamma" arch="noarch"><version epoch="0" ver="1" rel="1"/><checksum type="sha256"/>',
      `<file hash="${sha256('gamma')}">/usr/bin/gamma</file>`,
      '<file type="dir">/usr/share/gamma</file>',
      `<file type="ghost" hash="">/var/log/gamma.log</file>`,
      '</package></filelists-ext>',
    ].join('\n')
    writeFileSync(join(ext, 'repodata', 'fe.xml.gz'), sh('gzip', ['-c'], { input: Buffer.from(xml) }))
    writeFileSync(
      join(ext, 'repodata', 'repomd.xml'),
      '<?xml version="1.0"?><repomd xmlns="http://linux.duke.edu/metadata/repo"><data type="filelists-ext"><location href="repodata/fe.xml.gz"/></data></repomd>',
    )
    const r = await keylime(['policy', 'create', 'runtime', '--remote-rpm-repo', `${base}/repo-ext/`])
    expect(r.code).toBe(0)
    expect(digestsOf(r.out)).toEqual({ '/usr/bin/gamma': [sha256('gamma')] })
  })

  it('a signed repository is verified with its key; a tampered repomd.xml is refused', async () => {
    const signed = join(dir, 'repo-signed')
    sh('cp', ['-a', repo, signed])
    const home = join(dir, 'gnupg')
    mkdirSync(home, { mode: 0o700 })
    const gpg = (...args: string[]) => sh('gpg', ['--homedir', home, '--batch', '--no-tty', ...args])
    gpg('--passphrase', '', '--quick-gen-key', 'repo signer <repo@example.test>', 'ed25519', 'sign', 'never')
    writeFileSync(join(signed, 'repodata', 'repomd.xml.key'), gpg('--armor', '--export'))
    gpg(
      '--armor',
      '--detach-sign',
      '-o',
      join(signed, 'repodata', 'repomd.xml.asc'),
      join(signed, 'repodata', 'repomd.xml'),
    )
    const ok = await keylime(['policy', 'create', 'runtime', '--local-rpm-repo', signed])
    expect(ok.code).toBe(0)
    expect(ok.err).not.toContain('not signed')
    expect(digestsOf(ok.out)).toEqual(expected)
    writeFileSync(
      join(signed, 'repodata', 'repomd.xml'),
      `${readFileSync(join(signed, 'repodata', 'repomd.xml'), 'utf8')} `,
    )
    for (const args of [
      ['--local-rpm-repo', signed],
      ['--remote-rpm-repo', `${base}/repo-signed`],
    ]) {
      const bad = await keylime(['policy', 'create', 'runtime', ...args])
      expect(bad.code).toBe(2)
      expect(bad.err).toContain('signature does not verify: untrusted repository')
    }
  })

  it('not a repository, an unreachable one, a bad --max-workers: usage errors', async () => {
    const notRepo = await keylime(['policy', 'create', 'runtime', '--local-rpm-repo', join(repo, 'Packages')])
    expect([notRepo.code, notRepo.err]).toEqual([2, expect.stringContaining('not an RPM repository')])
    const missing = await keylime(['policy', 'create', 'runtime', '--remote-rpm-repo', `${base}/nothing`])
    expect([missing.code, missing.err]).toEqual([2, expect.stringContaining('HTTP 404')])
    const workers = await keylime([
      'policy',
      'create',
      'runtime',
      '--local-rpm-repo',
      repo,
      '--max-workers',
      '0',
    ])
    expect([workers.code, workers.err]).toEqual([
      2,
      expect.stringContaining('--max-workers must be a positive integer'),
    ])
  })
})

describe('policy sign runtime and policy convert', () => {
  const policyFile = () => {
    const p = join(dir, 'to-sign.json')
    writeFileSync(p, runtimePolicyJson({ '/usr/bin/x': [sha256('x')] }, 0))
    return p
  }

  it('-p writes a new key (never over an existing file) and the envelope verifies with its public key', async () => {
    const key = join(dir, 'new-key.pem')
    const out = join(dir, 'signed-ecdsa.json')
    const r = await keylime(['policy', 'sign', 'runtime', '-r', policyFile(), '-p', key, '-o', out])
    expect(r.code).toBe(0)
    expect(statSync(key).mode & 0o777).toBe(0o600)
    const pub = join(dir, 'new-key.pub')
    writeFileSync(pub, sh('openssl', ['ec', '-in', key, '-pubout'], {}))
    expect((await keylime(['policy', 'verify', 'runtime', '-r', out, '-k', pub])).code).toBe(0)
    const again = await keylime(['policy', 'sign', 'runtime', '-r', policyFile(), '-p', key])
    expect([again.code, again.err]).toEqual([2, expect.stringContaining('exists; not overwriting it')])
  })

  it('-b x509 -c: key id carries the certificate; verifies with the certificate, and at the verifier', async () => {
    const cert = join(dir, 'signer.crt')
    const out = join(dir, 'signed-x509.json')
    const key = join(dir, 'x509-key.pem')
    const r = await keylime([
      'policy',
      'sign',
      'runtime',
      '-r',
      policyFile(),
      '-b',
      'x509',
      '-p',
      key,
      '-c',
      cert,
      '-o',
      out,
    ])
    expect(r.code).toBe(0)
    const envelope = JSON.parse(readFileSync(out, 'utf8')) as { signatures: { keyid: string }[] }
    expect(Buffer.from(envelope.signatures[0]?.keyid ?? '', 'base64').toString()).toBe(
      readFileSync(cert, 'utf8'),
    )
    expect(sh('openssl', ['x509', '-in', cert, '-noout', '-ext', 'basicConstraints']).toString()).toContain(
      'CA:FALSE',
    )
    expect((await keylime(['policy', 'verify', 'runtime', '-r', out, '-k', cert])).code).toBe(0)
    // The verifier given the certificate as runtime_policy_key accepts it; given another key, refuses.
    const text = readFileSync(out, 'utf8')
    const certB64 = Buffer.from(readFileSync(cert)).toString('base64')
    expect(JSON.parse(unwrapRuntimePolicy(text, certB64, true)).digests).toEqual({
      '/usr/bin/x': [sha256('x')],
    })
    const otherPub = sh('openssl', ['ec', '-in', join(dir, 'new-key.pem'), '-pubout'])
    expect(() => unwrapRuntimePolicy(text, otherPub.toString('base64'), true)).toThrow(/verification failed/)
    // With signatures required, a certificate the envelope brings itself proves nothing: a key must be given.
    expect(() => unwrapRuntimePolicy(text, undefined, true)).toThrow(/no key was given/)
    const noCert = await keylime(['policy', 'sign', 'runtime', '-r', policyFile(), '-b', 'x509', '-k', key])
    expect([noCert.code, noCert.err]).toEqual([2, expect.stringContaining('needs -c')])
  })

  it('convert: JSON and flat legacy allowlists, an old policy version, with excludes added', async () => {
    const exclude = join(dir, 'exclude.txt')
    writeFileSync(exclude, '# comment\n/tmp/.*\n')
    const jsonList = join(dir, 'allowlist.json')
    writeFileSync(jsonList, JSON.stringify({ meta: { version: 5 }, hashes: { '/bin/a': [sha256('a')] } }))
    const flat = join(dir, 'allowlist.txt')
    writeFileSync(flat, `${sha256('b')}  /bin/b\n${sha256('k')} %keyring:.ima\n`)
    const old = join(dir, 'old-policy.json')
    writeFileSync(
      old,
      JSON.stringify({ meta: { version: 0 }, digests: { '/bin/c': [sha256('c')] }, excludes: ['x'] }),
    )
    const out = join(dir, 'converted.json')
    const read = () => JSON.parse(readFileSync(out, 'utf8'))

    expect((await keylime(['policy', 'convert', '-a', jsonList, '-e', exclude, '-o', out])).code).toBe(0)
    expect(read()).toMatchObject({
      meta: { version: 1, generator: 3 },
      digests: { '/bin/a': [sha256('a')] },
      excludes: ['/tmp/.*'],
    })
    expect((await keylime(['policy', 'convert', '-a', flat, '-o', out])).code).toBe(0)
    expect(read()).toMatchObject({
      digests: { '/bin/b': [sha256('b')] },
      keyrings: { '.ima': [sha256('k')] },
    })
    const r = await keylime(['policy', 'convert', '-r', old, '-o', out])
    expect(r.code).toBe(0)
    expect(r.err).toContain('policy version 0 updated to 1')
    expect(read()).toMatchObject({
      meta: { version: 1, generator: 2 },
      digests: { '/bin/c': [sha256('c')] },
      excludes: ['x'],
    })
    // The converted policy is one the verifier's strict reader takes.
    expect((await keylime(['policy', 'sign', 'runtime', '-r', out, '-p', join(dir, 'k3.pem')])).code).toBe(0)

    // IMA signature verification keys are added to the policy's keyring.
    const imaKey = join(dir, 'ima-key.pem')
    sh('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', imaKey])
    const imaPub = join(dir, 'ima-key.pub')
    writeFileSync(imaPub, sh('openssl', ['pkey', '-in', imaKey, '-pubout']))
    expect((await keylime(['policy', 'convert', '-r', old, '-v', imaPub, '-o', out])).code).toBe(0)
    const ring = JSON.parse(read()['verification-keys'] as string) as { pubkeys: string[]; keyids: number[] }
    expect(ring.pubkeys).toHaveLength(1)
    expect(ring.keyids).toHaveLength(1)

    const both = await keylime(['policy', 'convert', '-a', flat, '-r', old, '-o', out])
    expect([both.code, both.err]).toEqual([2, expect.stringContaining('give one of -a')])
    const already = await keylime(['policy', 'convert', '-a', old, '-o', out])
    expect([already.code, already.err]).toEqual([2, expect.stringContaining('already a runtime policy')])
  })
})
