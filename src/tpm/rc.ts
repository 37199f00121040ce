/**
 * TPM response codes (Part 2, 6.6) as error values. Format-one codes name the failing handle, session or
 * parameter; format-zero codes are version-1 errors or warnings. Each code has a readable description.
 */

const FMT1: Record<number, [string, string]> = {
  1: ['TPM_RC_ASYMMETRIC', 'asymmetric algorithm not supported or not correct'],
  2: ['TPM_RC_ATTRIBUTES', 'inconsistent attributes'],
  3: ['TPM_RC_HASH', 'hash algorithm not supported or not appropriate'],
  4: ['TPM_RC_VALUE', 'value is out of range or is not correct for the context'],
  5: ['TPM_RC_HIERARCHY', 'hierarchy is not enabled or is not correct for the use'],
  7: ['TPM_RC_KEY_SIZE', 'key size is not supported'],
  8: ['TPM_RC_MGF', 'mask generation function not supported'],
  9: ['TPM_RC_MODE', 'mode of operation not supported'],
  10: ['TPM_RC_TYPE', 'the type of the value is not appropriate for the use'],
  11: ['TPM_RC_HANDLE', 'the handle is not correct for the use'],
  12: ['TPM_RC_KDF', 'unsupported key derivation function or function not appropriate for use'],
  13: ['TPM_RC_RANGE', 'value was out of allowed range'],
  14: ['TPM_RC_AUTH_FAIL', 'the authorization HMAC check failed and DA counter incremented'],
  15: ['TPM_RC_NONCE', 'invalid nonce size or nonce value mismatch'],
  16: ['TPM_RC_PP', 'authorization requires assertion of PP'],
  18: ['TPM_RC_SCHEME', 'unsupported or incompatible scheme'],
  21: ['TPM_RC_SIZE', 'structure is the wrong size'],
  22: ['TPM_RC_SYMMETRIC', 'unsupported symmetric algorithm or key size, or not appropriate for instance'],
  23: ['TPM_RC_TAG', 'incorrect structure tag'],
  24: ['TPM_RC_SELECTOR', 'union selector is incorrect'],
  26: ['TPM_RC_INSUFFICIENT', 'the TPM was unable to unmarshal a value because there were not enough octets'],
  27: ['TPM_RC_SIGNATURE', 'the signature is not valid'],
  28: ['TPM_RC_KEY', 'key fields are not compatible with the selected use'],
  29: ['TPM_RC_POLICY_FAIL', 'a policy check failed'],
  31: ['TPM_RC_INTEGRITY', 'integrity check failed'],
  32: ['TPM_RC_TICKET', 'invalid ticket'],
  33: ['TPM_RC_RESERVED_BITS', 'reserved bits not set to zero as required'],
  34: ['TPM_RC_BAD_AUTH', 'authorization failure without DA implications'],
  35: ['TPM_RC_EXPIRED', 'the policy has expired'],
  36: ['TPM_RC_POLICY_CC', 'the commandCode in the policy is not the commandCode of the command'],
  37: ['TPM_RC_BINDING', 'public and sensitive portions of an object are not cryptographically bound'],
  38: ['TPM_RC_CURVE', 'curve not supported'],
  39: ['TPM_RC_ECC_POINT', 'point is not on the required curve'],
}

