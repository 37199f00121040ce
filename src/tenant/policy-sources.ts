/**
 * Where the tenant's policies come from (keylime-config-and-cli.md §4): a runtime policy file or URL (SHA-256
 * checked), a legacy allowlist file or URL with an exclude list (converted to a runtime policy, as upstream's
 * tenant does), IMA signature verification keys from files or URLs (each optionally checked against a GPG
 * signature), and a measured-boot policy file or `default` (tenant.conf `mb_refstate`). Upstream's option checks and
 * download messages are kept; every failure is a `TenantError` with a usage or failure exit status.
 */
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { request } from 'undici'
import {
  emptyRuntimePolicy,
  ImaKeyring,
  parseKeyBuffer,
  policyTimestamp,
  RUNTIME_POLICY_GENERATOR,
  type RuntimePolicy,
} from '../evidence/ima/index.ts'
import type { TenantCliOptions } from './cli-options.ts'
import { EXIT_FAILED, EXIT_PEER, EXIT_USAGE, TenantError } from './errors.ts'

const run = promisify(execFile)

export interface SourceContext {
  /** tenant.conf `request_timeout`, in ms, for downloads. */
  timeoutMs: number
  /** Largest download accepted, in bytes. */
  maxDownloadBytes: number
  /** tenant.conf `mb_refstate`, used by `--mb-policy default`. */
  mbRefstate: string
  /** Deprecation warnings and progress, as upstream logs them. */
  warn: (line: string) => void
  progress: (line: string) => void
  now?: () => Date
}

/** Largest policy, allowlist or key a URL may deliver (upstream's verifier takes 100 MB uploads). */
export const MAX_DOWNLOAD_BYTES = 104_857_600

const DEPRECATED_LISTS =
  'Keylime has implemented support for a unified policy format, and will no longer accept separate allow/exclude lists in the near future. Convert them with `keylime policy create runtime -a <allowlist> -e <excludelist>`.'

/**
 * GET of a policy, allowlist or key: status 200 only, redirects not followed (as upstream), at most
 * `maxDownloadBytes`. Upstream's message on another status: `Downloading <what> (<url>) failed with status code N!`.
 */
export async function download(url: string, what: string, ctx: SourceContext): Promise<Buffer> {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    throw new TenantError(`${what} URL ${url} is not a valid URL`, EXIT_USAGE)
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:')
    throw new TenantError(`${what} URL ${url} is not http(s)`, EXIT_USAGE)
  ctx.progress(`Downloading ${what} from ${url}`)
  let res: Awaited<ReturnType<typeof request>>
  try {
    res = await request(parsed, {
      method: 'GET',
      headersTimeout: ctx.timeoutMs,
      bodyTimeout: ctx.timeoutMs,
    })
  } catch (err) {
    throw new TenantError(`Downloading ${what} (${url}) failed: ${(err as Error).message}`, EXIT_PEER, {
      cause: err,
    })
  }
  if (res.statusCode !== 200) {
    await res.body.dump()
    throw new TenantError(
      `Downloading ${what} (${url}) failed with status code ${res.statusCode}!`,
      EXIT_FAILED,
    )
  }
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of res.body) {
    size += (chunk as Buffer).length
    if (size > ctx.maxDownloadBytes) {
      res.body.destroy()
      throw new TenantError(
        `Downloading ${what} (${url}) failed: larger than ${ctx.maxDownloadBytes} bytes`,
        EXIT_FAILED,
      )
    }
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks)
}

async function readLocal(path: string, what: string): Promise<Buffer> {
  try {
    return await readFile(path)
  } catch (err) {
    throw new TenantError(`cannot read ${what} ${path}: ${(err as Error).message}`, EXIT_USAGE)
  }
}

