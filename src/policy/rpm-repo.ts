/**
 * File digests from RPM repositories (`policy create runtime --local-rpm-repo DIR | --remote-rpm-repo URL`), as
 * upstream's keylime-policy reads them: a local repository's packages are read header by header; a remote one's
 * `filelists-ext` metadata is used when the repository has it (createrepo_c --filelists-ext), else each package's
 * headers are fetched with HTTP range requests, never the payload. A signed repository (repomd.xml.asc) is verified
 * with its repomd.xml.key before anything of it is used.
 */
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { open, readdir, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { XMLParser } from 'fast-xml-parser'
import { Agent, interceptors, request } from 'undici'
import { DecompressError, decompress, detectCompression } from './decompress.ts'
import { parseRpmFiles, type RpmFile, RpmTruncatedError } from './rpm-header.ts'

export class RpmRepoError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'RpmRepoError'
  }
}

export interface RpmDigests {
  /** `[path, lowercase hex]` of every regular file with a digest. */
  digests: [string, string][]
  packages: number
  /** Files that carry an IMA signature in their package (kept out of the policy: it has no field for them). */
  imaSignatures: number
  /** Whether the repository metadata was signed and the signature verified. */
  signed: boolean
}

export interface RpmRepoOptions {
  /** Packages read at once (upstream's --max-workers, default 8). */
  maxWorkers?: number
  onPackage?: (done: number, total: number, name: string) => void
  /** Called once when the repository is not signed (upstream warns and goes on). */
  onUnsigned?: () => void
}

export const MAX_WORKERS_DEFAULT = 8
/** First read of a package: most headers fit (upstream's estimate of a median header). */
const FIRST_READ = 24 * 1024

const ZERO = /^0*$/

function addFiles(out: RpmDigests, files: readonly RpmFile[]): void {
  for (const f of files) {
    if (f.imaSignature) out.imaSignatures++
    if (!f.regular || ZERO.test(f.digest)) continue
    out.digests.push([f.path, f.digest])
  }
}

/** Reads package headers, growing the read until they are complete. */
async function headersFrom(read: (start: number, length: number) => Promise<Buffer>): Promise<RpmFile[]> {
  let buf = await read(0, FIRST_READ)
  for (;;) {
    try {
      return parseRpmFiles(buf)
    } catch (e) {
      if (!(e instanceof RpmTruncatedError) || e.needed <= buf.length) throw e
      const more = await read(buf.length, e.needed - buf.length)
      if (more.length === 0) throw e
      buf = Buffer.concat([buf, more])
    }
  }
}

async function pooled<T>(
  items: readonly T[],
  workers: number,
  run: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0
  const lane = async () => {
    while (next < items.length) await run(items[next++] as T)
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(workers, items.length)) }, lane))
}

const xml = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  removeNSPrefix: true,
  alwaysCreateTextNode: true,
  isArray: (name) => ['data', 'package', 'file'].includes(name),
})

type XmlNode = Record<string, unknown>

function parseXml(bytes: Buffer, what: string): XmlNode {
  let text = bytes
  const kind = detectCompression(bytes, 0)
  if (kind !== undefined) {
    try {
      text = decompress(bytes, kind, what)
    } catch (e) {
      if (e instanceof DecompressError) throw new RpmRepoError(e.message)
      throw e
    }
  }
  try {
    return xml.parse(text.toString('utf8')) as XmlNode
  } catch (e) {
    throw new RpmRepoError(`${what} is not well-formed XML: ${(e as Error).message}`)
  }
}

const nodes = (n: unknown, key: string): XmlNode[] =>
  ((n as XmlNode | undefined)?.[key] as XmlNode[] | undefined) ?? []

/** `href` of the repomd.xml data entry of `type`, if the repository has one. */
function metadataHref(repomd: XmlNode, type: string): string | undefined {
  const data = nodes(repomd.repomd, 'data').find((d) => d['@type'] === type)
  const loc = data?.location as XmlNode | undefined
  return loc?.['@href'] as string | undefined
}

/** Checks repomd.xml against its detached signature with the repository's key, in a throwaway GnuPG home. */
function verifyRepomd(repomd: Buffer, signature: Buffer, key: Buffer | undefined, where: string): void {
  if (key === undefined)
    throw new RpmRepoError(`${where} is signed (repomd.xml.asc) but has no repomd.xml.key to check it with`)
  const home = mkdtempSync(join(tmpdir(), 'keylime-rpm-gpg-'))
  try {
    writeFileSync(join(home, 'repomd.xml'), repomd)
    writeFileSync(join(home, 'repomd.xml.asc'), signature)
    writeFileSync(join(home, 'repomd.xml.key'), key)
    const gpg = (...args: string[]) =>
      execFileSync('gpg', ['--homedir', home, '--batch', '--no-tty', ...args], {
        stdio: 'pipe',
        timeout: 60_000,
      })
    try {
      gpg('--import', join(home, 'repomd.xml.key'))
      gpg('--verify', join(home, 'repomd.xml.asc'), join(home, 'repomd.xml'))
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT')
        throw new RpmRepoError(`${where} is signed and gpg is not installed to check it (Debian package gpg)`)
      if ((e as NodeJS.ErrnoException).code === 'ETIMEDOUT')
        throw new RpmRepoError(`${where}: gpg did not finish checking repomd.xml within 60 s`)
      throw new RpmRepoError(`${where}: repomd.xml signature does not verify: untrusted repository`)
    }
  } finally {
    rmSync(home, { recursive: true, force: true })
  }
}

async function* rpmFiles(dir: string): AsyncGenerator<string> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = join(dir, entry.name)
    if (entry.isDirectory()) yield* rpmFiles(full)
    else if (entry.isFile() && entry.name.endsWith('.rpm')) yield full
  }
}

