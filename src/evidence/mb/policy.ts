/**
 * The reference-state policy engine (upstream's `example` policy, with its false rejections fixed) and the
 * `accept-all` / `reject-all` policies. Works on the parsed binary log directly; every failure names the event
 * and the reason. Fixes against upstream, each justified by real logs:
 * - EV_NO_ACTION records (StartupLocality, SP800-155, NvIndexInstance …) are not measured, so never judged.
 * - dbx may hold several signature lists of any type (real hardware); it must contain every refstate entry.
 * - PCR 0 events other than S-CRTM version and firmware blobs (EV_POST_CODE, EV_NONHOST_INFO, EV_S_CRTM_CONTENTS,
 *   EV_EFI_HCRTM_EVENT, vendor types) and PCR 1/2 platform configuration events are accepted: a refstate has no
 *   field for them; their PCRs are still checked by replay against the quote.
 * - Events in PCRs the policy does not judge (10–13, 15+) are ignored instead of failing the log.
 * - `db` authority events must name a refstate `db` entry (upstream accepts any); several are allowed.
 * - The kernel initrd measured as an EV_EVENT_TAG in PCR 9 (Linux EFI stub) counts as the initrd.
 * - `kernel_cmdline` also matches grub's older `grub_kernel_cmdline ` prefix.
 */
import { createHash } from 'node:crypto'
import { failure, PASS, type Verdict } from '../verdict.ts'
import { EventType, Guid, isBankName, NODE_HASH } from './constants.ts'
import { isFirmwareVolumePath } from './device-path.ts'
import { swappedGuid, toHex } from './guid.ts'
import type { EventLog, TcgEvent } from './parse.ts'
import {
  decodeImageLoad,
  decodeSignatureDataEntries,
  decodeSignatureLists,
  decodeUefiVariable,
  eventString,
  signatureDataHexes,
  type UefiVariable,
} from './payload.ts'
import type { MbDigest, MbKernel, MbPolicy, MbRefState, MbSignature } from './refstate.ts'

export interface MbPolicyFailure {
  /** Event index in the log, or null for a whole-log failure (e.g. no kernel entry matches). */
  eventIndex: number | null
  reason: string
}

const EFI_ACTIONS: ReadonlyMap<number, readonly string[]> = new Map([
  [1, ['Entering ROM Based Setup']],
  [4, ['Calling EFI Application from Boot Option', 'Returning from EFI Application from Boot Option']],
  [
    5,
    [
      'Exit Boot Services Invocation',
      'Exit Boot Services Returned with Failure',
      'Exit Boot Services Returned with Success',
    ],
  ],
  [6, ['UEFI Debug Mode']],
])

/** Tagged-event id the Linux EFI stub uses for the initrd it loads (EV_EVENT_TAG in PCR 9). */
const LINUX_INITRD_TAG = 0x8f3b22ec

/** What a PCR-9 event loads: the kernel, the initrd, a grub/loader file, or null for anything else. */
export function classifyPcr9(ev: TcgEvent): 'vmlinuz' | 'initrd' | 'config' | null {
  if (ev.type === EventType.EventTag) {
    return ev.data.length >= 8 &&
      Buffer.from(ev.data.buffer, ev.data.byteOffset, 4).readUInt32LE(0) === LINUX_INITRD_TAG
      ? 'initrd'
      : null
  }
  if (ev.type !== EventType.Ipl) return null
  const s = eventString(ev.data)
  if (/\/vmlinuz/.test(s) || s === 'grub_linuxefi Kernel') return 'vmlinuz'
  if (/\/initrd|\/initramfs/.test(s) || s === 'grub_linuxefi Initrd') return 'initrd'
  if (/\/loader\/entries|\/grub/.test(s)) return 'config'
  return null
}

/**
 * What a PCR-8 EV_IPL is: a grub command, or a kernel command line (grub's `kernel_cmdline: …`, older
 * `grub_kernel_cmdline …`, or a UTF-16 string as systemd-boot measures it); null for anything else.
 */