/** Upstream's option checks of the runtime policy sources (`get_opts_error`), in its order and words. */
export function checkPolicyOptions(command: string, opts: TenantCliOptions): void {
  const usage = (m: string) => new TenantError(m, EXIT_USAGE)
  if (
    ['addallowlist', 'addruntimepolicy', 'updateruntimepolicy'].includes(command) &&
    !(opts.allowlist || opts.allowlistUrl || opts.runtimePolicy || opts.runtimePolicyUrl)
  )
    throw usage('--allowlist or --runtime_policy is required to add a runtime policy')
  if (opts.exclude && !(opts.allowlist || opts.allowlistUrl))
    throw usage('--exclude cannot be used without an --allowlist')
  if (opts.allowlist && opts.allowlistUrl)
    throw usage('--allowlist and --allowlist-url cannot be specified at the same time')
  if (opts.runtimePolicy && opts.runtimePolicyUrl)
    throw usage('--runtime_policy and --runtime_policy-url cannot be specified at the same time')
  if (opts.runtimePolicyUrl && !opts.runtimePolicyChecksum)
    throw usage('--runtime_policy-url must have --runtime_policy-checksum to verifier integrity')
  if (opts.runtimePolicyChecksum && !(opts.runtimePolicyUrl || opts.runtimePolicy))
    throw usage('--runtime_policy-checksum must have either --runtime_policy or --runtime_policy-url')
  // upstream lets a runtime policy silently replace a converted allowlist; one source is unambiguous
  if ((opts.allowlist || opts.allowlistUrl) && (opts.runtimePolicy || opts.runtimePolicyUrl))
    throw usage(
      'give either a runtime policy (--runtime-policy[-url]) or a legacy allowlist (--allowlist[-url])',
    )
  if (opts.allowlistName && opts.runtimePolicyName && opts.allowlistName !== opts.runtimePolicyName)
    throw usage('--allowlist-name and --runtime-policy-name name different policies')
}

/**
 * A legacy allowlist converted as upstream's tenant converts it (`convert_legacy_allowlist`): JSON with `hashes`
 * (path -> digests; the other runtime-policy members it carries are kept), or the flat format, one `<digest> <path>`
 * per line (`%keyring:<name>` paths go to `keyrings`; a line without both is skipped with a warning, as upstream).
 * Exclude-list lines (not empty, not `#`) are appended to `excludes`. The verifier checks the result's schema.
 */
export function convertLegacyAllowlist(
  text: string,
  excludeText: string | undefined,
  now: Date,
  warn: (line: string) => void,
): RuntimePolicy {
  const policy = emptyRuntimePolicy()
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    json = undefined
  }
  if (json !== undefined) {
    const obj = (typeof json === 'object' && json !== null ? json : {}) as Record<string, unknown>
    if (obj.digests !== undefined)
      throw new TenantError(
        'the allowlist is already a runtime policy: pass it with --runtime-policy',
        EXIT_USAGE,
      )
    const hashes = obj.hashes
    if (typeof hashes !== 'object' || hashes === null || Array.isArray(hashes))
      throw new TenantError('the JSON allowlist has no "hashes" map of paths to digests', EXIT_USAGE)
    policy.digests = hashes as Record<string, string[]>
    const carried = policy as unknown as Record<string, unknown>
    for (const key of ['release', 'excludes', 'keyrings', 'ima', 'ima-buf', 'verification-keys'])
      if (obj[key]) carried[key] = obj[key]
  } else {
    splitLines(text).forEach((raw, i) => {
      const line = raw.trim()
      if (line === '') return
      const m = /^(\S+)\s+(.+)$/.exec(line)
      if (!m) {
        warn(`Line #${i} in Allowlist does not consist of hash and file path: ${line}`)
        return
      }
      const [, digest, path] = m as unknown as [string, string, string]
      const [map, key] = path.startsWith('%keyring:')
        ? [policy.keyrings, path.slice('%keyring:'.length)]
        : [policy.digests, path]
      map[key] = [...(map[key] ?? []), digest]
    })
  }
  for (const raw of splitLines(excludeText ?? '')) {
    const line = raw.trim()
    if (line !== '' && !line.startsWith('#')) policy.excludes.push(line)
  }
  policy.meta = {
    version: 1,
    generator: RUNTIME_POLICY_GENERATOR.LegacyAllowList,
    timestamp: policyTimestamp(now),
  }
  return policy
}

const splitLines = (text: string) => text.split(/\r\n|\r|\n/)

/**
 * The runtime policy to send (b64) with its DSSE key (b64 PEM), from `--runtime-policy[-url]` (checked against
 * `--runtime-policy-checksum`) or `--allowlist[-url]` (+ `--exclude`); undefined when none is given.
 */
