/**
 * Measured-boot reference states ("mb policies"): parsing and validation of upstream Keylime's refstate JSON
 * (the format `keylime-policy create measured-boot` writes), plus two optional extensions of ours:
 * `kernels[].boot_apps_authcode_sha256` (an exact list of boot-application Authenticode digests, for chains that
 * are not shim → grub → kernel, e.g. systemd-boot or a UKI), `kernels[].extra_pcr9_plain_sha256` (other files
 * grub measured into PCR 9, e.g. a netboot kernel path) and kernel entries with fields left out meaning
 * "no such event may appear" (e.g. no initrd measured in PCR 9).
 */
import { compilePythonRegex, type LinearRegex, PythonRegexError } from '../python-regex.ts'
import { type BankName, isBankName } from './constants.ts'
import { MbPolicyError } from './errors.ts'

/** bank → lowercase hex without `0x`. */
export type MbDigest = Partial<Record<BankName, string>>

export interface MbSignature {
  owner: string
  /** lowercase hex without `0x` */
  data: string
}

export interface MbKernel {
  shim?: string
  grub?: string
  kernel?: string
  vmlinuz?: string
  initrd?: string
  bootApps?: string[]
  /** Digests of other files grub measured into PCR 9 (`extra_pcr9_plain_sha256`, our extension). */
  extraPcr9?: string[]
  /** Source regex of `kernel_cmdline` (Python `re` syntax as upstream writes it; `re.escape` output works). */
  cmdline?: string
  /** Full match of the command line's text. */
  cmdlineRegex?: LinearRegex
  /** Full match of the whole event string as upstream writes it (`kernel_cmdline: ` + the source); when it compiles. */
  cmdlineUpstreamRegex?: LinearRegex
}

export interface MbScrtmAndBios {
  scrtm: MbDigest | null
  platformFirmware: MbDigest[]
}

export interface MbRefState {
  hasSecureBoot: boolean
  scrtmAndBios: MbScrtmAndBios[] | null
  pk: MbSignature[]
  kek: MbSignature[]
  db: MbSignature[]
  dbx: MbSignature[]
  vendorDb: MbSignature[]
  mokdig: MbDigest[]
  mokxdig: MbDigest[]
  kernels: MbKernel[]
}

export type MbPolicyEngine = 'accept-all' | 'reject-all' | 'example'
export const MB_POLICY_ENGINES: readonly MbPolicyEngine[] = ['accept-all', 'reject-all', 'example']

export interface MbPolicy {
  engine: MbPolicyEngine
  /** Null when the policy is empty (`{}`, `null`, ""): no measured-boot checking at all. */
  refstate: MbRefState | null
  /** The JSON object as given, for failure contexts and storage. */
  source: Record<string, unknown> | null
}

const isObj = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v)

function hexValue(v: unknown, field: string): string {
  if (typeof v !== 'string') throw new MbPolicyError(field, 'must be a hex string')
  const h = v.toLowerCase().replace(/^0x/, '')
  if (!/^[0-9a-f]*$/.test(h)) throw new MbPolicyError(field, `is not hex: ${JSON.stringify(v).slice(0, 80)}`)
  return h
}

function digest(v: unknown, field: string): MbDigest {
  if (!isObj(v)) throw new MbPolicyError(field, 'must be an object {"<bank>": "0x<hex>"}')
  const out: MbDigest = {}
  for (const [k, val] of Object.entries(v)) {
    if (!isBankName(k)) throw new MbPolicyError(`${field}.${k}`, 'unknown hash algorithm')
    out[k] = hexValue(val, `${field}.${k}`)
  }
  return out
}

function list<T>(v: unknown, field: string, item: (x: unknown, f: string) => T, required: boolean): T[] {
  if (v === undefined && !required) return []
  if (!Array.isArray(v))
    throw new MbPolicyError(field, required && v === undefined ? 'is required' : 'must be a list')
  return v.map((x, i) => item(x, `${field}[${i}]`))
}

function signature(v: unknown, field: string): MbSignature {
  if (!isObj(v)) throw new MbPolicyError(field, 'must be an object {SignatureOwner, SignatureData}')
  if (typeof v.SignatureOwner !== 'string')
    throw new MbPolicyError(`${field}.SignatureOwner`, 'must be a GUID string')
  return { owner: v.SignatureOwner.toLowerCase(), data: hexValue(v.SignatureData, `${field}.SignatureData`) }
}

/** Compiles a `kernel_cmdline` regex written for Python `re` (`re.escape` output included) to a full match. */
function cmdlineRegex(src: string, field: string): LinearRegex {
  try {
    return compilePythonRegex([src], 'fullmatch')
  } catch (e) {
    if (e instanceof PythonRegexError) throw new MbPolicyError(field, `${JSON.stringify(src)}: ${e.message}`)
    throw e
  }
}

function cmdlineUpstreamRegex(src: string): LinearRegex | undefined {
  try {
    return compilePythonRegex([`kernel_cmdline: ${src}`], 'fullmatch')
  } catch (e) {
    // Only inline flags at the start of `src` fail here (they are no longer at the start), as in Python.
    if (e instanceof PythonRegexError) return undefined
    throw e
  }
}

