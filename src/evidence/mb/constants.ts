/** TCG PC Client PFP event types (§10.4.1) and the hash algorithms of PCR banks. */

export const EventType = Object.freeze({
  PrebootCert: 0x00,
  PostCode: 0x01,
  Unused: 0x02,
  NoAction: 0x03,
  Separator: 0x04,
  Action: 0x05,
  EventTag: 0x06,
  SCrtmContents: 0x07,
  SCrtmVersion: 0x08,
  CpuMicrocode: 0x09,
  PlatformConfigFlags: 0x0a,
  TableOfDevices: 0x0b,
  CompactHash: 0x0c,
  Ipl: 0x0d,
  IplPartitionData: 0x0e,
  NonhostCode: 0x0f,
  NonhostConfig: 0x10,
  NonhostInfo: 0x11,
  OmitBootDeviceEvents: 0x12,
  EfiVariableDriverConfig: 0x80000001,
  EfiVariableBoot: 0x80000002,
  EfiBootServicesApplication: 0x80000003,
  EfiBootServicesDriver: 0x80000004,
  EfiRuntimeServicesDriver: 0x80000005,
  EfiGptEvent: 0x80000006,
  EfiAction: 0x80000007,
  EfiPlatformFirmwareBlob: 0x80000008,
  EfiHandoffTables: 0x80000009,
  EfiPlatformFirmwareBlob2: 0x8000000a,
  EfiHandoffTables2: 0x8000000b,
  EfiVariableBoot2: 0x8000000c,
  EfiGptEvent2: 0x8000000d,
  EfiHcrtmEvent: 0x80000010,
  EfiVariableAuthority: 0x800000e0,
  EfiSpdmFirmwareBlob: 0x800000e1,
  EfiSpdmFirmwareConfig: 0x800000e2,
  EfiSpdmDevicePolicy: 0x800000e3,
  EfiSpdmDeviceAuthority: 0x800000e4,
})

const EVENT_TYPE_NAMES: ReadonlyMap<number, string> = new Map([
  [0x00, 'EV_PREBOOT_CERT'],
  [0x01, 'EV_POST_CODE'],
  [0x02, 'EV_UNUSED'],
  [0x03, 'EV_NO_ACTION'],
  [0x04, 'EV_SEPARATOR'],
  [0x05, 'EV_ACTION'],
  [0x06, 'EV_EVENT_TAG'],
  [0x07, 'EV_S_CRTM_CONTENTS'],
  [0x08, 'EV_S_CRTM_VERSION'],
  [0x09, 'EV_CPU_MICROCODE'],
  [0x0a, 'EV_PLATFORM_CONFIG_FLAGS'],
  [0x0b, 'EV_TABLE_OF_DEVICES'],
  [0x0c, 'EV_COMPACT_HASH'],
  [0x0d, 'EV_IPL'],
  [0x0e, 'EV_IPL_PARTITION_DATA'],
  [0x0f, 'EV_NONHOST_CODE'],
  [0x10, 'EV_NONHOST_CONFIG'],
  [0x11, 'EV_NONHOST_INFO'],
  [0x12, 'EV_OMIT_BOOT_DEVICE_EVENTS'],
  [0x80000001, 'EV_EFI_VARIABLE_DRIVER_CONFIG'],
  [0x80000002, 'EV_EFI_VARIABLE_BOOT'],
  [0x80000003, 'EV_EFI_BOOT_SERVICES_APPLICATION'],
  [0x80000004, 'EV_EFI_BOOT_SERVICES_DRIVER'],
  [0x80000005, 'EV_EFI_RUNTIME_SERVICES_DRIVER'],
  [0x80000006, 'EV_EFI_GPT_EVENT'],
  [0x80000007, 'EV_EFI_ACTION'],
  [0x80000008, 'EV_EFI_PLATFORM_FIRMWARE_BLOB'],
  [0x80000009, 'EV_EFI_HANDOFF_TABLES'],
  [0x8000000a, 'EV_EFI_PLATFORM_FIRMWARE_BLOB2'],
  [0x8000000b, 'EV_EFI_HANDOFF_TABLES2'],
  [0x8000000c, 'EV_EFI_VARIABLE_BOOT2'],
  [0x8000000d, 'EV_EFI_GPT_EVENT2'],
  [0x80000010, 'EV_EFI_HCRTM_EVENT'],
  [0x800000e0, 'EV_EFI_VARIABLE_AUTHORITY'],
  [0x800000e1, 'EV_EFI_SPDM_FIRMWARE_BLOB'],
  [0x800000e2, 'EV_EFI_SPDM_FIRMWARE_CONFIG'],
  [0x800000e3, 'EV_EFI_SPDM_DEVICE_POLICY'],
  [0x800000e4, 'EV_EFI_SPDM_DEVICE_AUTHORITY'],
])

/** Spec name of an event type; unknown types print as `0x` + 8 hex digits. */
export function eventTypeName(type: number): string {
  return EVENT_TYPE_NAMES.get(type) ?? `0x${type.toString(16).padStart(8, '0')}`
}

export type BankName = 'sha1' | 'sha256' | 'sha384' | 'sha512' | 'sm3_256'

export const BANK_BY_ALG_ID: ReadonlyMap<number, BankName> = new Map([
  [0x0004, 'sha1'],
  [0x000b, 'sha256'],
  [0x000c, 'sha384'],
  [0x000d, 'sha512'],
  [0x0012, 'sm3_256'],
])

export const DIGEST_SIZE: Readonly<Record<BankName, number>> = Object.freeze({
  sha1: 20,
  sha256: 32,
  sha384: 48,
  sha512: 64,
  sm3_256: 32,
})

/** node:crypto name of a bank's hash. */
export const NODE_HASH: Readonly<Record<BankName, string>> = Object.freeze({
  sha1: 'sha1',
  sha256: 'sha256',
  sha384: 'sha384',
  sha512: 'sha512',
  sm3_256: 'sm3',
})

export function isBankName(name: unknown): name is BankName {
  return typeof name === 'string' && Object.hasOwn(DIGEST_SIZE, name)
}

/** Well-known GUIDs (canonical text form). */
export const Guid = Object.freeze({
  EfiGlobalVariable: '8be4df61-93ca-11d2-aa0d-00e098032b8c',
  ImageSecurityDatabase: 'd719b2cb-3d3a-4596-a3bc-dad00e67656f',
  Shim: '605dab50-e046-4300-abb6-3dd810dd8b23',
  CertX509: 'a5c059a1-94e4-4aa7-87b5-ab155c2bf072',
  CertSha256: 'c1c41626-504c-4092-aca9-41f936934328',
})
