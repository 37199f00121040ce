/**
 * `keylime tenant -c add -f payload.zip` against a real agent on swtpm: the tenant waits until the agent proves it
 * derived K and installed the payload; a payload the agent refuses (path traversal, zip bomb, symbolic link) is
 * reported with the agent's reason and a failing exit status, never as "added".
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import yazl from 'yazl'
import { type ClusterAgent, LocalCluster, waitFor } from '../../src/devtools/local-cluster.ts'

function tenant(
  cluster: LocalCluster,
  ...args: string[]
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('node', ['bin/keylime.js', 'tenant', '--config', cluster.tenantConf, ...args])
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    child.on('exit', (status) => resolve({ status, stdout, stderr }))
  })
}

/** A zip with the given entries; `rename` patches names yazl refuses (such as `../x`) into both headers. */
function zip(
  entries: { name: string; data: string; mode?: number }[],
  rename: Record<string, string> = {},
): Promise<Buffer> {
  return new Promise((done, fail) => {
    const z = new yazl.ZipFile()
    for (const e of entries) z.addBuffer(Buffer.from(e.data), e.name, { mode: e.mode ?? 0o100644 })
    z.end()
    const chunks: Buffer[] = []
    z.outputStream.on('data', (c: Buffer) => chunks.push(c))
    z.outputStream.on('error', fail)
    z.outputStream.on('end', () => {
      const out = Buffer.concat(chunks)
      for (const [from, to] of Object.entries(rename)) {
        const needle = Buffer.from(from)
        for (let at = out.indexOf(needle); at !== -1; at = out.indexOf(needle, at + 1)) out.write(to, at)
      }
      done(out)
    })
  })
}

describe('tenant add -f: the agent reports what it did with the payload', () => {
  let dir: string
  let cluster: LocalCluster
  let agent: ClusterAgent

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kl-tenant-payload-'))
    cluster = new LocalCluster({ dir, quoteInterval: 1, stepTimeout: 90 })
    await cluster.startServices()
    agent = await cluster.startAgent()
    await waitFor('registration', 90, async () => {
      const r = await tenant(cluster, '-c', 'regstatus', '-u', agent.uuid, '--json')
      return r.status === 0 ? true : undefined
    })
  }, 180_000)

  afterAll(async () => {
    await cluster?.stop()
    rmSync(dir, { recursive: true, force: true })
  })

  async function addWith(file: string, ...extra: string[]) {
    return tenant(cluster, '-c', 'add', '-u', agent.uuid, '-f', file, ...extra)
  }
  /** Each test enrolls the agent afresh; whatever it asserted, the enrolment goes. */
  afterEach(async () => {
    await tenant(cluster, '-c', 'delete', '-u', agent.uuid)
  })

  it('confirms a payload the agent installed', async () => {
    const file = join(dir, 'good.zip')
    writeFileSync(file, await zip([{ name: 'autorun.sh', data: 'echo ran > marker.txt\n', mode: 0o100700 }]))
    const add = await addWith(file)
    expect(add.stderr).toMatch(/agent: derived the bootstrap key K and installed the payload/)
    expect(add.stdout).toMatch(/added and verified/)
    expect(add.status, add.stderr).toBe(0)
    await waitFor('autorun.sh', 30, () =>
      existsSync(join(agent.dir, 'secure', 'unzipped', 'marker.txt')) ? true : undefined,
    )
  }, 120_000)

  it('reports a path-traversal payload the agent refused and exits 1; the agent stays enrolled', async () => {
    const file = join(dir, 'traversal.zip')
    writeFileSync(
      file,
      await zip(
        [
          { name: 'autorun.sh', data: 'echo pwned > ../../pwned.txt\n' },
          { name: 'AA/escape.txt', data: 'escaped' },
        ],
        { 'AA/escape.txt': '../escape.txt' },
      ),
    )
    const add = await addWith(file)
    expect(add.stderr).toMatch(
      /agent \S+ refused the payload: archive rejected: invalid relative path: \.\.\/escape\.txt \(it stays enrolled\)/,
    )
    expect(add.stdout).not.toMatch(/added/)
    expect(add.status).toBe(1)
    expect(existsSync(join(agent.dir, 'secure', 'escape.txt'))).toBe(false)
    expect(existsSync(join(agent.dir, 'pwned.txt'))).toBe(false)
    const cv = await tenant(cluster, '-c', 'cvstatus', '-u', agent.uuid)
    expect(cv.status).toBe(0)
  }, 120_000)

  it('reports a zip bomb the agent refused', async () => {
    const file = join(dir, 'bomb.zip')
    writeFileSync(file, await zip([{ name: 'zeros', data: '\0'.repeat(4 * 1024 * 1024) }]))
    const add = await addWith(file)
    expect(add.stderr).toMatch(
      /refused the payload: archive entry zeros is over-compressed .*possible zip bomb/,
    )
    expect(add.status).toBe(1)
    expect(existsSync(join(agent.dir, 'secure', 'unzipped', 'zeros'))).toBe(false)
  }, 120_000)

  it('with --verify, a symbolic-link payload also stops attestation, as upstream does on a failed --verify', async () => {
    const file = join(dir, 'symlink.zip')
    writeFileSync(file, await zip([{ name: 'link', data: '/etc/passwd', mode: 0o120777 }]))
    const add = await addWith(file, '--verify')
    expect(add.stderr).toMatch(/refused the payload: .*symbolic link.*; attestation stopped/)
    expect(add.status).toBe(1)
    const cv = await tenant(cluster, '-c', 'cvstatus', '-u', agent.uuid, '--json')
    expect(JSON.parse(cv.stdout)[agent.uuid].operational_state_name).toBe('Tenant Quote Failed')
    expect(readFileSync(join(cluster.logDir, `${agentName(agent)}.log`), 'utf8')).toMatch(
      /payload installation failed: .*symbolic link/,
    )
  }, 120_000)
})

function agentName(agent: ClusterAgent): string {
  return agent.dir.split('/').pop() as string
}
