/**
 * A synthetic UEFI measured-boot event log, for the demo and tests on machines that have no real one: the
 * TCG PC Client crypto-agile format (PFP §10: a SHA1-format Spec ID header, then TCG_PCR_EVENT2 records with sha1
 * and sha256 digests) of an imagined x86-64 machine booting firmware → shim → grub → Linux with Secure Boot on.
 *
 * The structures are real (UEFI_VARIABLE_DATA, EFI_SIGNATURE_LISTs holding X.509 certificates generated at runtime,
 * EFI_LOAD_OPTION and device paths, UEFI_IMAGE_LOAD_EVENT, UEFI_GPT_DATA, grub's PCR 8/9 strings, shim's MOK and
 * SBAT measurements), and every digest is computed the way the firmware, shim or grub computes it for that event
 * type. What is not real are the measured binaries: there are no PE images, firmware volumes or files, so each one
 * is stood in for by the ASCII text `keylime-ts synthetic <what>` and its digest is the bank's hash of that text
 * (for boot applications this replaces the Authenticode hash; for grub's files, the plain file hash). The texts
 * are listed next to each event below; `SyntheticEventLog.digests` gives the sha256 values.
 *
 * The same `SecureBootKeys` and options give byte-identical logs, so a test can build a log, a reference state
 * from it, and variants that differ in one respect (another kernel build, Secure Boot off, StartupLocality 3).
 */
import { createHash, randomBytes } from 'node:crypto'
import { type CryptoKeyPair, subtle, x509 } from '../crypto/x509-setup.ts'
import { EventType, Guid } from '../evidence/mb/constants.ts'

/** DER certificates of the Secure Boot hierarchy (the private keys are not kept: nothing is signed). */
export interface SecureBootKeys {
  /** Platform Key (PK). */
  pk: Buffer
  /** Key Exchange Key (KEK). */
  kek: Buffer
  /** The db certificate that verifies shim (in real machines, the UEFI third-party CA). */
  db: Buffer
  /** The distribution's certificate built into shim (vendor_db), which verifies grub and the kernel. */
  distro: Buffer
}

export interface SyntheticEventLogOptions {
  keys: SecureBootKeys
  /** Value of the SecureBoot variable (default true). Off: no image is verified, so no authority is logged. */
  secureBoot?: boolean
  /** Kernel release in file names (default `6.8.0-keylime`). */
  kernelRelease?: string
  /**
   * Identity of the kernel binary (default: the release): change it for "same file name, different kernel", which
   * changes the kernel's Authenticode digest (PCR 4) and its file digest (PCR 9).
   */
  kernelBuild?: string
  /** Kernel arguments after the image path (default `root=UUID=… ro quiet`). */
  cmdline?: string
  /** Adds a StartupLocality event: 3 means the TPM was started at locality 3 and PCR 0 starts at 00…03. */
  startupLocality?: 0 | 3
  /** Firmware version (the EV_S_CRTM_VERSION string and the firmware volumes' identity), default `1.00`. */
  firmwareVersion?: string
}

export interface SyntheticEventLog {
  bytes: Buffer
  /** sha256 (lowercase hex) of the boot chain as measured: Authenticode stand-ins (PCR 4) and files (PCR 9). */
  digests: { shim: string; grub: string; kernel: string; vmlinuz: string; initrd: string }
}

// ---------------------------------------------------------------- identifiers

/** SignatureOwner of the platform's own PK/KEK/db/dbx entries (a made-up OEM GUID). */
export const SYNTHETIC_PLATFORM_OWNER = '6b657973-7473-4f45-4d00-706c6174666d'
/** SignatureOwner of the distribution's certificate in shim's vendor_db (made up). */
export const SYNTHETIC_DISTRO_OWNER = '6b657973-7473-4449-5354-524f00000001'
const DISK_GUID = '3c1b5a2e-8f4d-4e61-9a77-0b6e2f5d1c08'
const ESP_PARTITION_GUID = 'a1f0c4d2-5b3e-4c7a-8e19-2d6f4b8a9c31'
const ROOT_PARTITION_GUID = 'e7d2b9a4-1c6f-4a53-b8e0-9f3a5c2d7e64'
const ROOT_FS_UUID = '5f2c8e1a-7b4d-4c39-a6e2-1d8f0b3c9a75'
const ESP_TYPE = 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b'
const LINUX_FS_TYPE = '0fc63daf-8483-4772-8e79-3d69d8477de4'
const SMBIOS_TABLE = 'eb9d2d31-2d88-11d3-9a16-0090273fc14d'
/** EDK2's firmware volume and UiApp file GUIDs (the "UiApp" boot option of OVMF). */
const UIAPP_VOLUME = '7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1'
const UIAPP_FILE = '462caa21-7614-4503-836e-8ab6f4662331'

