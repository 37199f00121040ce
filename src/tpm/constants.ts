/**
 * TPM 2.0 constants (Part 2, section 6 and the handle/property tables). Grouped frozen objects, so
 * `TpmAlg.Sha256` reads like the spec's `TPM_ALG_SHA256`.
 */

/** TPM_ALG_ID (Part 2, 6.3). */
export const TpmAlg = Object.freeze({
  Error: 0x0000,
  Rsa: 0x0001,
  Tdes: 0x0003,
  Sha1: 0x0004,
  Hmac: 0x0005,
  Aes: 0x0006,
  Mgf1: 0x0007,
  KeyedHash: 0x0008,
  Xor: 0x000a,
  Sha256: 0x000b,
  Sha384: 0x000c,
  Sha512: 0x000d,
  Null: 0x0010,
  Sm3_256: 0x0012,
  Sm4: 0x0013,
  RsaSsa: 0x0014,
  RsaEs: 0x0015,
  RsaPss: 0x0016,
  Oaep: 0x0017,
  Ecdsa: 0x0018,
  Ecdh: 0x0019,
  Ecdaa: 0x001a,
  Sm2: 0x001b,
  EcSchnorr: 0x001c,
  Ecmqv: 0x001d,
  Kdf1Sp800_56A: 0x0020,
  Kdf2: 0x0021,
  Kdf1Sp800_108: 0x0022,
  Ecc: 0x0023,
  SymCipher: 0x0025,
  Camellia: 0x0026,
  Sha3_256: 0x0027,
  Sha3_384: 0x0028,
  Sha3_512: 0x0029,
  Ctr: 0x0040,
  Ofb: 0x0041,
  Cbc: 0x0042,
  Cfb: 0x0043,
  Ecb: 0x0044,
  Cmac: 0x003f,
  Shake128: 0x002a,
  Shake256: 0x002b,
})
export type TpmAlgId = number

const algNames = new Map<number, string>(Object.entries(TpmAlg).map(([k, v]) => [v, k.toLowerCase()]))
/** Lower-case name of an algorithm id (`0x000b` -> `sha256`), or its hex when unknown. */
export function tpmAlgName(alg: number): string {
  return algNames.get(alg) ?? `0x${alg.toString(16).padStart(4, '0')}`
}

/** Hash algorithms by their Keylime/tpm2-tools names, with digest sizes. */
export type HashAlgName = 'sha1' | 'sha256' | 'sha384' | 'sha512' | 'sm3_256'
export const HashAlgs: Readonly<Record<HashAlgName, { alg: number; size: number }>> = Object.freeze({
  sha1: { alg: TpmAlg.Sha1, size: 20 },
  sha256: { alg: TpmAlg.Sha256, size: 32 },
  sha384: { alg: TpmAlg.Sha384, size: 48 },
  sha512: { alg: TpmAlg.Sha512, size: 64 },
  sm3_256: { alg: TpmAlg.Sm3_256, size: 32 },
})

/** Digest size of a hash algorithm id, or undefined when it is not a hash we know. */
export function digestSize(alg: number): number | undefined {
  switch (alg) {
    case TpmAlg.Sha1:
      return 20
    case TpmAlg.Sha256:
    case TpmAlg.Sm3_256:
    case TpmAlg.Sha3_256:
      return 32
    case TpmAlg.Sha384:
    case TpmAlg.Sha3_384:
      return 48
    case TpmAlg.Sha512:
    case TpmAlg.Sha3_512:
      return 64
    default:
      return undefined
  }
}

/** Hash algorithm id from its name (`sha256`), or undefined. */
export function hashAlgFromName(name: string): number | undefined {
  return (HashAlgs as Record<string, { alg: number } | undefined>)[name.toLowerCase()]?.alg
}

/** node:crypto name of a TPM hash algorithm id. */
export function nodeHashName(alg: number): string | undefined {
  switch (alg) {
    case TpmAlg.Sha1:
      return 'sha1'
    case TpmAlg.Sha256:
      return 'sha256'
    case TpmAlg.Sha384:
      return 'sha384'
    case TpmAlg.Sha512:
      return 'sha512'
    case TpmAlg.Sm3_256:
      return 'sm3'
    default:
      return undefined
  }
}

/** TPM_ECC_CURVE (Part 2, 6.4). */
export const TpmEccCurve = Object.freeze({
  None: 0x0000,
  NistP192: 0x0001,
  NistP224: 0x0002,
  NistP256: 0x0003,
  NistP384: 0x0004,
  NistP521: 0x0005,
  BnP256: 0x0010,
  BnP638: 0x0011,
  Sm2P256: 0x0020,
})

