/**
 * Reference-state generator (`keylime policy create measured-boot`): reads a parsed log and writes a refstate in
 * upstream's JSON format, choosing our `boot_apps_authcode_sha256` kernel form when the boot chain is not
 * shim → grub → kernel (systemd-boot, UKI, GCE's grub-lakitu…), so the result always passes its own log.
 */
import { type BankName, EventType, Guid } from './constants.ts'
import { isFirmwareVolumePath } from './device-path.ts'
import { ReferenceStateError } from './errors.ts'
import { swappedGuid, toHex } from './guid.ts'
import type { EventLog, TcgEvent } from './parse.ts'
import {
  decodeImageLoad,
  decodeSignatureDataEntries,
  decodeSignatureLists,
  decodeUefiVariable,
  eventString,
} from './payload.ts'
import { classifyPcr8, classifyPcr9 } from './policy.ts'

type JsonDigest = Partial<Record<BankName, string>>
type JsonSig = { SignatureOwner: string; SignatureData: string }

/** `{"sha256": "0x…"}`, or the first bank the event carries when it has no sha256 digest. */
function digestOf(ev: TcgEvent): JsonDigest {
  const d = ev.digests.find((x) => x.alg === 'sha256') ?? ev.digests[0]
  return d === undefined ? {} : { [d.alg]: `0x${toHex(d.digest)}` }
}

const sha256 = (ev: TcgEvent) =>
  `0x${toHex(ev.digests.find((x) => x.alg === 'sha256')?.digest ?? new Uint8Array())}`

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

export interface ReferenceStateOptions {
  /** Upstream's `-i`: accept a log whose Secure Boot is off (writes has_secureboot false). */
  allowSecureBootOff?: boolean
}