const VER1: Record<number, [string, string]> = {
  0: ['TPM_RC_INITIALIZE', 'TPM not initialized by TPM2_Startup or already initialized'],
  1: ['TPM_RC_FAILURE', 'commands not being accepted because of a TPM failure'],
  3: ['TPM_RC_SEQUENCE', 'improper use of a sequence handle'],
  11: ['TPM_RC_PRIVATE', 'not currently used'],
  25: ['TPM_RC_HMAC', 'not currently used'],
  32: ['TPM_RC_DISABLED', 'the command is disabled'],
  33: ['TPM_RC_EXCLUSIVE', 'command failed because audit sequence required exclusivity'],
  36: ['TPM_RC_AUTH_TYPE', 'authorization handle is not correct for command'],
  37: ['TPM_RC_AUTH_MISSING', 'command requires an authorization session for handle and it is not present'],
  38: ['TPM_RC_POLICY', 'policy failure in math operation or an invalid authPolicy value'],
  39: ['TPM_RC_PCR', 'PCR check fail'],
  40: ['TPM_RC_PCR_CHANGED', 'PCR have changed since checked'],
  45: ['TPM_RC_UPGRADE', 'the TPM is in field upgrade mode'],
  46: ['TPM_RC_TOO_MANY_CONTEXTS', 'context ID counter is at maximum'],
  47: ['TPM_RC_AUTH_UNAVAILABLE', 'authValue or authPolicy is not available for selected entity'],
  48: ['TPM_RC_REBOOT', 'a _TPM_Init and Startup(CLEAR) is required before the TPM can resume operation'],
  49: ['TPM_RC_UNBALANCED', 'the protection algorithms (hash and symmetric) are not reasonably balanced'],
  66: [
    'TPM_RC_COMMAND_SIZE',
    'command commandSize value is inconsistent with contents of the command buffer',
  ],
  67: ['TPM_RC_COMMAND_CODE', 'command code not supported'],
  68: ['TPM_RC_AUTHSIZE', 'the value of authorizationSize is out of range'],
  69: ['TPM_RC_AUTH_CONTEXT', 'use of an authorization session with a context command'],
  70: ['TPM_RC_NV_RANGE', 'NV offset+size is out of range'],
  71: ['TPM_RC_NV_SIZE', 'requested allocation size is larger than allowed'],
  72: ['TPM_RC_NV_LOCKED', 'NV access locked'],
  73: ['TPM_RC_NV_AUTHORIZATION', 'NV access authorization fails in command actions'],
  74: ['TPM_RC_NV_UNINITIALIZED', 'an NV Index is used before being initialized'],
  75: ['TPM_RC_NV_SPACE', 'insufficient space for NV allocation'],
  76: ['TPM_RC_NV_DEFINED', 'NV Index or persistent object already defined'],
  80: ['TPM_RC_BAD_CONTEXT', 'context in TPM2_ContextLoad is not valid'],
  81: ['TPM_RC_CPHASH', 'cpHash value already set or not correct for use'],
  82: ['TPM_RC_PARENT', 'handle for parent is not a valid parent'],
  83: ['TPM_RC_NEEDS_TEST', 'some function needs testing'],
  84: ['TPM_RC_NO_RESULT', 'cannot process a request due to an unspecified problem'],
  85: ['TPM_RC_SENSITIVE', 'the sensitive area did not unmarshal correctly after decryption'],
}

const WARN: Record<number, [string, string]> = {
  1: ['TPM_RC_CONTEXT_GAP', 'gap for context ID is too large'],
  2: ['TPM_RC_OBJECT_MEMORY', 'out of memory for object contexts'],
  3: ['TPM_RC_SESSION_MEMORY', 'out of memory for session contexts'],
  4: ['TPM_RC_MEMORY', 'out of shared object/session memory or need space for internal operations'],
  5: ['TPM_RC_SESSION_HANDLES', 'out of session handles; a session must be flushed'],
  6: ['TPM_RC_OBJECT_HANDLES', 'out of object handles; an object must be flushed'],
  7: ['TPM_RC_LOCALITY', 'bad locality'],
  8: ['TPM_RC_YIELDED', 'the TPM has suspended operation on the command'],
  9: ['TPM_RC_CANCELED', 'the command was canceled'],
  10: ['TPM_RC_TESTING', 'TPM is performing self-tests'],
  32: ['TPM_RC_NV_RATE', 'the TPM is rate-limiting accesses to prevent wearout of NV'],
  33: ['TPM_RC_LOCKOUT', 'authorizations for objects subject to DA protection are not allowed (lockout)'],
  34: ['TPM_RC_RETRY', 'the TPM was not able to start the command'],
  35: ['TPM_RC_NV_UNAVAILABLE', 'the command may require writing of NV and NV is not currently accessible'],
}
for (let i = 0; i <= 6; i++) {
  WARN[0x010 + i] = [
    `TPM_RC_REFERENCE_H${i}`,
    `the ${i}th handle references a transient object or session not loaded`,
  ]
  WARN[0x018 + i] = [
    `TPM_RC_REFERENCE_S${i}`,
    `the ${i}th authorization session handle references a session not loaded`,
  ]
}

