import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { fixtureJson, fixturePath } from '../fixture.ts'

const BIN = join(import.meta.dirname, '../../../bin/keylime.js')
const run = (...args: string[]) =>
  spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 60_000 })

describe('keylime eventlog / policy create measured-boot', () => {
  it('eventlog --json prints format, event count, replayed PCRs and events', () => {
    const name = 'go-tpm-tools-glinux-alex.bin'
    const r = run('eventlog', '--json', fixturePath(`eventlogs/${name}`))
    expect(r.status).toBe(0)
    const doc = JSON.parse(r.stdout)
    const ref = fixtureJson<{
      replayed_pcrs: unknown
      independent_parse: { event_count_including_header: number }
    }>(`eventlogs/${name}.reference.json`)
    expect(doc.format).toBe('crypto-agile')
    expect(doc.events).toBe(ref.independent_parse.event_count_including_header)
    expect(doc.pcrs).toEqual(ref.replayed_pcrs)
    expect(doc.events_detail).toHaveLength(doc.events)
    expect(doc.events_detail[1]).toMatchObject({
      EventNum: 1,
      PCRIndex: 0,
      EventType: 'EV_NO_ACTION',
      Event: { StartupLocality: 3 },
    })
  })

  it('eventlog exits 2 naming offset and event for a malformed log; text mode lists events', () => {
    const bad = run('eventlog', fixturePath('eventlogs/keylime-mb-log-issue1153.truncated.bin'))
    expect(bad.status).toBe(2)
    expect(bad.stderr).toMatch(/byte offset 11470 \(event 29\)/)
    const text = run('eventlog', fixturePath('eventlogs/go-tpm-tools-debian10-gce.bin'))
    expect(text.status).toBe(0)
    expect(text.stdout).toMatch(/^format: sha1$/m)
    expect(text.stdout).toMatch(/EventType: EV_S_CRTM_VERSION/)
  })

  it('policy create measured-boot writes a refstate, refuses Secure Boot off without -i', () => {
    const log = fixturePath('eventlogs/keylime-tests-edk2-fc41-nosecureboot.bin')
    const refused = run('policy', 'create', 'measured-boot', '-e', log)
    expect(refused.status).toBe(2)
    expect(refused.stderr).toMatch(/Secure Boot is disabled/)
    const out = join(mkdtempSync(join(tmpdir(), 'mb-')), 'refstate.json')
    const ok = run('policy', 'create', 'measured-boot', '-e', log, '-i', '-o', out)
    expect(ok.status).toBe(0)
    const refstate = JSON.parse(readFileSync(out, 'utf8'))
    expect(refstate.has_secureboot).toBe(false)
    expect(refstate.kernels[0].vmlinuz_plain_sha256).toMatch(/^0x5f5457bd/)
  })
})