export function classifyPcr8(ev: TcgEvent): { kind: 'grub' } | { kind: 'cmdline'; text: string } | null {
  if (ev.type !== EventType.Ipl) return null
  const s = eventString(ev.data)
  if (/^grub_cmd(?:: | )/.test(s)) return { kind: 'grub' }
  const m = /^(?:grub_)?kernel_cmdline(?:: | )/.exec(s)
  if (m) return { kind: 'cmdline', text: s.slice(m[0].length) }
  if (ev.data.length >= 4 && ev.data[1] === 0 && ev.data[3] === 0) return { kind: 'cmdline', text: s }
  return null
}

export function describeEvent(ev: TcgEvent, varName?: string): string {
  return `event #${ev.index} (PCR ${ev.pcr}, ${ev.typeName}${varName ? ` ${varName}` : ''})`
}

function digestHex(ev: TcgEvent, bank: string): string | undefined {
  const d = ev.digests.find((x) => x.alg === bank)
  return d === undefined ? undefined : toHex(d.digest)
}

/** True when the event carries a digest listed in any of the allowed digests (banks not listed are ignored). */
function hasApprovedDigest(ev: TcgEvent, allowed: readonly MbDigest[]): boolean {
  for (const a of allowed) {
    for (const [bank, hex] of Object.entries(a)) if (digestHex(ev, bank) === hex) return true
  }
  return false
}

function formatDigests(allowed: readonly MbDigest[]): string {
  return (
    allowed
      .map((a) =>
        Object.entries(a)
          .map(([b, h]) => `${b}:${h}`)
          .join('|'),
      )
      .join(', ') || 'nothing'
  )
}

function digestMatchesData(ev: TcgEvent, data: Uint8Array): boolean {
  let checked = 0
  for (const d of ev.digests) {
    if (!isBankName(d.alg)) continue
    const h = createHash(NODE_HASH[d.alg]).update(data).digest()
    if (!h.equals(d.digest)) return false
    checked++
  }
  return checked > 0
}

function signatureKey(s: MbSignature): string {
  return `${s.owner}/${s.data}`
}

class SignatureSet {
  private readonly keys = new Set<string>()
  constructor(sigs: readonly MbSignature[]) {
    for (const s of sigs) {
      this.keys.add(signatureKey(s))
      this.keys.add(signatureKey({ owner: swappedGuid(s.owner), data: s.data }))
    }
  }
  has(owner: string, data: string): boolean {
    return this.keys.has(`${owner}/${data}`)
  }
  get empty(): boolean {
    return this.keys.size === 0
  }
}

interface Compiled {
  ref: MbRefState
  pk: SignatureSet
  kek: SignatureSet
  db: SignatureSet
  vendorDb: SignatureSet
}

const compiledCache = new WeakMap<MbRefState, Compiled>()

function compile(ref: MbRefState): Compiled {
  let c = compiledCache.get(ref)
  if (c === undefined) {
    c = {
      ref,
      pk: new SignatureSet(ref.pk),
      kek: new SignatureSet(ref.kek),
      db: new SignatureSet(ref.db),
      vendorDb: new SignatureSet(ref.vendorDb),
    }
    compiledCache.set(ref, c)
  }
  return c
}

class Evaluation {
  readonly failures: MbPolicyFailure[] = []
  private readonly counts = new Map<string, number>()
  readonly bsas: TcgEvent[] = []
  readonly initrds: TcgEvent[] = []
  readonly vmlinuz: TcgEvent[] = []
  readonly otherPcr9: TcgEvent[] = []
  readonly cmdlines: { ev: TcgEvent; text: string; raw: string }[] = []
  readonly scrtm: TcgEvent[] = []
  readonly firmware: TcgEvent[] = []
  secureBootSeen = false

  constructor(readonly c: Compiled) {}

  fail(ev: TcgEvent | null, reason: string, varName?: string): void {
    this.failures.push({
      eventIndex: ev === null ? null : ev.index,
      reason: ev === null ? reason : `${describeEvent(ev, varName)} ${reason}`,
    })
  }

  /** Counts an occurrence; fails the event when it appears more than `max` times. */
  limit(ev: TcgEvent, key: string, max = 1, varName?: string): boolean {
    const n = (this.counts.get(key) ?? 0) + 1
    this.counts.set(key, n)
    if (n > max) {
      this.fail(ev, max === 1 ? 'appears more than once' : `appears more than ${max} times`, varName)
      return false
    }
    return true
  }
}