export function createReferenceState(
  log: EventLog,
  options: ReferenceStateOptions = {},
): Record<string, unknown> {
  if (!log.banks.includes('sha256')) {
    throw new ReferenceStateError(
      `the log has no sha256 bank (${log.format === 'sha1' ? 'legacy SHA1 format' : log.banks.join(', ')}); reference states record sha256 digests`,
    )
  }
  const measured = log.events.filter((ev) => ev.type !== EventType.NoAction)
  const varOf = (ev: TcgEvent) => decodeUefiVariable(ev.data)
  const isGuid = (a: string, b: string) => a === b || a === swappedGuid(b)

  let hasSecureBoot = false
  const sbEvent = measured.find((ev) => {
    if (ev.type !== EventType.EfiVariableDriverConfig) return false
    const v = varOf(ev)
    return v !== null && v.unicodeName === 'SecureBoot' && isGuid(v.variableName, Guid.EfiGlobalVariable)
  })
  if (sbEvent !== undefined) {
    const v = varOf(sbEvent)
    hasSecureBoot = v !== null && v.data.length > 0 && v.data[0] === 1
  }
  if (!hasSecureBoot && !options.allowSecureBootOff) {
    throw new ReferenceStateError(
      sbEvent === undefined
        ? 'the log has no SecureBoot variable measurement (use -i to create a policy without Secure Boot)'
        : 'Secure Boot is disabled in this log (use -i to create a policy without Secure Boot)',
    )
  }

  const scrtm = measured.find((ev) => ev.pcr === 0 && ev.type === EventType.SCrtmVersion)
  const firmware = measured.filter(
    (ev) =>
      ev.pcr === 0 &&
      (ev.type === EventType.EfiPlatformFirmwareBlob || ev.type === EventType.EfiPlatformFirmwareBlob2),
  )
  const keys: Record<'pk' | 'kek' | 'db' | 'dbx', JsonSig[]> = { pk: [], kek: [], db: [], dbx: [] }
  const vendorDb: JsonSig[] = []
  const mokdig: JsonDigest[] = []
  const mokxdig: JsonDigest[] = []
  const apps: TcgEvent[] = []
  let initrd: TcgEvent | undefined
  let vmlinuz: TcgEvent | undefined
  let vmlinuzCount = 0
  let cmdline: string | undefined
  const extraPcr9: string[] = []
  for (const ev of measured) {
    if (ev.pcr === 7 && ev.type === EventType.EfiVariableDriverConfig) {
      const v = varOf(ev)
      const name = v?.unicodeName.toLowerCase()
      if (v !== null && (name === 'pk' || name === 'kek' || name === 'db' || name === 'dbx')) {
        keys[name] = (decodeSignatureLists(v.data) ?? []).flatMap((l) =>
          l.Keys.map((k) => ({ SignatureOwner: k.SignatureOwner, SignatureData: `0x${k.SignatureData}` })),
        )
      }
    } else if (ev.pcr === 7 && ev.type === EventType.EfiVariableAuthority) {
      const v = varOf(ev)
      if (v !== null && v.unicodeName === 'vendor_db') {
        for (const s of decodeSignatureDataEntries(v.data) ?? []) {
          vendorDb.push({ SignatureOwner: s.SignatureOwner, SignatureData: `0x${s.SignatureData}` })
        }
      }
    } else if (ev.pcr === 14 && ev.type === EventType.Ipl) {
      const s = eventString(ev.data)
      if (s === 'MokList') mokdig.push(digestOf(ev))
      else if (s === 'MokListX') mokxdig.push(digestOf(ev))
    } else if (ev.pcr === 4 && ev.type === EventType.EfiBootServicesApplication) {
      const img = decodeImageLoad(ev.data)
      if (img === null || !isFirmwareVolumePath(img.DevicePath)) apps.push(ev)
    } else if (ev.pcr === 9) {
      const kind = classifyPcr9(ev)
      if (kind === 'initrd' && initrd === undefined) initrd = ev
      if (kind === null) extraPcr9.push(sha256(ev))
      if (kind === 'vmlinuz') {
        vmlinuzCount++
        vmlinuz ??= ev
      }
    } else if (ev.pcr === 8 && cmdline === undefined) {
      const c = classifyPcr8(ev)
      if (c?.kind === 'cmdline') cmdline = escapeRegExp(c.text)
    }
  }

  const a = apps.map(sha256)
  const tail = {
    ...(initrd !== undefined ? { initrd_plain_sha256: sha256(initrd) } : {}),
    ...(cmdline !== undefined ? { kernel_cmdline: cmdline } : {}),
    ...(extraPcr9.length > 0 ? { extra_pcr9_plain_sha256: extraPcr9 } : {}),
  }
  let kernel: Record<string, unknown>
  const kernelTwice = a.length === 4 && a[2] === a[3]
  if (hasSecureBoot && (a.length === 3 || kernelTwice) && vmlinuzCount === 1) {
    kernel = { shim_authcode_sha256: a[0], grub_authcode_sha256: a[1], kernel_authcode_sha256: a[2], ...tail }
  } else if (!hasSecureBoot && a.length === 2 && vmlinuz !== undefined && vmlinuzCount === 1) {
    kernel = {
      shim_authcode_sha256: a[0],
      grub_authcode_sha256: a[1],
      vmlinuz_plain_sha256: sha256(vmlinuz),
      ...tail,
    }
  } else {
    kernel = {
      boot_apps_authcode_sha256: a,
      ...(vmlinuz !== undefined && vmlinuzCount === 1 ? { vmlinuz_plain_sha256: sha256(vmlinuz) } : {}),
      ...tail,
    }
  }
  return {
    has_secureboot: hasSecureBoot,
    scrtm_and_bios: [
      {
        ...(scrtm !== undefined ? { scrtm: digestOf(scrtm) } : {}),
        platform_firmware: firmware.map(digestOf),
      },
    ],
    pk: keys.pk,
    kek: keys.kek,
    db: keys.db,
    dbx: keys.dbx,
    vendor_db: vendorDb,
    mokdig,
    mokxdig,
    kernels: [kernel],
  }
}