function kernel(v: unknown, field: string): MbKernel {
  if (!isObj(v)) throw new MbPolicyError(field, 'must be an object')
  const k: MbKernel = {}
  const opt = (name: string) => (v[name] === undefined ? undefined : hexValue(v[name], `${field}.${name}`))
  k.shim = opt('shim_authcode_sha256')
  k.grub = opt('grub_authcode_sha256')
  k.kernel = opt('kernel_authcode_sha256')
  k.vmlinuz = opt('vmlinuz_plain_sha256')
  k.initrd = opt('initrd_plain_sha256')
  if (v.boot_apps_authcode_sha256 !== undefined) {
    k.bootApps = list(v.boot_apps_authcode_sha256, `${field}.boot_apps_authcode_sha256`, hexValue, true)
  }
  if (v.extra_pcr9_plain_sha256 !== undefined) {
    k.extraPcr9 = list(v.extra_pcr9_plain_sha256, `${field}.extra_pcr9_plain_sha256`, hexValue, true)
  }
  if (v.kernel_cmdline !== undefined) {
    if (typeof v.kernel_cmdline !== 'string')
      throw new MbPolicyError(`${field}.kernel_cmdline`, 'must be a string')
    k.cmdline = v.kernel_cmdline
    k.cmdlineRegex = cmdlineRegex(v.kernel_cmdline, `${field}.kernel_cmdline`)
    k.cmdlineUpstreamRegex = cmdlineUpstreamRegex(v.kernel_cmdline)
  }
  for (const key of Object.keys(k) as (keyof MbKernel)[]) if (k[key] === undefined) delete k[key]
  if (k.bootApps === undefined) {
    // upstream's shape: shim + grub, and the kernel's Authenticode digest (Secure Boot) or plain vmlinuz digest
    if (k.shim === undefined || k.grub === undefined) {
      throw new MbPolicyError(
        field,
        'needs shim_authcode_sha256 and grub_authcode_sha256, or boot_apps_authcode_sha256',
      )
    }
  }
  return k
}

/**
 * Parses a measured-boot policy (refstate JSON text or object). `{}`, null or an empty string mean "no
 * measured-boot checking" (refstate null). Throws `MbPolicyError` naming the field for anything malformed.
 */
export function parseMbPolicy(json: unknown, options: { engine?: MbPolicyEngine } = {}): MbPolicy {
  const engine = options.engine ?? 'example'
  if (!MB_POLICY_ENGINES.includes(engine))
    throw new MbPolicyError('engine', `unknown policy ${String(engine)}`)
  let v: unknown = json
  if (typeof json === 'string') {
    if (json.trim() === '') return { engine, refstate: null, source: null }
    try {
      v = JSON.parse(json)
    } catch (e) {
      throw new MbPolicyError('(document)', `not valid JSON: ${(e as Error).message}`)
    }
  }
  if (v === null || v === undefined) return { engine, refstate: null, source: null }
  if (!isObj(v)) throw new MbPolicyError('(document)', 'must be a JSON object')
  if (Object.keys(v).length === 0) return { engine, refstate: null, source: v }
  if (engine !== 'example') return { engine, refstate: compileRefState(v, false), source: v }
  return { engine, refstate: compileRefState(v, true), source: v }
}

function compileRefState(v: Record<string, unknown>, strict: boolean): MbRefState {
  const hasSb = v.has_secureboot ?? true
  if (typeof hasSb !== 'boolean') throw new MbPolicyError('has_secureboot', 'must be true or false')
  let scrtmAndBios: MbScrtmAndBios[] | null = null
  if (v.scrtm_and_bios !== undefined) {
    scrtmAndBios = list(
      v.scrtm_and_bios,
      'scrtm_and_bios',
      (x, f) => {
        if (!isObj(x)) throw new MbPolicyError(f, 'must be an object {scrtm, platform_firmware}')
        const scrtm = x.scrtm === undefined ? null : digest(x.scrtm, `${f}.scrtm`)
        return { scrtm, platformFirmware: list(x.platform_firmware, `${f}.platform_firmware`, digest, false) }
      },
      true,
    )
  }
  return {
    hasSecureBoot: hasSb,
    scrtmAndBios,
    pk: list(v.pk, 'pk', signature, strict),
    kek: list(v.kek, 'kek', signature, strict),
    db: list(v.db, 'db', signature, strict),
    dbx: list(v.dbx, 'dbx', signature, strict),
    vendorDb: list(v.vendor_db, 'vendor_db', signature, false),
    mokdig: list(v.mokdig, 'mokdig', digest, strict),
    mokxdig: list(v.mokxdig, 'mokxdig', digest, strict),
    kernels: list(v.kernels, 'kernels', kernel, strict),
  }
}

/** PCRs a policy engine judges (the replay check is limited to them); empty = no restriction. */
export function relevantPcrs(policy: MbPolicy): number[] {
  return policy.engine === 'example' ? [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14] : []
}