function checkSeparator(e: Evaluation, ev: TcgEvent) {
  const hex = toHex(ev.data)
  if (hex !== '00000000' && hex !== 'ffffffff')
    return e.fail(ev, `has data ${hex}, expected 00000000 or ffffffff`)
  if (!digestMatchesData(ev, ev.data)) e.fail(ev, 'digest is not the hash of its data')
}

function checkEfiAction(e: Evaluation, ev: TcgEvent) {
  const allowed = EFI_ACTIONS.get(ev.pcr)
  const text = eventString(ev.data)
  if (allowed === undefined) return e.fail(ev, `is not expected in PCR ${ev.pcr} by the PC Client spec`)
  if (!allowed.includes(text)) return e.fail(ev, `has unexpected action ${JSON.stringify(text)}`)
  if (!digestMatchesData(ev, ev.data)) e.fail(ev, 'digest is not the hash of its action string')
}

function sameGuid(a: string, canonical: string): boolean {
  return a === canonical || a === swappedGuid(canonical)
}

function checkKeyVariable(
  e: Evaluation,
  ev: TcgEvent,
  v: UefiVariable,
  allowedTypes: readonly string[] | null,
  allowed: SignatureSet,
) {
  const lists = decodeSignatureLists(v.data)
  if (lists === null) return e.fail(ev, 'has malformed EFI_SIGNATURE_LIST data', v.unicodeName)
  if (!e.c.ref.hasSecureBoot && allowed.empty) return
  for (const [i, l] of lists.entries()) {
    if (allowedTypes !== null && !allowedTypes.includes(l.SignatureType)) {
      e.fail(
        ev,
        `list ${i} has signature type ${l.SignatureType}, expected ${allowedTypes.join(' or ')}`,
        v.unicodeName,
      )
      continue
    }
    for (const [k, key] of l.Keys.entries()) {
      if (!allowed.has(key.SignatureOwner, key.SignatureData)) {
        e.fail(
          ev,
          `list ${i} entry ${k} (owner ${key.SignatureOwner}, data ${key.SignatureData.slice(0, 32)}…) is not in the reference state`,
          v.unicodeName,
        )
      }
    }
  }
}

function checkDbx(e: Evaluation, ev: TcgEvent, v: UefiVariable) {
  const entries = signatureDataHexes(v.data)
  if (entries === null) return e.fail(ev, 'has malformed EFI_SIGNATURE_LIST data', v.unicodeName)
  const present = new Set(entries)
  const missing = e.c.ref.dbx.filter((s) => !present.has(s.data))
  if (missing.length > 0 && !(!e.c.ref.hasSecureBoot && e.c.ref.dbx.length === 0)) {
    e.fail(
      ev,
      `lacks ${missing.length} revocation(s) of the reference state, e.g. ${missing[0]?.data.slice(0, 64)}`,
      v.unicodeName,
    )
  }
}

function checkDriverConfig(e: Evaluation, ev: TcgEvent) {
  const v = decodeUefiVariable(ev.data)
  if (v === null) return e.fail(ev, 'has malformed UEFI_VARIABLE_DATA')
  const name = v.unicodeName
  const global = sameGuid(v.variableName, Guid.EfiGlobalVariable)
  const secdb = sameGuid(v.variableName, Guid.ImageSecurityDatabase)
  const ref = e.c.ref
  if (global && name === 'SecureBoot') {
    if (!e.limit(ev, 'var:SecureBoot', 1, name)) return
    e.secureBootSeen = true
    const enabled = v.data.length > 0 && v.data[0] === 1
    if (enabled !== ref.hasSecureBoot) {
      e.fail(
        ev,
        `says Secure Boot is ${enabled ? 'enabled' : 'disabled'}, reference state expects ${ref.hasSecureBoot ? 'enabled' : 'disabled'}`,
        name,
      )
    }
    return
  }
  if (global && (name === 'PK' || name === 'KEK')) {
    if (!e.limit(ev, `var:${name}`, 1, name)) return
    return checkKeyVariable(e, ev, v, [Guid.CertX509], name === 'PK' ? e.c.pk : e.c.kek)
  }
  if (secdb && (name === 'db' || name === 'vendor_db')) {
    if (!e.limit(ev, `var:${name}`, 1, name)) return
    return checkKeyVariable(e, ev, v, [Guid.CertX509, Guid.CertSha256], name === 'db' ? e.c.db : e.c.vendorDb)
  }
  if (secdb && name === 'dbx') {
    if (!e.limit(ev, 'var:dbx', 1, name)) return
    return checkDbx(e, ev, v)
  }
  e.fail(ev, `measures variable ${v.variableName}:${name}, which the policy does not allow in PCR 7`, name)
}

