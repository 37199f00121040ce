import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { fixturePath } from '../fixture.ts'

const run = (...args: string[]) =>
  spawnSync('node', ['bin/keylime.js', ...args], { encoding: 'utf8', timeout: 60_000 })

describe('keylime ima replay', () => {
  it('prints PCR 10 per bank as JSON and exits 0 for a binary list', () => {
    const r = run('ima', 'replay', '--json', fixturePath('ima/tpm2-tss-sml-ima-sig-sha256-invalidated.bin'))
    expect(r.status).toBe(0)
    const ref = JSON.parse(
      readFileSync(fixturePath('ima/tpm2-tss-sml-ima-sig-sha256-invalidated.bin.reference.json'), 'utf8'),
    )
    expect(JSON.parse(r.stdout)).toEqual({
      entries: 2,
      pcrs: {
        sha1: { '10': ref.independent_check.pcr10.sha1 },
        sha256: { '10': ref.independent_check.pcr10.sha256 },
      },
      failures: [],
    })
  })

  it('exits 1 naming the failing line and file when the policy rejects an entry', () => {
    const r = run(
      'ima',
      'replay',
      '--json',
      '--bank',
      'sha384',
      '--policy',
      fixturePath('policies/keylime-crp-policy-sha1.json'),
      fixturePath('ima/keylime-crp-ima-log-sha1.ascii'),
    )
    expect(r.status).toBe(1)
    const out = JSON.parse(r.stdout)
    expect(Object.keys(out.pcrs)).toEqual(['sha384'])
    expect(out.failures).toEqual([
      {
        line: 2,
        path: '/data',
        event_id: 'ima.validation.ima-ng.not_in_allowlist',
        message: 'File not found in allowlist: /data',
      },
    ])
  })

  it('exits 2 naming the broken line of a malformed list', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ima-cli-'))
    const good = readFileSync(fixturePath('ima/keylime-testsuite-signatures.ascii'), 'utf8')
    writeFileSync(join(dir, 'bad.ascii'), `${good}10 zz ima-ng sha1:00 /x\n`)
    const r = run('ima', 'replay', join(dir, 'bad.ascii'))
    expect(r.status).toBe(2)
    expect(r.stderr).toMatch(/line 3: template hash is not hex/)
  })
})

describe('keylime policy create/sign/verify runtime', () => {
  it('creates a policy from an IMA list that the same list then passes, signs and verifies it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ima-cli-'))
    const list = fixturePath('ima/keylime-testsuite-measurements.ascii')
    expect(run('policy', 'create', 'runtime', '-m', list, '-o', join(dir, 'p.json')).status).toBe(0)
    expect(run('ima', 'replay', '--policy', join(dir, 'p.json'), list).status).toBe(0)
    const key = fixturePath('certs/keylime-sign-ec-p521-private.pem')
    expect(
      run('policy', 'sign', 'runtime', '-r', join(dir, 'p.json'), '-k', key, '-o', join(dir, 'p.dsse'))
        .status,
    ).toBe(0)
    const ok = run(
      'policy',
      'verify',
      'runtime',
      '-r',
      join(dir, 'p.dsse'),
      '-k',
      fixturePath('certs/keylime-sign-ec-p521-public.pem'),
    )
    expect(ok.status).toBe(0)
    expect(JSON.parse(ok.stdout)).toEqual(JSON.parse(readFileSync(join(dir, 'p.json'), 'utf8')))
    const bad = run(
      'policy',
      'verify',
      'runtime',
      '-r',
      join(dir, 'p.dsse'),
      '-k',
      fixturePath('certs/keylime-runtime-policy-pubkey.pub'),
    )
    expect(bad.status).toBe(1)
  })
})
