/**
 * The synthetic event log the demo attests: it must be a log our parser, replay, reference-state generator and
 * policy engine treat like a real machine's, and its variants must fail the first log's policy for the right reason.
 * tpm2-tools' parser (tpm2_eventlog) is the independent check of the format and the replay.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { x509 } from '../../src/crypto/x509-setup.ts'
import {
  createSecureBootKeys,
  type SecureBootKeys,
  SYNTHETIC_DISTRO_OWNER,
  SYNTHETIC_PLATFORM_OWNER,
  syntheticEventLog,
} from '../../src/devtools/synthetic-event-log.ts'
import {
  checkMeasuredBoot,
  eventDetail,
  explainMbPolicy,
  extendPlan,
  parseEventLog,
  parseMbPolicy,
  pcrValuesToJson,
  replayEventLog,
} from '../../src/evidence/mb/index.ts'

const BIN = resolve(import.meta.dirname, '../../bin/keylime.js')
let keys: SecureBootKeys
let dir: string
/** The reference state `keylime policy create measured-boot` writes for the default log. */
let refstateA: Record<string, unknown>

/** `keylime policy create measured-boot -e LOG [-i]` as an operator runs it. */
function createPolicy(log: Buffer, ...flags: string[]): Record<string, unknown> {
  const logPath = join(dir, `log-${Math.random().toString(16).slice(2)}.bin`)
  writeFileSync(logPath, log)
  const r = spawnSync(process.execPath, [BIN, 'policy', 'create', 'measured-boot', '-e', logPath, ...flags], {
    encoding: 'utf8',
    timeout: 60_000,
  })
  expect(r.status, r.stderr).toBe(0)
  return JSON.parse(r.stdout) as Record<string, unknown>
}