/** TPM_CC command codes (Part 2, 6.5.2). */
export const TpmCc = Object.freeze({
  EvictControl: 0x00000120,
  NvUndefineSpace: 0x00000122,
  Clear: 0x00000126,
  HierarchyChangeAuth: 0x00000129,
  NvDefineSpace: 0x0000012a,
  CreatePrimary: 0x00000131,
  NvWrite: 0x00000137,
  PcrReset: 0x0000013d,
  SelfTest: 0x00000143,
  Startup: 0x00000144,
  Shutdown: 0x00000145,
  ActivateCredential: 0x00000147,
  Certify: 0x00000148,
  NvRead: 0x0000014e,
  PolicySecret: 0x00000151,
  PolicyOr: 0x00000171,
  Create: 0x00000153,
  Load: 0x00000157,
  Quote: 0x00000158,
  ContextLoad: 0x00000161,
  ContextSave: 0x00000162,
  FlushContext: 0x00000165,
  NvReadPublic: 0x00000169,
  ReadPublic: 0x00000173,
  StartAuthSession: 0x00000176,
  GetCapability: 0x0000017a,
  GetRandom: 0x0000017b,
  PcrRead: 0x0000017e,
  PolicyRestart: 0x00000180,
  PcrExtend: 0x00000182,
  PolicyGetDigest: 0x00000189,
})

/** TPM_ST structure tags (Part 2, 6.9). */
export const TpmSt = Object.freeze({
  RspCommand: 0x00c4,
  Null: 0x8000,
  NoSessions: 0x8001,
  Sessions: 0x8002,
  AttestNv: 0x8014,
  AttestCommandAudit: 0x8015,
  AttestSessionAudit: 0x8016,
  AttestCertify: 0x8017,
  AttestQuote: 0x8018,
  AttestTime: 0x8019,
  AttestCreation: 0x801a,
  AttestNvDigest: 0x801c,
  Creation: 0x8021,
  Verified: 0x8022,
  AuthSecret: 0x8023,
  Hashcheck: 0x8024,
  AuthSigned: 0x8025,
})

/** TPM_SU startup types (Part 2, 6.10). */
export const TpmSu = Object.freeze({ Clear: 0x0000, State: 0x0001 })

/** TPM_SE session types (Part 2, 6.11). */
export const TpmSe = Object.freeze({ Hmac: 0x00, Policy: 0x01, Trial: 0x03 })

/** TPM_CAP capabilities (Part 2, 6.12). */
export const TpmCap = Object.freeze({
  Algs: 0x00000000,
  Handles: 0x00000001,
  Commands: 0x00000002,
  PpCommands: 0x00000003,
  AuditCommands: 0x00000004,
  Pcrs: 0x00000005,
  TpmProperties: 0x00000006,
  PcrProperties: 0x00000007,
  EccCurves: 0x00000008,
})

/** TPM_PT properties (Part 2, 6.13). */
export const TpmPt = Object.freeze({
  FamilyIndicator: 0x100,
  Level: 0x101,
  Revision: 0x102,
  DayOfYear: 0x103,
  Year: 0x104,
  Manufacturer: 0x105,
  VendorString1: 0x106,
  VendorString2: 0x107,
  VendorString3: 0x108,
  VendorString4: 0x109,
  VendorTpmType: 0x10a,
  FirmwareVersion1: 0x10b,
  FirmwareVersion2: 0x10c,
  InputBuffer: 0x10d,
  HrTransientMin: 0x10e,
  HrPersistentMin: 0x10f,
  HrLoadedMin: 0x110,
  ActiveSessionsMax: 0x111,
  PcrCount: 0x112,
  PcrSelectMin: 0x113,
  ContextGapMax: 0x114,
  NvCountersMax: 0x116,
  NvIndexMax: 0x117,
  Memory: 0x118,
  ClockUpdate: 0x119,
  ContextHash: 0x11a,
  ContextSym: 0x11b,
  ContextSymSize: 0x11c,
  OrderlyCount: 0x11d,
  MaxCommandSize: 0x11e,
  MaxResponseSize: 0x11f,
  MaxDigest: 0x120,
  MaxObjectContext: 0x121,
  MaxSessionContext: 0x122,
  PsFamilyIndicator: 0x123,
  SplashMax: 0x128,
  TotalCommands: 0x129,
  LibraryCommands: 0x12a,
  VendorCommands: 0x12b,
  NvBufferMax: 0x12c,
  Modes: 0x12d,
  MaxCapBuffer: 0x12e,
  Permanent: 0x200,
  StartupClear: 0x201,
  HrNvIndex: 0x202,
  HrLoaded: 0x203,
  HrLoadedAvail: 0x204,
  HrActive: 0x205,
  HrActiveAvail: 0x206,
  HrTransientAvail: 0x207,
  HrPersistent: 0x208,
  HrPersistentAvail: 0x209,
})