const ESP_START = 0x800n
const ESP_SIZE = 0x100000n
const ROOT_START = ESP_START + ESP_SIZE
const ROOT_SIZE = 0x1f00000n
const DISK_LBAS = 0x2000000n

// ---------------------------------------------------------------- encoders

const u16 = (v: number) => {
  const b = Buffer.alloc(2)
  b.writeUInt16LE(v)
  return b
}
const u32 = (v: number) => {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(v)
  return b
}
const u64 = (v: bigint | number) => {
  const b = Buffer.alloc(8)
  b.writeBigUInt64LE(BigInt(v))
  return b
}
const ucs2 = (s: string) => Buffer.from(s, 'utf16le')
const ucs2z = (s: string) => Buffer.from(`${s}\0`, 'utf16le')

/** EFI_GUID bytes of a GUID's text form: the first three fields little-endian, the last 8 bytes in order. */
export function guidBytes(text: string): Buffer {
  const hex = text.replace(/-/g, '')
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Error(`not a GUID: ${text}`)
  const b = Buffer.from(hex, 'hex')
  return Buffer.concat([
    b.subarray(0, 4).reverse(),
    b.subarray(4, 6).reverse(),
    b.subarray(6, 8).reverse(),
    b.subarray(8),
  ])
}

/** The bytes a synthetic binary stands for (see the header comment). */
const standIn = (what: string) => Buffer.from(`keylime-ts synthetic ${what}`, 'ascii')
const sha256Hex = (b: Buffer) => createHash('sha256').update(b).digest('hex')

/** UEFI_VARIABLE_DATA (PFP §10.4.6.2). */
function variableData(vendor: string, name: string, data: Buffer): Buffer {
  return Buffer.concat([guidBytes(vendor), u64(name.length), u64(data.length), ucs2(name), data])
}

/** One EFI_SIGNATURE_LIST whose entries all have the same size (UEFI §32.4.1). */
function signatureList(type: string, owner: string, entries: Buffer[]): Buffer {
  const size = 16 + (entries[0]?.length ?? 0)
  if (entries.some((e) => 16 + e.length !== size)) throw new Error('signature list entries differ in size')
  const body = entries.map((e) => Buffer.concat([guidBytes(owner), e]))
  return Buffer.concat([guidBytes(type), u32(28 + size * entries.length), u32(0), u32(size), ...body])
}

/** One EFI_SIGNATURE_LIST per certificate (certificates differ in length). */
const x509Lists = (owner: string, certs: Buffer[]) =>
  Buffer.concat(certs.map((c) => signatureList(Guid.CertX509, owner, [c])))

/** EFI_SIGNATURE_DATA without a list header, as EV_EFI_VARIABLE_AUTHORITY logs the entry that verified an image. */
const signatureData = (owner: string, data: Buffer) => Buffer.concat([guidBytes(owner), data])

// Device path nodes (UEFI §10.3): {type, subtype, u16 length incl. the header, data}.
const node = (type: number, sub: number, data: Buffer) =>
  Buffer.concat([Buffer.from([type, sub]), u16(4 + data.length), data])
const pciRoot = (uid: number) => node(2, 1, Buffer.concat([u32(0x0a0341d0), u32(uid)]))
const pci = (device: number, fn: number) => node(1, 1, Buffer.from([fn, device]))
const nvme = (namespace: number) => node(3, 23, Buffer.concat([u32(namespace), Buffer.alloc(8)]))
const hardDrive = (part: number, start: bigint, size: bigint, guid: string) =>
  node(4, 1, Buffer.concat([u32(part), u64(start), u64(size), guidBytes(guid), Buffer.from([2, 2])]))
