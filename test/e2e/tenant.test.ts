import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type ClusterAgent, LocalCluster, waitFor } from '../../src/devtools/local-cluster.ts'

/** Runs `keylime tenant ...` as an operator would; resolves with exit status and output. */
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

describe('keylime tenant against a local cluster', () => {
  let dir: string
  let cluster: LocalCluster
  let agent: ClusterAgent

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kl-tenant-e2e-'))
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

  it('lists and shows the registered agent (reglist, regstatus --json)', async () => {
    const list = await tenant(cluster, 'reglist', '--json')
    expect(list.status).toBe(0)
    expect(JSON.parse(list.stdout).uuids).toContain(agent.uuid)
    const show = await tenant(cluster, '-c', 'regstatus', '-u', agent.uuid, '--json')
    const record = JSON.parse(show.stdout)[agent.uuid]
    expect(record.regcount).toBe(1)
    expect(typeof record.aik_tpm).toBe('string')
  })

  it('refuses to enroll an agent whose EK certificate does not chain to the cert store (exit 3)', async () => {
    const emptyStore = join(dir, 'empty-store')
    const conf = join(dir, 'strict-tenant.conf')
    rmSync(emptyStore, { recursive: true, force: true })
    writeFileSync(join(dir, 'placeholder'), '')
    const { mkdirSync, readFileSync } = await import('node:fs')
    mkdirSync(emptyStore)
    writeFileSync(
      conf,
      readFileSync(cluster.tenantConf, 'utf8').replace(
        /tpm_cert_store = .*/,
        `tpm_cert_store = ${emptyStore}`,
      ),
    )
    const child = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
      const c = spawn('node', ['bin/keylime.js', 'tenant', '--config', conf, '-c', 'add', '-u', agent.uuid])
      let stderr = ''
      c.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
      c.on('exit', (status) => resolve({ status, stderr }))
    })
    expect(child.stderr).toMatch(/EK of agent .* is not trusted/)
    expect(child.status).toBe(3)
    const cv = await tenant(cluster, '-c', 'cvstatus', '-u', agent.uuid)
    expect(cv.status).toBe(1)
  })

  it('adds, shows, lists, reactivates and deletes the agent at the verifier', async () => {
    const add = await tenant(
      cluster,
      '-c',
      'add',
      '-u',
      agent.uuid,
      '--tpm_policy',
      `{"15":["${'0'.repeat(64)}"]}`,
    )
    expect(add.stderr).toMatch(/identity quote verified/)
    expect(add.status).toBe(0)

    await waitFor('attestations', 60, async () => {
      const s = await tenant(cluster, '-c', 'cvstatus', '-u', agent.uuid, '--json')
      const status = JSON.parse(s.stdout)[agent.uuid]
      return status.attestation_count >= 2 && status.operational_state === 3 ? true : undefined
    })
    const again = await tenant(cluster, '-c', 'add', '-u', agent.uuid)
    expect(again.status).toBe(1)
    expect(again.stderr).toMatch(/already enrolled/)

    // update without policy flags keeps the PCR policy (no silent weakening)
    const update = await tenant(cluster, '-c', 'update', '-u', agent.uuid)
    expect([update.status, update.stdout]).toEqual([0, `agent ${agent.uuid} updated\n`])
    const updated = await tenant(cluster, '-c', 'cvstatus', '-u', agent.uuid, '--json')
    expect(JSON.parse(JSON.parse(updated.stdout)[agent.uuid].tpm_policy)).toEqual({
      '15': ['0'.repeat(64)],
      mask: '0x8000',
    })

    const list = await tenant(cluster, 'cvlist', '--json')
    expect(JSON.parse(list.stdout).uuids).toEqual([agent.uuid])
    const bulk = await tenant(cluster, 'bulkinfo', '--json')
    expect(Object.keys(JSON.parse(bulk.stdout))).toEqual([agent.uuid])

    const reactivate = await tenant(cluster, '-c', 'reactivate', '-u', agent.uuid)
    expect(reactivate.status).toBe(0)

    const del = await tenant(cluster, '-c', 'delete', '-u', agent.uuid)
    expect(del.status).toBe(0)
    const gone = await tenant(cluster, '-c', 'cvstatus', '-u', agent.uuid)
    expect(gone.status).toBe(1)
    expect(gone.stderr).toMatch(/not enrolled/)
  }, 180_000)
})