function checkAuthority(e: Evaluation, ev: TcgEvent) {
  const v = decodeUefiVariable(ev.data)
  if (v === null) return e.fail(ev, 'has malformed UEFI_VARIABLE_DATA')
  const name = v.unicodeName
  if (name === 'db' || name === 'vendor_db') {
    const set = name === 'db' ? e.c.db : e.c.vendorDb
    if (!e.c.ref.hasSecureBoot && set.empty) return
    const entries = decodeSignatureDataEntries(v.data)
    if (entries === null) return e.fail(ev, 'has malformed EFI_SIGNATURE_DATA', name)
    for (const s of entries) {
      if (!set.has(s.SignatureOwner, s.SignatureData)) {
        e.fail(
          ev,
          `names a signer that is not in the reference state's ${name} (owner ${s.SignatureOwner})`,
          name,
        )
      }
    }
    return
  }
  // shim logs its built-in certificate once per image it verifies with it
  if (name === 'Shim') return
  if (['SbatLevel', 'MokListTrusted', 'MokListRT', 'MokList'].includes(name)) {
    e.limit(ev, `auth:${name}`, 1, name)
    return
  }
  e.fail(ev, `has authority ${name}, which the policy does not know`, name)
}

function checkIpl(e: Evaluation, ev: TcgEvent) {
  const s = eventString(ev.data)
  if (ev.pcr === 14) {
    if (s === 'MokList') {
      if (!hasApprovedDigest(ev, e.c.ref.mokdig))
        e.fail(ev, `MokList digest is not one of ${formatDigests(e.c.ref.mokdig)}`)
    } else if (s === 'MokListX') {
      if (!hasApprovedDigest(ev, e.c.ref.mokxdig))
        e.fail(ev, `MokListX digest is not one of ${formatDigests(e.c.ref.mokxdig)}`)
    } else if (s === 'MokListTrusted') e.limit(ev, 'ipl:MokListTrusted')
    else e.fail(ev, `has unexpected string ${JSON.stringify(s.slice(0, 80))}`)
    return
  }
  if (ev.pcr === 8) {
    const c = classifyPcr8(ev)
    if (c?.kind === 'cmdline') e.cmdlines.push({ ev, text: c.text, raw: s })
    else if (c === null) e.fail(ev, `has unexpected string ${JSON.stringify(s.slice(0, 80))}`)
    return
  }
  if (ev.pcr === 9) {
    const kind = classifyPcr9(ev)
    if (kind === 'vmlinuz') e.vmlinuz.push(ev)
    else if (kind === 'initrd') e.initrds.push(ev)
    else if (kind === null) e.otherPcr9.push(ev)
    return
  }
  e.fail(ev, 'is not expected in this PCR')
}