/** TPM_HT handle types: the top byte of a handle (Part 2, 7.2). */
export const TpmHt = Object.freeze({
  Pcr: 0x00,
  NvIndex: 0x01,
  HmacSession: 0x02,
  PolicySession: 0x03,
  Permanent: 0x40,
  Transient: 0x80,
  Persistent: 0x81,
})

/** TPM_RH / TPM_RS permanent handles (Part 2, 7.4). */
export const TpmRh = Object.freeze({
  Owner: 0x40000001,
  Null: 0x40000007,
  Password: 0x40000009,
  Lockout: 0x4000000a,
  Endorsement: 0x4000000b,
  Platform: 0x4000000c,
  PlatformNv: 0x4000000d,
})

/** TPMA_OBJECT bits (Part 2, 8.3). */
export const TpmaObject = Object.freeze({
  FixedTpm: 1 << 1,
  StClear: 1 << 2,
  FixedParent: 1 << 4,
  SensitiveDataOrigin: 1 << 5,
  UserWithAuth: 1 << 6,
  AdminWithPolicy: 1 << 7,
  NoDa: 1 << 10,
  EncryptedDuplication: 1 << 11,
  Restricted: 1 << 16,
  Decrypt: 1 << 17,
  Sign: 1 << 18,
  X509Sign: 1 << 19,
})

/** TPMA_SESSION bits (Part 2, 8.4). */
export const TpmaSession = Object.freeze({
  ContinueSession: 0x01,
  AuditExclusive: 0x02,
  AuditReset: 0x04,
  Decrypt: 0x20,
  Encrypt: 0x40,
  Audit: 0x80,
})

/** TPMA_NV bits (Part 2, 13.4) used to describe NV indices. */
export const TpmaNv = Object.freeze({
  PpWrite: 1 << 0,
  OwnerWrite: 1 << 1,
  AuthWrite: 1 << 2,
  PolicyWrite: 1 << 3,
  PolicyDelete: 1 << 10,
  WriteLocked: 1 << 11,
  WriteAll: 1 << 12,
  WriteDefine: 1 << 13,
  WriteStClear: 1 << 14,
  GlobalLock: 1 << 15,
  PpRead: 1 << 16,
  OwnerRead: 1 << 17,
  AuthRead: 1 << 18,
  PolicyRead: 1 << 19,
  NoDa: 1 << 25,
  Orderly: 1 << 26,
  ClearStClear: 1 << 27,
  ReadLocked: 1 << 28,
  Written: 1 << 29,
  PlatformCreate: 1 << 30,
  ReadStClear: 1 << 31,
})

/** TPM_GENERATED_VALUE: the magic at the start of every TPMS_ATTEST (Part 2, 6.2). */
export const TPM_GENERATED_VALUE = 0xff544347

/**
 * NV indices of the EK certificates for the default EK templates L-1 (RSA 2048) and L-2 (ECC NIST P-256), the
 * ones `createEk` uses (TCG EK Credential Profile 2.x, low range).
 */
export const EkCertNvIndex = Object.freeze({ rsa: 0x01c00002, ecc: 0x01c0000a })

/**
 * Every EK certificate NV index of the TCG EK Credential Profile 2.x per key family, low range first: each holds the
 * certificate of the EK built from one template, so the certificate for a given EK is the one with its key. swtpm
 * (0.7) provisions RSA 2048 at 0x01c00002 and its ECC EK, a P-384 key (template H-3), at 0x01c00016.
 */
export const EkCertNvIndices = Object.freeze({
  rsa: Object.freeze([
    { index: 0x01c00002, template: 'L-1 RSA 2048' },
    { index: 0x01c00012, template: 'H-1 RSA 2048' },
    { index: 0x01c0001c, template: 'H-6 RSA 3072' },
    { index: 0x01c0001e, template: 'H-7 RSA 4096' },
  ]),
  ecc: Object.freeze([
    { index: 0x01c0000a, template: 'L-2 ECC NIST P-256' },
    { index: 0x01c00014, template: 'H-2 ECC NIST P-256' },
    { index: 0x01c00016, template: 'H-3 ECC NIST P-384' },
    { index: 0x01c00018, template: 'H-4 ECC NIST P-521' },
    { index: 0x01c0001a, template: 'H-5 ECC SM2 P-256' },
  ]),
})

/** NV indices where a manufacturer may store the EK CA chain (TCG EK Credential Profile 2.x, 2.2.1.5). */
export const EkCaChainNvRange = Object.freeze({ first: 0x01c00100, last: 0x01c001ff })

/** Upper bounds used by decoders (Part 2 table sizes) so hostile counts cannot make us loop or allocate. */
export const Limits = Object.freeze({
  hashCount: 16,
  pcrSelectMax: 32,
  digestListMax: 8,
  capabilityListMax: 4096,
})
