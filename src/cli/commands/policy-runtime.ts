import { createHash } from 'node:crypto'
import { closeSync, lstatSync, openSync, readdirSync, readFileSync, readSync, writeFileSync } from 'node:fs'
import { join, relative, sep } from 'node:path'
import type { Command } from 'commander'
import { CliError, EXIT, step } from '../errors.ts'
import { createProgress, type Progress } from '../progress.ts'

type Ima = typeof import('../../evidence/ima/index.ts')

const ROOTFS_HASHES = {
  sha1: 'sha1',
  sha256: 'sha256',
  sha384: 'sha384',
  sha512: 'sha512',
  sm3_256: 'sm3',
} as const
type RootfsHash = keyof typeof ROOTFS_HASHES
const DEFAULT_SKIP = [
  '/sys',
  '/run',
  '/proc',
  '/lost+found',
  '/dev',
  '/media',
  '/snap',
  '/mnt',
  '/var',
  '/tmp',
]

function hashFile(path: string, alg: RootfsHash, chunk: Buffer): string {
  const h = createHash(ROOTFS_HASHES[alg])
  const fd = openSync(path, 'r')
  try {
    for (;;) {
      const n = readSync(fd, chunk, 0, chunk.length, null)
      if (n === 0) break
      h.update(chunk.subarray(0, n))
    }
  } finally {
    closeSync(fd)
  }
  return h.digest('hex')
}

/** Digests of the regular files under `root`, named by their absolute path inside that root (`/usr/bin/x`). */
function* rootfsDigests(
  root: string,
  alg: RootfsHash,
  skip: readonly string[],
  progress: Progress,
): Generator<[string, string]> {
  const chunk = Buffer.allocUnsafe(1 << 20)
  let files = 0
  const stack = [root]
  while (stack.length > 0) {
    const dir = stack.pop() as string
    let names: string[]
    try {
      names = readdirSync(dir).sort()
    } catch {
      continue // unreadable directory: same as upstream, it is skipped
    }
    for (const name of names) {
      const full = join(dir, name)
      const inRoot = `/${relative(root, full).split(sep).join('/')}`
      if (skip.some((s) => inRoot === s || inRoot.startsWith(`${s}/`))) continue
      const st = lstatSync(full, { throwIfNoEntry: false })
      if (!st) continue
      if (st.isDirectory()) stack.push(full)
      else if (st.isFile()) {
        let digest: string
        try {
          digest = hashFile(full, alg, chunk)
        } catch {
          continue // unreadable file: skipped
        }
        files++
        progress.update(() => `${files.toLocaleString('en-US')} files hashed, now ${inRoot}`)
        yield [inRoot.replaceAll(' ', '_'), digest]
      }
    }
  }
}

interface CreateOptions {
  imaMeasurementList?: string
  rootfs?: string
  skipPath?: string
  allowlist?: string
  excludelist?: string
  basePolicy?: string
  keyrings?: boolean
  imaBuf?: boolean
  ignoredKeyrings?: string[]
  addImaSignatureVerificationKey?: string[]
  hashAlg?: string
  algo?: string
  output?: string
  showLegacyAllowlist?: boolean
  quiet?: boolean
}

/** The project's policy errors as the CLI reports them: bad input is 2, a signature that does not verify is 1. */
function asCliError(ima: Ima, e: unknown): unknown {
  if (e instanceof ima.RuntimePolicyError || e instanceof ima.ImaParseError)
    return new CliError(e.message, EXIT.usage)
  if (e instanceof ima.PolicySignatureError) {
    return new CliError(e.message, e.statusCode === 400 ? EXIT.usage : EXIT.failed)
  }
  return e
}

function readText(file: string): Promise<string> {
  return step(`reading ${file}`, () => readFileSync(file, 'utf8'))
}

async function createRuntime(opts: CreateOptions): Promise<void> {
  const alg = (opts.hashAlg ?? opts.algo ?? 'sha256') as RootfsHash
  if (!Object.hasOwn(ROOTFS_HASHES, alg)) {
    throw new CliError(
      `unknown hash algorithm ${JSON.stringify(alg)}`,
      EXIT.usage,
      'use sha1, sha256, sha384, sha512 or sm3_256',
    )
  }
  const inputs = [opts.imaMeasurementList, opts.rootfs, opts.allowlist, opts.basePolicy]
  if (inputs.every((i) => i === undefined) && (opts.addImaSignatureVerificationKey ?? []).length === 0) {
    throw new CliError(
      'no input: the policy would allow nothing',
      EXIT.usage,
      'give an IMA list (-m), a root filesystem (--rootfs), an allowlist (-a), a base policy (-p) or a signing key (-A)',
    )
  }
  const ima = await import('../../evidence/ima/index.ts')
  let imaListText: string | undefined
  let imaEntries: ReturnType<typeof ima.parseBinaryImaList>['entries'] | undefined
  if (opts.imaMeasurementList !== undefined) {
    const list = opts.imaMeasurementList
    const bytes = await step(`reading ${list}`, () => readFileSync(list))
    if (ima.isBinaryImaList(bytes)) imaEntries = ima.parseBinaryImaList(bytes).entries
    else imaListText = bytes.toString('utf8')
  }
  const skip = opts.skipPath !== undefined ? opts.skipPath.split(',').filter(Boolean) : DEFAULT_SKIP
  const base = opts.basePolicy
  const baseBytes = base === undefined ? undefined : await step(`reading ${base}`, () => readFileSync(base))
  const keys = await Promise.all(
    (opts.addImaSignatureVerificationKey ?? []).map((f) => step(`reading ${f}`, () => readFileSync(f))),
  )
  const progress = createProgress(`hashing ${opts.rootfs ?? ''}`, { quiet: opts.quiet === true })
  let policy: ReturnType<typeof ima.createRuntimePolicy>
  try {
    policy = ima.createRuntimePolicy({
      base: baseBytes === undefined ? null : ima.parseRuntimePolicy(baseBytes, { strict: false }),
      allowlistText: opts.allowlist ? await readText(opts.allowlist) : undefined,
      imaListText,
      imaEntries,
      includeKeyrings: opts.keyrings === true,
      includeImaBuf: opts.imaBuf === true,
      ignoredKeyrings: opts.ignoredKeyrings,
      excludeListText: opts.excludelist ? await readText(opts.excludelist) : undefined,
      fileDigests: opts.rootfs ? rootfsDigests(opts.rootfs, alg, skip, progress) : undefined,
      verificationKeys: keys,
      hashAlg: opts.rootfs || opts.hashAlg || opts.algo ? alg : undefined,
      now: new Date(),
    })
  } catch (e) {
    throw asCliError(ima, e)
  } finally {
    progress.done()
  }
  const text = opts.showLegacyAllowlist ? ima.legacyAllowlist(policy) : `${JSON.stringify(policy)}\n`
  const out = opts.output
  if (out) await step(`writing ${out}`, () => writeFileSync(out, text))
  else process.stdout.write(text)
}