async function readOptional(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw e
  }
}

export async function localRepoDigests(dir: string, options: RpmRepoOptions = {}): Promise<RpmDigests> {
  if (statSync(dir, { throwIfNoEntry: false })?.isDirectory() !== true)
    throw new RpmRepoError(`${dir} is not a directory`)
  const repodata = join(dir, 'repodata')
  const repomd = await readOptional(join(repodata, 'repomd.xml'))
  if (repomd === undefined) throw new RpmRepoError(`${repodata}/repomd.xml not found: not an RPM repository`)
  const asc = await readOptional(join(repodata, 'repomd.xml.asc'))
  if (asc) verifyRepomd(repomd, asc, await readOptional(join(repodata, 'repomd.xml.key')), dir)
  else options.onUnsigned?.()

  const packages: string[] = []
  for await (const f of rpmFiles(dir)) packages.push(f)
  packages.sort()
  const out: RpmDigests = {
    digests: [],
    packages: packages.length,
    imaSignatures: 0,
    signed: asc !== undefined,
  }
  let done = 0
  await pooled(packages, options.maxWorkers ?? MAX_WORKERS_DEFAULT, async (path) => {
    const fh = await open(path, 'r')
    try {
      const files = await headersFrom(async (start, length) => {
        const b = Buffer.alloc(length)
        const { bytesRead } = await fh.read(b, 0, length, start)
        return b.subarray(0, bytesRead)
      })
      addFiles(out, files)
    } catch (e) {
      throw new RpmRepoError(`${path}: ${(e as Error).message}`)
    } finally {
      await fh.close()
    }
    options.onPackage?.(++done, packages.length, path)
  })
  return out
}

/** Mirrors redirect; a few hops are plenty. */
const dispatcher = new Agent().compose(interceptors.redirect({ maxRedirections: 3 }))

async function get(
  url: URL,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Buffer }> {
  let res: Awaited<ReturnType<typeof request>>
  try {
    res = await request(url, { headers, dispatcher })
  } catch (e) {
    throw new RpmRepoError(`${url.href}: ${(e as Error).message}`)
  }
  return { status: res.statusCode, body: Buffer.from(await res.body.arrayBuffer()) }
}

async function getRequired(url: URL): Promise<Buffer> {
  const r = await get(url)
  if (r.status !== 200) throw new RpmRepoError(`${url.href}: HTTP ${r.status}`)
  return r.body
}

async function getOptional(url: URL): Promise<Buffer | undefined> {
  const r = await get(url)
  if (r.status === 404 || r.status === 410) return undefined
  if (r.status !== 200) throw new RpmRepoError(`${url.href}: HTTP ${r.status}`)
  return r.body
}

export async function remoteRepoDigests(repoUrl: string, options: RpmRepoOptions = {}): Promise<RpmDigests> {
  let base: URL
  try {
    base = new URL(repoUrl.endsWith('/') ? repoUrl : `${repoUrl}/`)
  } catch {
    throw new RpmRepoError(`${repoUrl} is not a URL`)
  }
  if (base.protocol !== 'http:' && base.protocol !== 'https:')
    throw new RpmRepoError(`${repoUrl}: only http and https repositories are supported`)
  const repomdBytes = await getRequired(new URL('repodata/repomd.xml', base))
  const asc = await getOptional(new URL('repodata/repomd.xml.asc', base))
  if (asc)
    verifyRepomd(repomdBytes, asc, await getOptional(new URL('repodata/repomd.xml.key', base)), repoUrl)
  else options.onUnsigned?.()
  const repomd = parseXml(repomdBytes, 'repomd.xml')
  const out: RpmDigests = { digests: [], packages: 0, imaSignatures: 0, signed: asc !== undefined }

  const filelistsExt = metadataHref(repomd, 'filelists-ext')
  if (filelistsExt !== undefined) {
    const doc = parseXml(await getRequired(new URL(filelistsExt, base)), filelistsExt)
    const packages = nodes(doc['filelists-ext'] ?? doc.filelists, 'package')
    out.packages = packages.length
    for (const p of packages) {
      for (const f of nodes(p, 'file')) {
        const hash = f['@hash']
        const path = f['#text']
        if (typeof hash !== 'string' || typeof path !== 'string' || f['@type'] !== undefined) continue
        if (!ZERO.test(hash)) out.digests.push([path, hash.toLowerCase()])
      }
    }
    return out
  }

  const primaryHref = metadataHref(repomd, 'primary')
  if (primaryHref === undefined) throw new RpmRepoError(`${repoUrl}: repomd.xml names no primary metadata`)
  const primary = parseXml(await getRequired(new URL(primaryHref, base)), primaryHref)
  const urls = nodes(primary.metadata, 'package')
    .filter((p) => p['@type'] === 'rpm')
    .map((p) => (p.location as XmlNode | undefined)?.['@href'])
    .filter((h): h is string => typeof h === 'string')
    .map((h) => new URL(h, base))
  out.packages = urls.length
  let done = 0
  await pooled(urls, options.maxWorkers ?? MAX_WORKERS_DEFAULT, async (url) => {
    const files = await headersFrom(async (start, length) => {
      const r = await get(url, { range: `bytes=${start}-${start + length - 1}` })
      if (r.status === 206) return r.body
      if (r.status === 200) return r.body.subarray(start) // server ignored the range: the whole package
      if (r.status === 416) return Buffer.alloc(0)
      throw new RpmRepoError(`${url.href}: HTTP ${r.status}`)
    }).catch((e: Error) => {
      throw e instanceof RpmRepoError ? e : new RpmRepoError(`${url.href}: ${e.message}`)
    })
    addFiles(out, files)
    options.onPackage?.(++done, urls.length, url.href)
  })
  return out
}