function route(e: Evaluation, ev: TcgEvent) {
  const t = ev.type
  if (t === EventType.Separator) return checkSeparator(e, ev)
  if (t === EventType.EfiAction) return checkEfiAction(e, ev)
  switch (ev.pcr) {
    case 0:
      if (t === EventType.SCrtmVersion) e.scrtm.push(ev)
      else if (t === EventType.EfiPlatformFirmwareBlob || t === EventType.EfiPlatformFirmwareBlob2)
        e.firmware.push(ev)
      // other PCR-0 events (POST codes, non-host info, S-CRTM contents, H-CRTM, vendor types) carry no refstate
      // field; PCR 0 itself is checked by replay against the quote
      return
    case 1:
      if (
        t === EventType.CpuMicrocode ||
        t === EventType.EfiHandoffTables ||
        t === EventType.EfiHandoffTables2
      ) {
        e.limit(ev, `type:${t}`)
      } else if (t === EventType.EfiVariableBoot || t === EventType.EfiVariableBoot2) {
        const v = decodeUefiVariable(ev.data)
        if (v === null) e.fail(ev, 'has malformed UEFI_VARIABLE_DATA')
        else if (
          !sameGuid(v.variableName, Guid.EfiGlobalVariable) ||
          !/^(BootOrder|Boot[0-9a-fA-F]{4})$/.test(v.unicodeName)
        ) {
          e.fail(ev, `measures unexpected boot variable ${v.variableName}:${v.unicodeName}`)
        }
      } else if (
        t !== EventType.PlatformConfigFlags &&
        t !== EventType.EfiVariableDriverConfig &&
        t !== EventType.TableOfDevices &&
        t !== EventType.NonhostConfig
      ) {
        e.fail(ev, 'is not expected in PCR 1')
      }
      return
    case 2:
      // option ROMs and drivers: not described by a refstate; PCR 2 is checked by replay
      return
    case 4:
      if (t === EventType.EfiBootServicesApplication) {
        const img = decodeImageLoad(ev.data)
        if (img !== null && isFirmwareVolumePath(img.DevicePath)) return
        e.bsas.push(ev)
      } else e.fail(ev, 'is not expected in PCR 4')
      return
    case 5:
      if (t === EventType.EfiGptEvent || t === EventType.EfiGptEvent2) e.limit(ev, 'gpt')
      else e.fail(ev, 'is not expected in PCR 5')
      return
    case 6:
      if (t !== EventType.CompactHash) e.fail(ev, 'is not expected in PCR 6')
      return
    case 7:
      if (t === EventType.EfiVariableDriverConfig) checkDriverConfig(e, ev)
      else if (t === EventType.EfiVariableAuthority) checkAuthority(e, ev)
      else e.fail(ev, 'is not expected in PCR 7')
      return
    case 8:
    case 9:
    case 14:
      if (t === EventType.Ipl) checkIpl(e, ev)
      else if (ev.pcr === 9 && classifyPcr9(ev) === 'initrd') e.initrds.push(ev)
      else e.fail(ev, `is not expected in PCR ${ev.pcr}`)
      return
    default:
      e.fail(ev, `is not expected in PCR ${ev.pcr}`)
  }
}

const sha256Of = (ev: TcgEvent) => digestHex(ev, 'sha256')

/** Why a kernel entry does not describe the log, or null when it does. */
function kernelMismatch(e: Evaluation, k: MbKernel): string | null {
  const apps = e.bsas.map((ev) => sha256Of(ev) ?? '(no sha256)')
  if (k.bootApps !== undefined) {
    if (apps.join() !== k.bootApps.join())
      return `boot applications [${apps.join(', ')}] are not [${k.bootApps.join(', ')}]`
  } else if (k.kernel !== undefined) {
    const a = [k.shim, k.grub, k.kernel]
    if (apps.join() !== a.join() && apps.join() !== [...a, k.kernel].join()) {
      return `boot applications [${apps.join(', ')}] are not shim, grub, kernel [${a.join(', ')}]`
    }
  } else if (apps.join() !== [k.shim, k.grub].join()) {
    return `boot applications [${apps.join(', ')}] are not shim, grub [${k.shim}, ${k.grub}]`
  }
  if (k.initrd !== undefined) {
    if (e.initrds.length !== 1) return `expected one initrd measurement, found ${e.initrds.length}`
    const got = sha256Of(e.initrds[0] as TcgEvent)
    if (got !== k.initrd) return `initrd digest ${got} is not ${k.initrd}`
  } else if (e.initrds.length > 0) return `no initrd measurement expected, found ${e.initrds.length}`
  if (k.vmlinuz !== undefined) {
    if (e.vmlinuz.length !== 1) return `expected one vmlinuz measurement, found ${e.vmlinuz.length}`
    const got = sha256Of(e.vmlinuz[0] as TcgEvent)
    if (got !== k.vmlinuz) return `vmlinuz digest ${got} is not ${k.vmlinuz}`
  } else if (k.kernel !== undefined && k.bootApps === undefined) {
    if (e.vmlinuz.length !== 1) return `expected one vmlinuz measurement, found ${e.vmlinuz.length}`
  } else if (e.vmlinuz.length > 0) return `no vmlinuz measurement expected, found ${e.vmlinuz.length}`
  const extra = new Set(k.extraPcr9 ?? [])
  for (const ev of e.otherPcr9) {
    const got = sha256Of(ev) ?? ''
    if (!extra.has(got)) {
      return `${describeEvent(ev)} loads ${JSON.stringify(eventString(ev.data).slice(0, 120))} (sha256 ${got}), which the entry does not list`
    }
  }
  if (k.cmdlineRegex !== undefined) {
    if (e.cmdlines.length !== 1) return `expected one kernel command line, found ${e.cmdlines.length}`
    const c = e.cmdlines[0] as { text: string; raw: string }
    if (!k.cmdlineRegex.test(c.text) && !k.cmdlineUpstreamRegex?.test(c.raw)) {
      return `kernel command line ${JSON.stringify(c.text.slice(0, 200))} does not match ${k.cmdline}`
    }
  } else if (e.cmdlines.length > 0) return `no kernel command line expected, found ${e.cmdlines.length}`
  return null
}