const filePath = (path: string) => node(4, 4, ucs2z(path))
const fvVolume = (guid: string) => node(4, 7, guidBytes(guid))
const fvFile = (guid: string) => node(4, 6, guidBytes(guid))
const END = node(0x7f, 0xff, Buffer.alloc(0))
const devicePath = (...nodes: Buffer[]) => Buffer.concat([...nodes, END])

const espFile = (path: string) =>
  devicePath(
    pciRoot(0),
    pci(4, 0),
    nvme(1),
    hardDrive(1, ESP_START, ESP_SIZE, ESP_PARTITION_GUID),
    filePath(path),
  )

/** UEFI_IMAGE_LOAD_EVENT (PFP §10.4.6.3). */
function imageLoad(address: number, length: number, path: Buffer): Buffer {
  return Buffer.concat([u64(address), u64(length), u64(0), u64(path.length), path])
}

/** EFI_LOAD_OPTION (UEFI §3.1.3), active. */
function loadOption(description: string, path: Buffer): Buffer {
  return Buffer.concat([u32(1), u16(path.length), ucs2z(description), path])
}

/** CRC-32 as GPT headers use it (IEEE 802.3, reflected). */
function crc32(data: Buffer): number {
  let crc = 0xffffffff
  for (const byte of data) {
    crc ^= byte
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1
  }
  return (crc ^ 0xffffffff) >>> 0
}

/** UEFI_GPT_DATA (PFP §10.4.6.5): the GPT header, then the non-empty partition entries. */
function gptData(): Buffer {
  const entry = (type: string, unique: string, first: bigint, last: bigint, name: string) => {
    const e = Buffer.alloc(128)
    guidBytes(type).copy(e, 0)
    guidBytes(unique).copy(e, 16)
    e.writeBigUInt64LE(first, 32)
    e.writeBigUInt64LE(last, 40)
    ucs2(name).copy(e, 56)
    return e
  }
  const entries = [
    entry(ESP_TYPE, ESP_PARTITION_GUID, ESP_START, ESP_START + ESP_SIZE - 1n, 'EFI System Partition'),
    entry(LINUX_FS_TYPE, ROOT_PARTITION_GUID, ROOT_START, ROOT_START + ROOT_SIZE - 1n, 'root'),
  ]
  const table = Buffer.alloc(128 * 128)
  for (const [i, e] of entries.entries()) e.copy(table, i * 128)
  const header = Buffer.alloc(92)
  header.write('EFI PART', 0, 'latin1')
  header.writeUInt32LE(0x00010000, 8)
  header.writeUInt32LE(92, 12)
  header.writeBigUInt64LE(1n, 24)
  header.writeBigUInt64LE(DISK_LBAS - 1n, 32)
  header.writeBigUInt64LE(34n, 40)
  header.writeBigUInt64LE(DISK_LBAS - 34n, 48)
  guidBytes(DISK_GUID).copy(header, 56)
  header.writeBigUInt64LE(2n, 72)
  header.writeUInt32LE(128, 80)
  header.writeUInt32LE(128, 84)
  header.writeUInt32LE(crc32(table), 88)
  header.writeUInt32LE(crc32(header), 16) // computed with the CRC field still zero, as the spec says
  return Buffer.concat([header, u64(entries.length), ...entries])
}

// ---------------------------------------------------------------- the log

class LogWriter {
  private readonly records: Buffer[] = []

  constructor() {
    // TCG_EfiSpecIDEventStruct: client platform, PFP 2.0 errata 2, 64-bit UINTN, sha1 and sha256 banks
    const specId = Buffer.concat([
      Buffer.from('Spec ID Event03\0', 'latin1'),
      u32(0),
      Buffer.from([0, 2, 2, 2]),
      u32(2),
      u16(0x0004),
      u16(20),
      u16(0x000b),
      u16(32),
      Buffer.from([0]),
    ])
    // the header is a SHA1-format TCG_PCR_EVENT: PCR 0, EV_NO_ACTION, 20 zero bytes of digest
    this.records.push(
      Buffer.concat([u32(0), u32(EventType.NoAction), Buffer.alloc(20), u32(specId.length), specId]),
    )
  }

  private push(pcr: number, type: number, sha1: Buffer, sha256: Buffer, data: Buffer): void {
    this.records.push(
      Buffer.concat([
        u32(pcr),
        u32(type),
        u32(2),
        u16(0x0004),
        sha1,
        u16(0x000b),
        sha256,
        u32(data.length),
        data,
      ]),
    )
  }