export async function runtimePolicySource(
  opts: TenantCliOptions,
  ctx: SourceContext,
): Promise<{ policyB64: string; keyB64: string } | undefined> {
  if (opts.allowlist || opts.allowlistUrl) {
    ctx.warn(`--allowlist is deprecated. ${DEPRECATED_LISTS}`)
    const list = opts.allowlistUrl
      ? await download(opts.allowlistUrl, 'allowlist', ctx)
      : await readLocal(opts.allowlist as string, 'allowlist')
    const exclude = opts.exclude
      ? (await readLocal(opts.exclude, 'exclude list')).toString('utf8')
      : undefined
    if (opts.exclude) ctx.warn(`--exclude is deprecated. ${DEPRECATED_LISTS}`)
    let policy: RuntimePolicy
    try {
      policy = convertLegacyAllowlist(
        list.toString('utf8'),
        exclude,
        (ctx.now ?? (() => new Date()))(),
        ctx.warn,
      )
    } catch (err) {
      if (err instanceof TenantError) throw err
      throw new TenantError(`cannot convert the allowlist: ${(err as Error).message}`, EXIT_USAGE)
    }
    return { policyB64: Buffer.from(JSON.stringify(policy)).toString('base64'), keyB64: '' }
  }
  if (!opts.runtimePolicy && !opts.runtimePolicyUrl) return undefined
  const bytes = opts.runtimePolicyUrl
    ? await download(opts.runtimePolicyUrl, 'IMA policy', ctx)
    : await readLocal(opts.runtimePolicy as string, 'runtime policy')
  const where = opts.runtimePolicyUrl ?? opts.runtimePolicy
  if (opts.runtimePolicyChecksum) {
    const actual = createHash('sha256').update(bytes).digest('hex')
    if (actual !== opts.runtimePolicyChecksum.toLowerCase())
      throw new TenantError(
        `runtime policy checksum mismatch: ${where} has ${actual}, expected ${opts.runtimePolicyChecksum}`,
        EXIT_USAGE,
      )
  }
  try {
    JSON.parse(bytes.toString('utf8'))
  } catch {
    throw new TenantError(`runtime policy ${where} is not JSON`, EXIT_USAGE)
  }
  const keyB64 = opts.runtimePolicySigKey
    ? (await readLocal(opts.runtimePolicySigKey, 'runtime policy signing key')).toString('base64')
    : ''
  return { policyB64: bytes.toString('base64'), keyB64 }
}

/**
 * Checks a detached GPG signature of a key file with the GPG public key given, in a throw-away keyring (gpg's own
 * parsing, as upstream's python-gnupg); refuses unless gpg reports a good and valid signature.
 */
export async function verifyGpgSignature(
  gpgKeyFile: string,
  dataFile: string,
  signatureFile: string,
  what: string,
): Promise<void> {
  const home = await mkdtemp(join(tmpdir(), 'keylime-tenant-gpg-'))
  const gpg = (args: string[]) => run('gpg', ['--homedir', home, '--batch', '--no-tty', ...args])
  try {
    try {
      await gpg(['--import', gpgKeyFile])
    } catch (err) {
      throw new TenantError(`cannot import GPG key ${gpgKeyFile}: ${gpgError(err)}`, EXIT_USAGE)
    }
    let status = ''
    try {
      status = (await gpg(['--status-fd', '1', '--verify', signatureFile, dataFile])).stdout
    } catch (err) {
      status = String((err as { stdout?: unknown }).stdout ?? '')
    }
    if (!/^\[GNUPG:\] GOODSIG /m.test(status) || !/^\[GNUPG:\] VALIDSIG /m.test(status))
      throw new TenantError(
        `signature verification of the ${what} ${dataFile} with ${signatureFile} failed`,
        EXIT_FAILED,
      )
  } finally {
    await run('gpgconf', ['--homedir', home, '--kill', 'gpg-agent']).catch(() => undefined)
    await rm(home, { recursive: true, force: true })
  }
}

function gpgError(err: unknown): string {
  const stderr = String((err as { stderr?: unknown }).stderr ?? '').trim()
  return stderr.split('\n').at(-1) || (err as Error).message
}