function scrtmMismatch(
  e: Evaluation,
  s: { scrtm: MbDigest | null; platformFirmware: MbDigest[] },
): string | null {
  if (s.scrtm !== null && Object.keys(s.scrtm).length > 0) {
    if (e.scrtm.length !== 1) return `expected one S-CRTM version event, found ${e.scrtm.length}`
    if (!hasApprovedDigest(e.scrtm[0] as TcgEvent, [s.scrtm]))
      return `S-CRTM version digest is not ${formatDigests([s.scrtm])}`
  } else if (e.scrtm.length > 0) return `expected no S-CRTM version event, found ${e.scrtm.length}`
  if (e.firmware.length !== s.platformFirmware.length) {
    return `found ${e.firmware.length} platform firmware blobs, expected ${s.platformFirmware.length}`
  }
  for (const [i, ev] of e.firmware.entries()) {
    const want = s.platformFirmware[i] as MbDigest
    if (!hasApprovedDigest(ev, [want]))
      return `platform firmware blob ${i} (${describeEvent(ev)}) is not ${formatDigests([want])}`
  }
  return null
}

/** Evaluates the reference state against the log; returns every failure (empty = pass). */
export function explainMbPolicy(policy: MbPolicy, log: EventLog): MbPolicyFailure[] {
  if (policy.refstate === null || policy.engine === 'accept-all') return []
  if (policy.engine === 'reject-all') return [{ eventIndex: null, reason: 'reject all' }]
  const e = new Evaluation(compile(policy.refstate))
  const relevant = new Set([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14])
  for (const ev of log.events) {
    if (ev.type === EventType.NoAction || !relevant.has(ev.pcr)) continue
    route(e, ev)
  }
  const ref = policy.refstate
  if (ref.hasSecureBoot && !e.secureBootSeen) e.fail(null, 'the log has no SecureBoot variable measurement')
  const kernelReasons = ref.kernels.map((k) => kernelMismatch(e, k))
  if (!kernelReasons.includes(null)) {
    e.fail(
      null,
      ref.kernels.length === 0
        ? 'the reference state lists no kernels'
        : `no kernel entry matches: ${kernelReasons.map((r, i) => `[${i}] ${r}`).join('; ')}`,
    )
  }
  if (ref.scrtmAndBios !== null) {
    const reasons = ref.scrtmAndBios.map((s) => scrtmMismatch(e, s))
    if (!reasons.includes(null)) {
      e.fail(
        null,
        reasons.length === 0
          ? 'the reference state lists no S-CRTM/firmware'
          : `no scrtm_and_bios entry matches: ${reasons.map((r, i) => `[${i}] ${r}`).join('; ')}`,
      )
    }
  }
  return e.failures
}

/**
 * Evaluates a measured-boot policy; a failure is the upstream event `measured_boot.policy_<engine>` whose
 * context names every failing event and reason.
 */
export function evaluateMbPolicy(policy: MbPolicy, log: EventLog): Verdict {
  const failures = explainMbPolicy(policy, log)
  if (failures.length === 0) return PASS
  return {
    ok: false,
    events: [
      failure(`measured_boot.policy_${policy.engine}`, {
        context: 'Boot attestation failed',
        policy: policy.engine,
        refstate: JSON.stringify(policy.source),
        reason: failures.map((f) => f.reason).join('; '),
        failures,
      }),
    ],
  }
}
