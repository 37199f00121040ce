import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import type { Command } from 'commander'
import { CliError, EXIT, step } from '../errors.ts'
import { createProgress } from '../progress.ts'

type Ima = typeof import('../../evidence/ima/index.ts')

const FILE_HASH_NAMES = ['sha1', 'sha256', 'sha384', 'sha512', 'sm3_256'] as const
type FileHash = (typeof FILE_HASH_NAMES)[number]
const ROOTFS_DEFAULT_SKIP = '/sys,/run,/proc,/lost+found,/dev,/media,/snap,/mnt,/var,/tmp'
/** Where the kernel exposes the live IMA list; `-m` without a file reads it, as upstream. */
const LIVE_IMA_LIST = '/sys/kernel/security/ima/ascii_runtime_measurements'
const MAX_WORKERS_DEFAULT = 8

interface CreateOptions {
  imaMeasurementList?: string | true
  rootfs?: string
  ramdiskDir?: string
  localRpmRepo?: string
  remoteRpmRepo?: string
  maxWorkers?: string
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

function positiveInt(text: string | undefined, flag: string, fallback: number): number {
  if (text === undefined) return fallback
  const n = Number(text)
  if (!Number.isInteger(n) || n < 1) throw new CliError(`${flag} must be a positive integer`, EXIT.usage)
  return n
}

async function createRuntime(opts: CreateOptions): Promise<void> {
  const alg = (opts.hashAlg ?? opts.algo ?? 'sha256') as FileHash
  if (!FILE_HASH_NAMES.includes(alg)) {
    throw new CliError(
      `unknown hash algorithm ${JSON.stringify(alg)}`,
      EXIT.usage,
      'use sha1, sha256, sha384, sha512 or sm3_256',
    )
  }
  const workers = positiveInt(opts.maxWorkers, '--max-workers', MAX_WORKERS_DEFAULT)
  const imaList = opts.imaMeasurementList === true ? LIVE_IMA_LIST : opts.imaMeasurementList
  const inputs = [
    imaList,
    opts.rootfs,
    opts.ramdiskDir,
    opts.localRpmRepo,
    opts.remoteRpmRepo,
    opts.allowlist,
    opts.basePolicy,
  ]
  if (inputs.every((i) => i === undefined) && (opts.addImaSignatureVerificationKey ?? []).length === 0) {
    throw new CliError(
      'no input: the policy would allow nothing',
      EXIT.usage,
      'give an IMA list (-m, alone for the live one), a root filesystem (--rootfs), initrds (--ramdisk-dir), an RPM repository (--local-rpm-repo, --remote-rpm-repo), an allowlist (-a), a base policy (-p) or a signing key (-A)',
    )
  }
  const ima = await import('../../evidence/ima/index.ts')
  let imaListText: string | undefined
  let imaEntries: ReturnType<typeof ima.parseBinaryImaList>['entries'] | undefined
  if (imaList !== undefined) {
    const bytes = await step(`reading ${imaList}`, () => readFileSync(imaList))
    if (ima.isBinaryImaList(bytes)) imaEntries = ima.parseBinaryImaList(bytes).entries
    else imaListText = bytes.toString('utf8')
  }
  const base = opts.basePolicy
  const baseBytes = base === undefined ? undefined : await step(`reading ${base}`, () => readFileSync(base))
  const keys = await Promise.all(
    (opts.addImaSignatureVerificationKey ?? []).map((f) => step(`reading ${f}`, () => readFileSync(f))),
  )
  const fileDigests = await collectFileDigests(opts, alg, workers)
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
      fileDigests,
      verificationKeys: keys,
      hashAlg: opts.rootfs || opts.ramdiskDir || opts.hashAlg || opts.algo ? alg : undefined,
      now: new Date(),
    })
  } catch (e) {
    throw asCliError(ima, e)
  }
  const text = opts.showLegacyAllowlist ? ima.legacyAllowlist(policy) : `${JSON.stringify(policy)}\n`
  const out = opts.output
  if (out) await step(`writing ${out}`, () => writeFileSync(out, text))
  else process.stdout.write(text)
}

