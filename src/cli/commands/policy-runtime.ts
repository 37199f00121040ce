import { createHash } from 'node:crypto'
import { closeSync, lstatSync, openSync, readdirSync, readFileSync, readSync, writeFileSync } from 'node:fs'
import { join, relative, sep } from 'node:path'
import type { Command } from 'commander'
import {
  createRuntimePolicy,
  ImaParseError,
  isBinaryImaList,
  legacyAllowlist,
  PolicySignatureError,
  parseBinaryImaList,
  parseRuntimePolicy,
  RuntimePolicyError,
  signDsseEnvelope,
  verifyDsseEnvelope,
} from '../../evidence/ima/index.ts'

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
function* rootfsDigests(root: string, alg: RootfsHash, skip: readonly string[]): Generator<[string, string]> {
  const chunk = Buffer.allocUnsafe(1 << 20)
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
        try {
          yield [inRoot.replaceAll(' ', '_'), hashFile(full, alg, chunk)]
        } catch {
          // unreadable file: skipped
        }
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
}

function report(cmd: string, e: unknown): void {
  if (e instanceof RuntimePolicyError || e instanceof ImaParseError || e instanceof PolicySignatureError) {
    process.stderr.write(`keylime policy ${cmd}: ${e.message}\n`)
    process.exitCode = 2
    return
  }
  const code = (e as NodeJS.ErrnoException).code
  if (code === 'ENOENT' || code === 'EACCES' || code === 'EISDIR') {
    process.stderr.write(`keylime policy ${cmd}: ${(e as Error).message}\n`)
    process.exitCode = 1
    return
  }
  if (e instanceof SyntaxError) {
    process.stderr.write(`keylime policy ${cmd}: not JSON: ${e.message}\n`)
    process.exitCode = 2
    return
  }
  throw e
}

function createRuntime(opts: CreateOptions): void {
  const alg = (opts.hashAlg ?? opts.algo ?? 'sha256') as RootfsHash
  if (!Object.hasOwn(ROOTFS_HASHES, alg)) {
    process.stderr.write(`keylime policy create runtime: unknown hash algorithm ${alg}\n`)
    process.exitCode = 2
    return
  }
  try {
    let imaListText: string | undefined
    let imaEntries: ReturnType<typeof parseBinaryImaList>['entries'] | undefined
    if (opts.imaMeasurementList !== undefined) {
      const bytes = readFileSync(opts.imaMeasurementList)
      if (isBinaryImaList(bytes)) imaEntries = parseBinaryImaList(bytes).entries
      else imaListText = bytes.toString('utf8')
    }
    const skip = opts.skipPath !== undefined ? opts.skipPath.split(',').filter(Boolean) : DEFAULT_SKIP
    const policy = createRuntimePolicy({
      base: opts.basePolicy ? parseRuntimePolicy(readFileSync(opts.basePolicy), { strict: false }) : null,
      allowlistText: opts.allowlist ? readFileSync(opts.allowlist, 'utf8') : undefined,
      imaListText,
      imaEntries,
      includeKeyrings: opts.keyrings === true,
      includeImaBuf: opts.imaBuf === true,
      ignoredKeyrings: opts.ignoredKeyrings,
      excludeListText: opts.excludelist ? readFileSync(opts.excludelist, 'utf8') : undefined,
      fileDigests: opts.rootfs ? rootfsDigests(opts.rootfs, alg, skip) : undefined,
      verificationKeys: (opts.addImaSignatureVerificationKey ?? []).map((f) => readFileSync(f)),
      hashAlg: opts.rootfs || opts.hashAlg || opts.algo ? alg : undefined,
      now: new Date(),
    })
    const text = opts.showLegacyAllowlist ? legacyAllowlist(policy) : `${JSON.stringify(policy)}\n`
    if (opts.output) writeFileSync(opts.output, text)
    else process.stdout.write(text)
  } catch (e) {
    report('create runtime', e)
  }
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
    .action((opts: CreateOptions) => createRuntime(opts))

  const sign = policy.command('sign').description('Sign a policy (DSSE)')
  sign
    .command('runtime')
    .description('Wrap a runtime policy in a DSSE envelope signed with an EC key (Keylime ecdsa backend)')
    .requiredOption('-r, --runtime-policy <file>', 'runtime policy JSON')
    .requiredOption('-k, --keyfile <file>', 'EC private key (PEM)')
    .option('-o, --output <file>', 'write the envelope to this file instead of stdout')
    .action((opts: { runtimePolicy: string; keyfile: string; output?: string }) => {
      try {
        const bytes = readFileSync(opts.runtimePolicy)
        parseRuntimePolicy(bytes) // refuse to sign something the verifier would reject
        const envelope = signDsseEnvelope(bytes, readFileSync(opts.keyfile, 'utf8'))
        const text = `${JSON.stringify(envelope)}\n`
        if (opts.output) writeFileSync(opts.output, text)
        else process.stdout.write(text)
      } catch (e) {
        report('sign runtime', e)
      }
    })

  const verify = policy.command('verify').description('Verify a signed policy')
  verify
    .command('runtime')
    .description('Verify a DSSE-signed runtime policy and print its payload')
    .requiredOption('-r, --runtime-policy <file>', 'DSSE envelope')
    .requiredOption('-k, --keyfile <file>', 'public key or certificate (PEM)')
    .action((opts: { runtimePolicy: string; keyfile: string }) => {
      try {
        const { payload } = verifyDsseEnvelope(readFileSync(opts.runtimePolicy), [
          readFileSync(opts.keyfile, 'utf8'),
        ])
        parseRuntimePolicy(payload, { strict: false })
        process.stdout.write(`${payload.toString('utf8').trimEnd()}\n`)
      } catch (e) {
        report('verify runtime', e)
      }
    })
}
