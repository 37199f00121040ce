import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { runKeylime } from '../../helpers/cli.ts'

/** `keylime ca ...` in-process. */
const ca = (...args: string[]) => runKeylime(['ca', ...args])

const dir = join(mkdtempSync(join(tmpdir(), 'kl-cacli-')), 'ca')
afterAll(() => rmSync(join(dir, '..'), { recursive: true, force: true }))

describe('keylime ca', () => {
  it('init, create, list, revoke, crl, pkg with --json; clear errors with exit codes', async () => {
    expect((await ca('init', '--dir', dir, '--key-type', 'ec')).out).toContain('created CA')
    const created = JSON.parse(
      (await ca('create', '-n', 'server1', '--san', '127.0.0.1', 'localhost', '--dir', dir, '--json')).out,
    )
    expect(created.serial).toBe('2')
    expect(existsSync(created.files.privateKey)).toBe(true)
    await ca('create', '-n', 'agent-x', '--dir', dir, '--usage', 'client')
    expect((await ca('revoke', '-n', 'server1', '--dir', dir)).out).toContain('revoked server1 (serial 2)')
    const list = JSON.parse((await ca('list', '--dir', dir, '--json')).out)
    expect(list.map((c: { name: string; revoked: unknown }) => [c.name, c.revoked !== null])).toEqual([
      ['server1', true],
      ['agent-x', false],
    ])
    expect((await ca('list', '--dir', dir)).out).toMatch(/2 {2}REVOKED .* server1/)
    expect(JSON.parse((await ca('crl', '--dir', dir, '--json')).out).revoked).toBe(1)
    const pkg = JSON.parse((await ca('pkg', '-n', 'agent-y', '--dir', dir, '--json')).out)
    expect(pkg.entries).toContain('RevocationNotifier-cert.crt')
    expect(existsSync(pkg.file)).toBe(true)

    const missing = await ca('revoke', '-n', 'nope', '--dir', dir)
    expect([missing.code, missing.err]).toEqual([2, expect.stringContaining('no certificate "nope"')])
    const again = await ca('init', '--dir', dir)
    expect([again.code, again.err]).toEqual([2, expect.stringContaining('already exists')])
    const bad = await ca('create', '-n', '../x', '--dir', dir)
    expect([bad.code, bad.err]).toEqual([2, expect.stringContaining('invalid certificate name')])
    const none = await ca('list', '--dir', join(dir, '..', 'none'))
    expect([none.code, none.err]).toEqual([2, expect.stringContaining('no CA in')])
  })
})