export type TpmRcKind = 'handle' | 'session' | 'parameter' | 'none'

export interface DecodedRc {
  rc: number
  /** Spec name, e.g. `TPM_RC_VALUE`; `TPM_RC_UNKNOWN_0x...` when not in the tables. */
  name: string
  description: string
  /** Which command element a format-one code blames, and its 1-based index (0 = unspecified). */
  kind: TpmRcKind
  index: number
  /** Format-zero warning: the command may succeed when retried. */
  warning: boolean
  /** Non-zero for codes from a software layer (resource manager, TSS), i.e. bits 16-23. */
  layer: number
}

export function decodeResponseCode(rc: number): DecodedRc {
  const layer = (rc >>> 16) & 0xff
  const code = rc & 0xffff
  const unknown = (): [string, string] => [
    `TPM_RC_UNKNOWN_0x${rc.toString(16)}`,
    'unrecognised response code',
  ]
  if (code & 0x080) {
    const number = code & 0x03f
    const [name, description] = FMT1[number] ?? unknown()
    let kind: TpmRcKind
    let index: number
    if (code & 0x040) {
      kind = 'parameter'
      index = (code >> 8) & 0xf
    } else if (code & 0x800) {
      kind = 'session'
      index = (code >> 8) & 0x7
    } else {
      index = (code >> 8) & 0x7
      kind = index === 0 ? 'none' : 'handle'
    }
    return { rc, name, description, kind, index, warning: false, layer }
  }
  if (code & 0x100) {
    const warning = (code & 0x800) !== 0
    const table = warning ? WARN : VER1
    const [name, description] = table[code & 0x7f] ?? unknown()
    return { rc, name, description, kind: 'none', index: 0, warning, layer }
  }
  const [name, description] = unknown()
  return {
    rc,
    name,
    description: `${description} (TPM 1.2 or vendor code)`,
    kind: 'none',
    index: 0,
    warning: false,
    layer,
  }
}

/** A TPM command answered with a non-success response code. */
export class TpmResponseError extends Error {
  readonly code = 'ERR_TPM_RESPONSE'
  readonly statusCode = 500
  readonly rc: number
  readonly rcName: string
  readonly kind: TpmRcKind
  readonly index: number
  readonly warning: boolean
  /** The command that failed, e.g. `TPM2_Quote`. */
  readonly command: string

  constructor(command: string, rc: number) {
    const d = decodeResponseCode(rc)
    const where = d.kind === 'none' ? '' : ` (${d.kind} ${d.index || '?'})`
    super(`${command} failed: ${d.name}${where}: ${d.description} [rc 0x${rc.toString(16).padStart(3, '0')}]`)
    this.name = 'TpmResponseError'
    this.rc = rc
    this.rcName = d.name
    this.kind = d.kind
    this.index = d.index
    this.warning = d.warning
    this.command = command
  }

  /** The base code without handle/session/parameter bits, comparable to `TpmRc.*`. */
  get baseRc(): number {
    return this.rc & 0x80 ? this.rc & 0xbf : this.rc
  }
}

/** Base response codes to compare with `TpmResponseError.baseRc`. */
export const TpmRc = Object.freeze({
  Success: 0x000,
  Initialize: 0x100,
  Failure: 0x101,
  Value: 0x084,
  Handle: 0x08b,
  AuthFail: 0x08e,
  PolicyFail: 0x09d,
  Integrity: 0x09f,
  BadAuth: 0x0a2,
  NvUninitialized: 0x14a,
  NvDefined: 0x14c,
  NvAuthorization: 0x149,
  ObjectMemory: 0x902,
  SessionMemory: 0x903,
  Yielded: 0x908,
  Testing: 0x90a,
  Lockout: 0x921,
  Retry: 0x922,
})