/** Digests from the file sources: root filesystem, initrds and RPM repositories, with a progress line each. */
async function collectFileDigests(
  opts: CreateOptions,
  alg: FileHash,
  workers: number,
): Promise<[string, string][]> {
  const out: [string, string][] = []
  const quiet = opts.quiet === true
  if (opts.rootfs !== undefined) {
    const root = opts.rootfs
    const { rootfsDigests } = await import('../../policy/rootfs.ts')
    const skip = (opts.skipPath ?? ROOTFS_DEFAULT_SKIP).split(',').filter(Boolean)
    const progress = createProgress(`hashing ${root}`, { quiet })
    try {
      out.push(
        ...(await rootfsDigests(root, {
          alg,
          skip,
          workers: opts.maxWorkers === undefined ? undefined : workers,
          onProgress: (n, last) =>
            progress.update(() => `${n.toLocaleString('en-US')} files hashed, now ${last}`),
        })),
      )
    } finally {
      progress.done()
    }
  }
  if (opts.ramdiskDir !== undefined) {
    const dir = opts.ramdiskDir
    const { ramdiskDigests, InitrdError } = await import('../../policy/initrd.ts')
    const progress = createProgress(`reading initrds in ${dir}`, { quiet })
    try {
      out.push(...ramdiskDigests(dir, alg, (file, n) => progress.update(() => `${file}: ${n} files`)))
    } catch (e) {
      if (e instanceof InitrdError || (e as NodeJS.ErrnoException).code === 'ENOENT')
        throw new CliError((e as Error).message, EXIT.usage)
      if (e instanceof Error && e.name === 'CpioError') throw new CliError(`${dir}: ${e.message}`, EXIT.usage)
      throw e
    } finally {
      progress.done()
    }
  }
  for (const [source, where] of [
    ['local', opts.localRpmRepo],
    ['remote', opts.remoteRpmRepo],
  ] as const) {
    if (where === undefined) continue
    const repo = await import('../../policy/rpm-repo.ts')
    const progress = createProgress(`reading packages of ${where}`, { quiet })
    const options = {
      maxWorkers: workers,
      onPackage: (done: number, total: number) => progress.update(() => `${done}/${total} packages`),
      onUnsigned: () => {
        if (!quiet) process.stderr.write(`warning: ${where} is not signed (no repomd.xml.asc); going on\n`)
      },
    }
    try {
      const r =
        source === 'local'
          ? await repo.localRepoDigests(where, options)
          : await repo.remoteRepoDigests(where, options)
      out.push(...r.digests)
      if (r.imaSignatures > 0 && !quiet)
        process.stderr.write(
          `note: ${r.imaSignatures} files of ${where} carry IMA signatures; a runtime policy holds keys, not signatures: add the signing key with -A to accept them\n`,
        )
    } catch (e) {
      if (e instanceof repo.RpmRepoError) throw new CliError(e.message, EXIT.usage)
      throw e
    } finally {
      progress.done()
    }
  }
  return out
}

interface SignOptions {
  runtimePolicy: string
  keyfile?: string
  keypath?: string
  backend: string
  certOutfile?: string
  output?: string
}

/** Upstream's default file for a key it creates. */
const DEFAULT_NEW_KEY_FILE = 'keylime-ecdsa-key.pem'

/** Writes a file that must not exist yet: a key or certificate is never overwritten. */
function writeNew(file: string, text: string, mode: number): Promise<void> {
  return step(`writing ${file}`, () => {
    if (existsSync(file))
      throw new CliError(`${file} exists; not overwriting it`, EXIT.usage, 'remove it or choose another path')
    writeFileSync(file, text, { mode, flag: 'wx' })
  })
}

async function signRuntime(opts: SignOptions): Promise<void> {
  const ima = await import('../../evidence/ima/index.ts')
  const signing = await import('../../policy/sign.ts')
  const backend = opts.backend.toLowerCase()
  if (!(signing.DSSE_BACKENDS as readonly string[]).includes(backend))
    throw new CliError(`unknown backend ${JSON.stringify(opts.backend)}`, EXIT.usage, 'use ecdsa or x509')
  if (opts.keyfile !== undefined && opts.keypath !== undefined)
    throw new CliError('give -k (an existing key) or -p (a new key), not both', EXIT.usage)
  const certOut = opts.certOutfile
  if (backend === 'x509' && certOut === undefined)
    throw new CliError('the x509 backend needs -c, the file to write the signer certificate to', EXIT.usage)
  const bytes = await step(`reading ${opts.runtimePolicy}`, () => readFileSync(opts.runtimePolicy))
  try {
    ima.parseRuntimePolicy(bytes) // refuse to sign something the verifier would reject, before creating any key
  } catch (e) {
    throw asCliError(ima, e)
  }
  let key: ReturnType<typeof signing.newSigningKey>
  if (opts.keyfile !== undefined) {
    const pem = await readText(opts.keyfile)
    try {
      key = signing.readSigningKey(pem)
    } catch (e) {
      throw new CliError(`${opts.keyfile}: ${(e as Error).message}`, EXIT.usage)
    }
  } else {
    key = signing.newSigningKey()
    const keyOut = opts.keypath ?? DEFAULT_NEW_KEY_FILE
    await writeNew(keyOut, signing.signingKeyPem(key), 0o600)
    process.stderr.write(`new signing key written to ${keyOut}\n`)
  }
  let certificate: string | undefined
  if (backend === 'x509' && certOut !== undefined) {
    certificate = await signing.signerCertificate(key, new Date())
    await writeNew(certOut, certificate, 0o644)
  }
  let envelope: ReturnType<typeof signing.signRuntimePolicy>
  try {
    envelope = signing.signRuntimePolicy(bytes, key, certificate)
  } catch (e) {
    throw asCliError(ima, e)
  }
  const text = `${JSON.stringify(envelope)}\n`
  const out = opts.output
  if (out) await step(`writing ${out}`, () => writeFileSync(out, text))
  else process.stdout.write(text)
}