const sha256Pcrs = (log: Buffer) => pcrValuesToJson(replayEventLog(parseEventLog(log))).sha256 ?? {}
/** PCR indices whose sha256 value differs between two logs. */
function changedPcrs(a: Buffer, b: Buffer): number[] {
  const pa = sha256Pcrs(a)
  const pb = sha256Pcrs(b)
  return [...new Set([...Object.keys(pa), ...Object.keys(pb)])]
    .filter((k) => pa[k] !== pb[k])
    .map(Number)
    .sort((x, y) => x - y)
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kl-synthetic-log-'))
  keys = await createSecureBootKeys()
  refstateA = createPolicy(syntheticEventLog({ keys }).bytes)
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe('synthetic event log', () => {
  it('is a crypto-agile sha1+sha256 log of a shim → grub → Linux Secure Boot machine, deterministic per keys', () => {
    const { bytes, digests } = syntheticEventLog({ keys })
    expect(syntheticEventLog({ keys }).bytes.equals(bytes)).toBe(true)
    const log = parseEventLog(bytes)
    expect(log.format).toBe('crypto-agile')
    expect(log.banks).toEqual(['sha1', 'sha256'])
    expect(log.byteLength).toBe(bytes.length)
    const summary = log.events.map((ev) => `${ev.pcr}:${ev.typeName}`)
    expect(summary.slice(0, 4)).toEqual([
      '0:EV_NO_ACTION',
      '0:EV_S_CRTM_VERSION',
      '0:EV_EFI_PLATFORM_FIRMWARE_BLOB',
      '0:EV_EFI_PLATFORM_FIRMWARE_BLOB',
    ])
    for (let pcr = 0; pcr <= 7; pcr++) expect(summary).toContain(`${pcr}:EV_SEPARATOR`)
    for (const ev of log.events.slice(1)) expect(ev.digests.map((d) => d.alg)).toEqual(['sha1', 'sha256'])

    const details = log.events.map((ev) => eventDetail(log, ev)) as { EventType: string; Event: unknown }[]
    type SignatureList = { SignatureType: string; Keys: { SignatureData: string }[] }
    const variable = (name: string, type = 'EV_EFI_VARIABLE_DRIVER_CONFIG') => {
      const found = details.find(
        (d) => d.EventType === type && (d.Event as { UnicodeName?: string }).UnicodeName === name,
      )
      return (found?.Event ?? {}) as { VariableData?: unknown }
    }
    const lists = (name: string) => variable(name).VariableData as SignatureList[]
    expect(variable('SecureBoot').VariableData).toEqual({ Enabled: 'Yes' })
    for (const [name, cert] of [
      ['PK', keys.pk],
      ['KEK', keys.kek],
    ] as const) {
      expect(variable(name).VariableData).toEqual([
        expect.objectContaining({
          SignatureType: 'a5c059a1-94e4-4aa7-87b5-ab155c2bf072',
          Keys: [{ SignatureOwner: SYNTHETIC_PLATFORM_OWNER, SignatureData: cert.toString('hex') }],
        }),
      ])
    }
    expect(lists('db').map((l) => l.SignatureType)).toEqual([
      'a5c059a1-94e4-4aa7-87b5-ab155c2bf072',
      'c1c41626-504c-4092-aca9-41f936934328',
    ])
    expect(lists('dbx')[0]?.Keys).toHaveLength(3)
    expect(variable('vendor_db', 'EV_EFI_VARIABLE_AUTHORITY').VariableData).toEqual([
      { SignatureOwner: SYNTHETIC_DISTRO_OWNER, SignatureData: keys.distro.toString('hex') },
    ])
    // the certificates are real X.509, and the PK in the log is the one generated
    const pk = new x509.X509Certificate(Buffer.from(lists('PK')[0]?.Keys[0]?.SignatureData ?? '', 'hex'))
    expect(pk.subject).toMatch(/CN=Keylime TS synthetic Platform Key/)
    expect(variable('Boot0001', 'EV_EFI_VARIABLE_BOOT').VariableData).toEqual({
      Enabled: 'Yes',
      FilePathListLength: expect.any(Number),
      Description: 'Keylime TS demo Linux',
      DevicePath:
        'PciRoot(0x0)/Pci(0x4,0x0)/NVMe(0x1,00-00-00-00-00-00-00-00)/HD(1,GPT,a1f0c4d2-5b3e-4c7a-8e19-2d6f4b8a9c31,0x800,0x100000)/File(\\EFI\\keylime\\shimx64.efi)',
    })
    const apps = log.events.filter((ev) => ev.typeName === 'EV_EFI_BOOT_SERVICES_APPLICATION')
    expect(apps.map((ev) => ev.pcr)).toEqual([4, 4, 4])
    expect(apps.map((ev) => Buffer.from(ev.digests[1]?.digest ?? []).toString('hex'))).toEqual([
      digests.shim,
      digests.grub,
      digests.kernel,
    ])
    const strings = details
      .filter((d) => d.EventType === 'EV_IPL')
      .map((d) => (d.Event as { String: string }).String)
    expect(strings).toContain('(hd0,gpt2)/vmlinuz-6.8.0-keylime')
    expect(strings).toContain('MokList')
    expect(strings.filter((s) => s.startsWith('kernel_cmdline: '))).toEqual([
      'kernel_cmdline: (hd0,gpt2)/vmlinuz-6.8.0-keylime root=UUID=5f2c8e1a-7b4d-4c39-a6e2-1d8f0b3c9a75 ro quiet',
    ])
  })

  // tpm2-tools is a test dependency (`.ci/run` installs it, as the README's quick start does)
  it('tpm2_eventlog parses it and replays the same PCRs in both banks', () => {
    const bytes = syntheticEventLog({ keys }).bytes
    const path = join(dir, 'tpm2-tools.bin')
    writeFileSync(path, bytes)
    const yaml = execFileSync('tpm2_eventlog', [path], { encoding: 'utf8', timeout: 30_000 })
    expect(yaml).toMatch(/UnicodeName: Boot0001/)
    const ours = pcrValuesToJson(replayEventLog(parseEventLog(bytes)))
    const theirs: Record<string, Record<string, string>> = {}
    let bank = ''
    for (const line of yaml.slice(yaml.lastIndexOf('\npcrs:')).split('\n')) {
      const b = /^ {2}(sha1|sha256):$/.exec(line)
      if (b) bank = b[1] as string
      const m = /^ {4}(\d+)\s*: 0x([0-9a-f]+)$/i.exec(line)
      if (m && bank) theirs[bank] = { ...theirs[bank], [m[1] as string]: (m[2] as string).toLowerCase() }
    }
    expect(theirs).toEqual(ours)
    expect(Object.keys(ours.sha256 ?? {})).toEqual(['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '14'])
  })

  it('`keylime policy create measured-boot` writes a refstate the log passes, replay included', () => {
    const { bytes, digests } = syntheticEventLog({ keys })
    const refstate = refstateA
    expect(refstate).toMatchObject({
      has_secureboot: true,
      pk: [{ SignatureOwner: SYNTHETIC_PLATFORM_OWNER, SignatureData: `0x${keys.pk.toString('hex')}` }],
      dbx: expect.arrayContaining([expect.objectContaining({ SignatureOwner: SYNTHETIC_PLATFORM_OWNER })]),
      vendor_db: [
        { SignatureOwner: SYNTHETIC_DISTRO_OWNER, SignatureData: `0x${keys.distro.toString('hex')}` },
      ],
      mokdig: [expect.any(Object)],
      mokxdig: [expect.any(Object)],
      kernels: [
        {
          shim_authcode_sha256: `0x${digests.shim}`,
          grub_authcode_sha256: `0x${digests.grub}`,
          kernel_authcode_sha256: `0x${digests.kernel}`,
          initrd_plain_sha256: `0x${digests.initrd}`,
          kernel_cmdline: expect.stringContaining('vmlinuz-6\\.8\\.0-keylime root=UUID='),
        },
      ],
    })
    const policy = parseMbPolicy(refstate, { engine: 'example' })
    expect(explainMbPolicy(policy, parseEventLog(bytes))).toEqual([])
    // what the verifier runs: replay against the quoted PCRs (here: the replay itself), then the policy
    const quoted = replayEventLog(parseEventLog(bytes)).get('sha256') as Map<number, Buffer>
    const result = checkMeasuredBoot({
      eventLog: bytes,
      quotedPcrs: quoted,
      hashAlg: 'sha256',
      policy,
      evaluatePolicy: true,
    })
    expect(result.verdict).toEqual({ ok: true })
    expect(result.checkedPcrs).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14])
  })

  it("rejects a different kernel build (PCR 4 and 9 change) with the first log's policy", () => {
    const a = syntheticEventLog({ keys })
    const b = syntheticEventLog({ keys, kernelBuild: '6.8.0-keylime-rebuilt' })
    expect(b.digests.kernel).not.toBe(a.digests.kernel)
    expect(changedPcrs(a.bytes, b.bytes)).toEqual([4, 9])
    const policy = parseMbPolicy(refstateA, { engine: 'example' })
    expect(explainMbPolicy(policy, parseEventLog(b.bytes))).toEqual([
      {
        eventIndex: null,
        reason: `no kernel entry matches: [0] boot applications [${a.digests.shim}, ${a.digests.grub}, ${b.digests.kernel}] are not shim, grub, kernel [${a.digests.shim}, ${a.digests.grub}, ${a.digests.kernel}]`,
      },
    ])
    // end to end through the verifier's check, with PCRs that match log B: a policy failure, not a replay one
    const quoted = replayEventLog(parseEventLog(b.bytes)).get('sha256') as Map<number, Buffer>
    const r = checkMeasuredBoot({
      eventLog: b.bytes,
      quotedPcrs: quoted,
      hashAlg: 'sha256',
      policy,
      evaluatePolicy: true,
    })
    expect(r.verdict.ok).toBe(false)
    if (r.verdict.ok) return
    expect(r.verdict.events.map((e) => e.eventId)).toEqual(['measured_boot.policy_example'])
    expect(r.verdict.events[0]?.context).toMatchObject({
      context: 'Boot attestation failed',
      reason: expect.stringContaining(b.digests.kernel),
    })
  })

  it("rejects Secure Boot off (PCR 7 changes) with the first log's policy, naming the SecureBoot event", () => {
    const a = syntheticEventLog({ keys })
    const off = syntheticEventLog({ keys, secureBoot: false })
    expect(changedPcrs(a.bytes, off.bytes)).toEqual([7])
    const policy = parseMbPolicy(refstateA, { engine: 'example' })
    expect(explainMbPolicy(policy, parseEventLog(off.bytes))).toEqual([
      {
        eventIndex: 4,
        reason:
          'event #4 (PCR 7, EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot) says Secure Boot is disabled, reference state expects enabled',
      },
    ])
    // and a policy made from the Secure-Boot-off log with -i accepts it
    const offPolicy = createPolicy(off.bytes, '-i')
    expect(offPolicy.has_secureboot).toBe(false)
    expect(explainMbPolicy(parseMbPolicy(offPolicy), parseEventLog(off.bytes))).toEqual([])
  })

  it('rejects another kernel command line; StartupLocality 3 changes only PCR 0 and still passes', () => {
    const a = syntheticEventLog({ keys })
    const policy = parseMbPolicy(refstateA, { engine: 'example' })
    const debug = syntheticEventLog({ keys, cmdline: 'root=/dev/sda2 ro init=/bin/sh' })
    expect(explainMbPolicy(policy, parseEventLog(debug.bytes))).toEqual([
      {
        eventIndex: null,
        reason: expect.stringMatching(
          /^no kernel entry matches: \[0\] kernel command line ".*init=\/bin\/sh" does not match /,
        ),
      },
    ])
    const loc3 = syntheticEventLog({ keys, startupLocality: 3 })
    const plan = extendPlan(parseEventLog(loc3.bytes))
    expect(plan.startupLocality).toBe(3)
    expect(plan.hcrtm).toBe(false)
    expect(changedPcrs(a.bytes, loc3.bytes)).toEqual([0])
    expect(parseEventLog(loc3.bytes).events[1]?.typeName).toBe('EV_NO_ACTION')
    expect(explainMbPolicy(policy, parseEventLog(loc3.bytes))).toEqual([])
  })

  it('createSecureBootKeys makes distinct RSA-2048 certificates; another platform fails on PK, KEK, db', async () => {
    const other = await createSecureBootKeys()
    for (const k of ['pk', 'kek', 'db', 'distro'] as const) {
      const cert = new x509.X509Certificate(other[k])
      expect(cert.publicKey.algorithm).toMatchObject({ name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048 })
      expect(other[k].equals(keys[k])).toBe(false)
    }
    const policy = parseMbPolicy(refstateA, { engine: 'example' })
    const reasons = explainMbPolicy(policy, parseEventLog(syntheticEventLog({ keys: other }).bytes)).map(
      (f) => f.reason,
    )
    for (const v of ['PK', 'KEK', 'db', 'vendor_db'])
      expect(reasons.some((r) => r.includes(` ${v}) `))).toBe(true)
  })
})