  /** A measured event: the digests are the hash of `measured` (by default the event data itself). */
  event(pcr: number, type: number, data: Buffer, measured: Buffer = data): void {
    this.push(
      pcr,
      type,
      createHash('sha1').update(measured).digest(),
      createHash('sha256').update(measured).digest(),
      data,
    )
  }

  /** EV_NO_ACTION: informational, zero digests, never extended. */
  noAction(pcr: number, data: Buffer): void {
    this.push(pcr, EventType.NoAction, Buffer.alloc(20), Buffer.alloc(32), data)
  }

  /** grub's command and kernel command line strings: the string with its NUL is logged, the text is measured. */
  grubString(pcr: number, logged: string, measured: string): void {
    this.event(pcr, EventType.Ipl, Buffer.from(`${logged}\0`, 'utf8'), Buffer.from(measured, 'utf8'))
  }

  bytes(): Buffer {
    return Buffer.concat(this.records)
  }
}

const SEPARATOR = Buffer.alloc(4)
const DBX_REVOKED = ['bootloader with CVE-2020-10713', 'bootloader with CVE-2022-28737', 'old shim 15.4']

/** Writes the log. Pure given its options (same keys and options → same bytes). */
export function syntheticEventLog(options: SyntheticEventLogOptions): SyntheticEventLog {
  const { keys } = options
  const secureBoot = options.secureBoot ?? true
  const release = options.kernelRelease ?? '6.8.0-keylime'
  const build = options.kernelBuild ?? release
  const firmware = options.firmwareVersion ?? '1.00'
  const vmlinuzPath = `(hd0,gpt2)/vmlinuz-${release}`
  const initrdPath = `(hd0,gpt2)/initrd.img-${release}`
  const kernelArgs = options.cmdline ?? `root=UUID=${ROOT_FS_UUID} ro quiet`
  const log = new LogWriter()

  if (options.startupLocality !== undefined) {
    log.noAction(
      0,
      Buffer.concat([Buffer.from('StartupLocality\0', 'latin1'), Buffer.from([options.startupLocality])]),
    )
  }

  // PCR 0: firmware version string (measured as logged) and the two firmware volumes (PEI, DXE)
  log.event(0, EventType.SCrtmVersion, ucs2z(firmware))
  log.event(
    0,
    EventType.EfiPlatformFirmwareBlob,
    Buffer.concat([u64(0x820000), u64(0xe0000)]),
    standIn(`firmware volume PEIFV ${firmware}`),
  )
  log.event(
    0,
    EventType.EfiPlatformFirmwareBlob,
    Buffer.concat([u64(0x900000), u64(0xe80000)]),
    standIn(`firmware volume DXEFV ${firmware}`),
  )

  // PCR 7: Secure Boot configuration; the digest covers the whole UEFI_VARIABLE_DATA
  const sbVariable = (vendor: string, name: string, data: Buffer) =>
    log.event(7, EventType.EfiVariableDriverConfig, variableData(vendor, name, data))
  sbVariable(Guid.EfiGlobalVariable, 'SecureBoot', Buffer.from([secureBoot ? 1 : 0]))
  sbVariable(Guid.EfiGlobalVariable, 'PK', x509Lists(SYNTHETIC_PLATFORM_OWNER, [keys.pk]))
  sbVariable(Guid.EfiGlobalVariable, 'KEK', x509Lists(SYNTHETIC_PLATFORM_OWNER, [keys.kek]))
  sbVariable(
    Guid.ImageSecurityDatabase,
    'db',
    Buffer.concat([
      x509Lists(SYNTHETIC_PLATFORM_OWNER, [keys.db]),
      // an allowed image by hash, as some OEMs ship
      signatureList(Guid.CertSha256, SYNTHETIC_PLATFORM_OWNER, [
        createHash('sha256').update(standIn('OEM diagnostics app')).digest(),
      ]),
    ]),
  )
  sbVariable(
    Guid.ImageSecurityDatabase,
    'dbx',
    signatureList(
      Guid.CertSha256,
      SYNTHETIC_PLATFORM_OWNER,
      DBX_REVOKED.map((r) => createHash('sha256').update(standIn(r)).digest()),
    ),
  )
  log.event(7, EventType.Separator, SEPARATOR)

  // PCR 1: SMBIOS table pointer, boot order and boot options (the digest covers VariableData only)
  log.event(
    1,
    EventType.EfiHandoffTables,
    Buffer.concat([u64(1), guidBytes(SMBIOS_TABLE), u64(0x7f6c7000)]),
    standIn(`SMBIOS tables ${firmware}`),
  )
  const bootOrder = Buffer.concat([u16(1), u16(0)])
  const boot0001 = loadOption('Keylime TS demo Linux', espFile('\\EFI\\keylime\\shimx64.efi'))
  const boot0000 = loadOption('UiApp', devicePath(fvVolume(UIAPP_VOLUME), fvFile(UIAPP_FILE)))
  for (const [name, data] of [
    ['BootOrder', bootOrder],
    ['Boot0001', boot0001],
    ['Boot0000', boot0000],
  ] as const) {
    log.event(1, EventType.EfiVariableBoot, variableData(Guid.EfiGlobalVariable, name, data), data)
  }

  // PCR 4: the boot manager starts Boot0001; PCRs 0-6 get their separators
  log.event(4, EventType.EfiAction, Buffer.from('Calling EFI Application from Boot Option', 'ascii'))
  for (let pcr = 0; pcr <= 6; pcr++) log.event(pcr, EventType.Separator, SEPARATOR)

  // firmware verifies shim with the db certificate and measures which one did (PCR 7), the disk (PCR 5), shim (PCR 4)
  if (secureBoot) {
    log.event(
      7,
      EventType.EfiVariableAuthority,
      variableData(Guid.ImageSecurityDatabase, 'db', signatureData(SYNTHETIC_PLATFORM_OWNER, keys.db)),
    )
  }
  log.event(5, EventType.EfiGptEvent, gptData())
  const shim = standIn('shimx64.efi 15.8 authenticode')
  log.event(
    4,
    EventType.EfiBootServicesApplication,
    imageLoad(0x7d1c9018, 959_848, espFile('\\EFI\\keylime\\shimx64.efi')),
    shim,
  )

  // shim: MOK lists (PCR 14, the digest is of the variable's content), SBAT level and vendor certificate (PCR 7)
  const mokList = signatureList(Guid.CertSha256, SYNTHETIC_DISTRO_OWNER, [
    createHash('sha256').update(standIn('MOK: DKMS module signing key')).digest(),
  ])
  const mokListX = signatureList(Guid.CertSha256, SYNTHETIC_DISTRO_OWNER, [
    createHash('sha256').update(standIn('MOKX: revoked grub 2.04')).digest(),
  ])
  log.event(14, EventType.Ipl, Buffer.from('MokList\0', 'ascii'), mokList)
  log.event(14, EventType.Ipl, Buffer.from('MokListX\0', 'ascii'), mokListX)
  log.event(
    7,
    EventType.EfiVariableAuthority,
    variableData(
      Guid.Shim,
      'SbatLevel',
      Buffer.from('sbat,1,2024010900\nshim,4\ngrub,3\ngrub.debian,4\n', 'ascii'),
    ),
  )
  log.event(14, EventType.Ipl, Buffer.from('MokListTrusted\0', 'ascii'), Buffer.from([1]))
  if (secureBoot) {
    log.event(
      7,
      EventType.EfiVariableAuthority,
      variableData(
        Guid.ImageSecurityDatabase,
        'vendor_db',
        signatureData(SYNTHETIC_DISTRO_OWNER, keys.distro),
      ),
    )
  }
  const grub = standIn('grubx64.efi 2.12 authenticode')
  log.event(
    4,
    EventType.EfiBootServicesApplication,
    imageLoad(0x7ce86018, 2_541_176, devicePath(filePath('\\EFI\\keylime\\grubx64.efi'))),
    grub,
  )

  // grub: files it reads (PCR 9, plain file digests) and commands it runs (PCR 8, the command text is measured)
  const espConfig = `search --no-floppy --fs-uuid --set=dev ${ROOT_FS_UUID}\nset prefix=($dev)/grub\nconfigfile $prefix/grub.cfg\n`
  log.grubString(9, '(hd0,gpt1)/EFI/keylime/grub.cfg', espConfig)
  const commands = [
    `search --no-floppy --fs-uuid --set=dev ${ROOT_FS_UUID}`,
    'set prefix=(hd0,gpt2)/grub',
    'configfile (hd0,gpt2)/grub/grub.cfg',
  ]
  for (const c of commands) log.grubString(8, `grub_cmd: ${c}`, c)
  const entry = `menuentry 'Keylime TS demo Linux' {\n\tinsmod gzio\n\tlinux ${vmlinuzPath} ${kernelArgs}\n\tinitrd ${initrdPath}\n}`
  log.grubString(9, '(hd0,gpt2)/grub/grub.cfg', `set timeout=5\n${entry}\n`)
  // grub measures each command as it runs it: the menu entry definition, then the body of the entry booted
  for (const c of ['set timeout=5', entry, 'insmod gzio']) log.grubString(8, `grub_cmd: ${c}`, c)
  log.grubString(8, `grub_cmd: linux ${vmlinuzPath} ${kernelArgs}`, `linux ${vmlinuzPath} ${kernelArgs}`)
  const vmlinuzFile = standIn(`vmlinuz ${build} file`)
  log.event(9, EventType.Ipl, Buffer.from(`${vmlinuzPath}\0`, 'utf8'), vmlinuzFile)
  // shim verifies the kernel for grub and the firmware measures it as an image without a device path
  const kernel = standIn(`vmlinuz ${build} authenticode`)
  log.event(
    4,
    EventType.EfiBootServicesApplication,
    imageLoad(0x79d4a040, 14_456_952, Buffer.alloc(0)),
    kernel,
  )
  const cmdline = `${vmlinuzPath} ${kernelArgs}`
  log.grubString(8, `kernel_cmdline: ${cmdline}`, cmdline)
  log.grubString(8, `grub_cmd: initrd ${initrdPath}`, `initrd ${initrdPath}`)
  const initrdFile = standIn(`initrd.img-${release} file`)
  log.event(9, EventType.Ipl, Buffer.from(`${initrdPath}\0`, 'utf8'), initrdFile)

  // PCR 5: the kernel's EFI stub leaves boot services
  log.event(5, EventType.EfiAction, Buffer.from('Exit Boot Services Invocation', 'ascii'))
  log.event(5, EventType.EfiAction, Buffer.from('Exit Boot Services Returned with Success', 'ascii'))

  return {
    bytes: log.bytes(),
    digests: {
      shim: sha256Hex(shim),
      grub: sha256Hex(grub),
      kernel: sha256Hex(kernel),
      vmlinuz: sha256Hex(vmlinuzFile),
      initrd: sha256Hex(initrdFile),
    },
  }
}