/**
 * The deprecated per-agent IMA keyring (`ima_sign_verification_keys`): keys from `--signature-verification-key`
 * files (each with its `-sig`/`-sig-key` pair checked when given) and `--signature-verification-key-url`s (with
 * `-sig-url`/`-sig-url-key`). '' when none is given.
 */
export async function verificationKeyring(opts: TenantCliOptions, ctx: SourceContext): Promise<string> {
  const files = [...(opts.signatureVerificationKey ?? [])]
  const sigs = opts.signatureVerificationKeySig ?? []
  const sigKeys = opts.signatureVerificationKeySigKey ?? []
  const urls = opts.signatureVerificationKeyUrl ?? []
  const sigUrls = opts.signatureVerificationKeySigUrl ?? []
  const sigUrlKeys = opts.signatureVerificationKeySigUrlKey ?? []
  if (files.length === 0 && urls.length === 0) {
    if (sigs.length + sigKeys.length + sigUrls.length + sigUrlKeys.length > 0)
      throw new TenantError(
        'a key signature option needs --signature-verification-key or --signature-verification-key-url',
        EXIT_USAGE,
      )
    return ''
  }
  ctx.warn(
    'Verification key support in the Keylime tenant is deprecated. Provide verification keys as part of a runtime policy instead.',
  )
  for (const [i, sig] of sigs.entries()) {
    const key = files[i]
    if (key === undefined) break
    const gpgKey = sigKeys[i]
    if (gpgKey === undefined)
      throw new TenantError(`A gpg key is missing for key signature file '${sig}'`, EXIT_USAGE)
    await verifyGpgSignature(gpgKey, key, sig, 'IMA file signing key')
    ctx.progress(`Signature verification on ${key} was successful`)
  }
  const scratch = urls.length > 0 ? await mkdtemp(join(tmpdir(), 'keylime-tenant-keys-')) : null
  try {
    const downloaded: string[] = []
    for (const [i, url] of urls.entries()) {
      const keyFile = join(scratch as string, `key-${i}`)
      await writeFile(keyFile, await download(url, 'key', ctx))
      downloaded.push(keyFile)
      const sigUrl = sigUrls[i]
      if (sigUrl === undefined) continue
      const gpgKey = sigUrlKeys[i]
      if (gpgKey === undefined)
        throw new TenantError(`A gpg key is missing for key signature URL '${sigUrl}'`, EXIT_USAGE)
      const sigFile = join(scratch as string, `key-${i}.sig`)
      await writeFile(sigFile, await download(sigUrl, 'key signature', ctx))
      await verifyGpgSignature(gpgKey, keyFile, sigFile, 'IMA file signing key')
      ctx.progress(`Signature verification on ${url} was successful`)
    }
    const ring = new ImaKeyring()
    for (const [i, file] of [...files, ...downloaded].entries()) {
      const named = i < files.length ? file : (urls[i - files.length] as string)
      const parsed = parseKeyBuffer(await readLocal(file, 'verification key'))
      if (parsed === null || parsed.kind !== 'key')
        throw new TenantError(`File '${named}' is not a file with a key`, EXIT_USAGE)
      ring.add(parsed.key, parsed.keyId)
    }
    return JSON.stringify(ring.toJSON())
  } finally {
    if (scratch) await rm(scratch, { recursive: true, force: true })
  }
}

/** The measured-boot policy JSON text of `--mb-policy <file|default>`; undefined when not given. */
export async function mbPolicySource(
  opts: TenantCliOptions,
  ctx: SourceContext,
): Promise<string | undefined> {
  if (opts.mbPolicy === undefined) return undefined
  let path = opts.mbPolicy
  if (path === 'default') {
    if (!ctx.mbRefstate)
      throw new TenantError(
        '--mb-policy default needs mb_refstate in tenant.conf ([tenant] mb_refstate)',
        EXIT_USAGE,
      )
    path = ctx.mbRefstate
  }
  const text = (await readLocal(path, 'measured-boot policy')).toString('utf8')
  try {
    JSON.parse(text)
  } catch {
    throw new TenantError(`measured-boot policy ${path} is not JSON`, EXIT_USAGE)
  }
  return text
}