const collect = (value: string, previous: string[] = []) => [...previous, value]

/** `keylime policy create runtime`, `keylime policy sign runtime`, `keylime policy verify runtime`. */
export function registerRuntimePolicyCommands(policy: Command, create: Command): void {
  create
    .command('runtime')
    .description('Create a runtime (IMA) policy from an IMA list, a root filesystem, allowlists and keys')
    .option('-m, --ima-measurement-list <file>', 'IMA measurement list (ASCII or binary)')
    .option('--rootfs <dir>', 'hash every regular file under this directory')
    .option(
      '--skip-path <paths>',
      `comma-separated paths to skip under --rootfs (default ${DEFAULT_SKIP.join(',')})`,
    )
    .option('-a, --allowlist <file>', 'flat allowlist (<digest> <path> per line)')
    .option('-e, --excludelist <file>', 'exclude list: one Python regex per line')
    .option('-p, --base-policy <file>', 'runtime policy to merge into')
    .option('-k, --keyrings', 'add keys measured onto keyrings (ima-buf) to "keyrings"')
    .option('-b, --ima-buf', 'add other ima-buf measurements to "ima-buf"')
    .option('-i, --ignored-keyrings <name>', 'keyring to ignore (repeatable; * for all)', collect)
    .option(
      '-A, --add-ima-signature-verification-key <file>',
      'IMA signing key/certificate (repeatable)',
      collect,
    )
    .option('--hash-alg <alg>', 'file digest algorithm: sha1, sha256 (default), sha384, sha512, sm3_256')
    .option('--algo <alg>', 'same as --hash-alg (upstream spelling)')
    .option('--show-legacy-allowlist', 'print "<digest>  <path>" lines instead of the policy')
    .option('-o, --output <file>', 'write to this file instead of stdout')
    .option('-q, --quiet', 'no progress line on stderr (shown after 2 s when stderr is a terminal)')
    .action((opts: CreateOptions) => createRuntime(opts))

  const sign = policy.command('sign').description('Sign a policy (DSSE)')
  sign
    .command('runtime')
    .description('Wrap a runtime policy in a DSSE envelope signed with an EC key (Keylime ecdsa backend)')
    .requiredOption('-r, --runtime-policy <file>', 'runtime policy JSON')
    .requiredOption('-k, --keyfile <file>', 'EC private key (PEM)')
    .option('-o, --output <file>', 'write the envelope to this file instead of stdout')
    .action(async (opts: { runtimePolicy: string; keyfile: string; output?: string }) => {
      const ima = await import('../../evidence/ima/index.ts')
      const bytes = await step(`reading ${opts.runtimePolicy}`, () => readFileSync(opts.runtimePolicy))
      const key = await readText(opts.keyfile)
      let envelope: ReturnType<typeof ima.signDsseEnvelope>
      try {
        ima.parseRuntimePolicy(bytes) // refuse to sign something the verifier would reject
        envelope = ima.signDsseEnvelope(bytes, key)
      } catch (e) {
        throw asCliError(ima, e)
      }
      const text = `${JSON.stringify(envelope)}\n`
      const out = opts.output
      if (out) await step(`writing ${out}`, () => writeFileSync(out, text))
      else process.stdout.write(text)
    })

  const verify = policy.command('verify').description('Verify a signed policy')
  verify
    .command('runtime')
    .description('Verify a DSSE-signed runtime policy and print its payload')
    .requiredOption('-r, --runtime-policy <file>', 'DSSE envelope')
    .requiredOption('-k, --keyfile <file>', 'public key or certificate (PEM)')
    .action(async (opts: { runtimePolicy: string; keyfile: string }) => {
      const ima = await import('../../evidence/ima/index.ts')
      const envelope = await step(`reading ${opts.runtimePolicy}`, () => readFileSync(opts.runtimePolicy))
      const key = await readText(opts.keyfile)
      let payload: Buffer
      try {
        payload = ima.verifyDsseEnvelope(envelope, [key]).payload
        ima.parseRuntimePolicy(payload, { strict: false })
      } catch (e) {
        throw asCliError(ima, e)
      }
      process.stdout.write(`${payload.toString('utf8').trimEnd()}\n`)
    })
}