// ---------------------------------------------------------------- certificates

async function selfSignedCertificate(commonName: string, ca: boolean): Promise<Buffer> {
  const alg = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }
  const keys = (await subtle.generateKey(
    { ...alg, modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) },
    true,
    ['sign', 'verify'],
  )) as CryptoKeyPair
  const now = Date.now()
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: `01${randomBytes(15).toString('hex')}`,
    name: [{ CN: [commonName] }, { O: ['Keylime TS synthetic platform'] }],
    notBefore: new Date(now - 5 * 60_000),
    notAfter: new Date(now + 10 * 365 * 86_400_000),
    keys,
    signingAlgorithm: alg,
    extensions: [
      new x509.BasicConstraintsExtension(ca, undefined, true),
      new x509.KeyUsagesExtension(
        ca
          ? x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.digitalSignature
          : x509.KeyUsageFlags.digitalSignature,
        true,
      ),
      ...(ca ? [] : [new x509.ExtendedKeyUsageExtension(['1.3.6.1.5.5.7.3.3'], false)]), // code signing
    ],
  })
  return Buffer.from(cert.rawData)
}

/** Generates the four certificates of a Secure Boot platform (RSA-2048, as UEFI requires; ~0.5 s). */
export async function createSecureBootKeys(): Promise<SecureBootKeys> {
  const [pk, kek, db, distro] = await Promise.all([
    selfSignedCertificate('Keylime TS synthetic Platform Key', true),
    selfSignedCertificate('Keylime TS synthetic Key Exchange Key', true),
    selfSignedCertificate('Keylime TS synthetic UEFI CA', true),
    selfSignedCertificate('Keylime TS synthetic Linux distribution Secure Boot signing', false),
  ])
  return { pk, kek, db, distro }
}
