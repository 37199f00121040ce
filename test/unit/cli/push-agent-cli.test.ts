/**
 * `keylime push-agent` refuses what it cannot do before touching a TPM or the network: `--avoid-tpm`, a non-3.x API
 * version, a bad timeout or registrar URL, an unreadable verifier CA; its help names upstream's push flags.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { runKeylime } from '../../helpers/cli.ts'

const dir = mkdtempSync(join(tmpdir(), 'push-agent-cli-'))
const conf = join(dir, 'agent.conf')
writeFileSync(conf, '[agent]\n')
const base = ['push-agent', '--config', conf, '--keylime-dir', dir, '--tpm', 'swtpm:host=127.0.0.1,port=1']

afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('keylime push-agent', () => {
  it('lists upstream push flags and the agent.conf options', async () => {
    const r = await runKeylime(['push-agent', '--help'])
    for (const flag of [
      '--verifier-url',
      '--registrar-url',
      '--agent-identifier',
      '--ca-certificate',
      '--api-version',
      '--timeout',
      '--insecure',
      '--attestation-interval-seconds',
      '--ima-ml-path',
    ])
      expect(r.out).toContain(flag)
  })

  it('refuses --avoid-tpm, a bad --timeout and a bad --registrar-url (usage, exit 2)', async () => {
    for (const args of [['--avoid-tpm'], ['--timeout', 'soon'], ['--registrar-url', 'ftp://x']]) {
      const r = await runKeylime([...base, ...args])
      expect(r.code, r.err).toBe(2)
    }
    expect((await runKeylime([...base, '--avoid-tpm'])).err).toMatch(/needs its TPM/)
  })

  it('refuses a verifier API other than 3.x and an unreadable verifier CA before opening the TPM', async () => {
    const v2 = await runKeylime([...base, '--api-version', 'v2.6', '--ca-certificate', conf])
    expect(v2.code).toBe(2)
    expect(v2.err).toMatch(/API 3\.x only/)
    const noCa = await runKeylime([...base, '--ca-certificate', join(dir, 'missing.crt')])
    expect(noCa.code).toBe(2)
    expect(noCa.err).toMatch(/verifier_tls_ca_cert .*missing\.crt cannot be read/)
  })
})