interface ConvertOptions {
  allowlist?: string
  runtimePolicy?: string
  excludelist?: string
  verificationKeys?: string[]
  output: string
}

async function convertRuntime(opts: ConvertOptions): Promise<void> {
  if ((opts.allowlist === undefined) === (opts.runtimePolicy === undefined))
    throw new CliError('give one of -a (allowlist) and -r (runtime policy)', EXIT.usage)
  const ima = await import('../../evidence/ima/index.ts')
  const { convertRuntimePolicy } = await import('../../policy/convert.ts')
  const keys = await Promise.all(
    (opts.verificationKeys ?? []).map((f) => step(`reading ${f}`, () => readFileSync(f))),
  )
  let converted: ReturnType<typeof convertRuntimePolicy>
  try {
    converted = convertRuntimePolicy({
      allowlistText: opts.allowlist === undefined ? undefined : await readText(opts.allowlist),
      policyText: opts.runtimePolicy === undefined ? undefined : await readText(opts.runtimePolicy),
      excludeListText: opts.excludelist === undefined ? undefined : await readText(opts.excludelist),
      verificationKeys: keys,
      now: new Date(),
    })
  } catch (e) {
    throw asCliError(ima, e)
  }
  for (const note of converted.notes) process.stderr.write(`${note}\n`)
  await step(`writing ${opts.output}`, () =>
    writeFileSync(opts.output, `${JSON.stringify(converted.policy)}\n`),
  )
}

const collect = (value: string, previous: string[] = []) => [...previous, value]

/** `keylime policy create runtime`, `sign runtime`, `verify runtime` and `convert`. */
export function registerRuntimePolicyCommands(policy: Command, create: Command): void {
  create
    .command('runtime')
    .description('Create a runtime (IMA) policy from an IMA list, a root filesystem, allowlists and keys')
    .option(
      '-m, --ima-measurement-list [file]',
      `IMA measurement list (ASCII or binary); alone, the live list ${LIVE_IMA_LIST}`,
    )
    .option('--rootfs <dir>', 'hash every regular file under this directory')
    .option(
      '-s, --skip-path <paths>',
      `comma-separated paths to skip under --rootfs (default ${ROOTFS_DEFAULT_SKIP})`,
    )
    .option(
      '--ramdisk-dir <dir>',
      'hash the files of every initrd (initrd*, initramfs*) in this directory, e.g. /boot',
    )
    .option(
      '--local-rpm-repo <dir>',
      'file digests of the packages of a local RPM repository (createrepo layout)',
    )
    .option('--remote-rpm-repo <url>', 'file digests of the packages of a remote RPM repository (http/https)')
    .option(
      '--max-workers <n>',
      `packages read at once, and threads hashing --rootfs (default ${MAX_WORKERS_DEFAULT}; --rootfs: one per core)`,
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
    .description('Wrap a runtime policy in a DSSE envelope (Keylime ecdsa or x509 backend)')
    .requiredOption('-r, --runtime-policy <file>', 'runtime policy JSON')
    .option('-k, --keyfile <file>', 'EC private key (PEM) to sign with')
    .option(
      '-p, --keypath <file>',
      `write a new EC key here and sign with it (default ${DEFAULT_NEW_KEY_FILE} without -k)`,
    )
    .option('-b, --backend <name>', 'DSSE backend: ecdsa (default) or x509', 'ecdsa')
    .option(
      '-c, --cert-outfile <file>',
      'x509 backend: write the signer certificate here (required with -b x509)',
    )
    .option('-o, --output <file>', 'write the envelope to this file instead of stdout')
    .action((opts: SignOptions) => signRuntime(opts))

  policy
    .command('convert')
    .description('Convert a legacy allowlist or an older runtime policy to a current runtime policy')
    .option('-a, --allowlist <file>', 'legacy allowlist: JSON with "hashes", or <digest> <path> lines')
    .option('-r, --runtime-policy <file>', 'runtime policy of an older version')
    .option('-e, --excludelist <file>', 'exclude list to add: one Python regex per line')
    .option('-v, --verification-keys <file...>', 'IMA signature verification keys to add')
    .requiredOption('-o, --output <file>', 'where to write the converted policy')
    .action((opts: ConvertOptions) => convertRuntime(opts))

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
