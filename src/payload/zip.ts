/** Building payload zips (tenant side): in-memory entries to zip bytes. */
import { lstat, readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import yazl from 'yazl'
import { PayloadArchiveError } from './errors.ts'

export interface ZipEntryInput {
  /** relative path inside the archive, '/' separated */
  name: string
  data: Uint8Array | string
  /** unix permission bits (default 0o600) */
  mode?: number
}

export interface BuildZipOptions {
  /** deflate entries (default false: stored, as upstream's certificate package) */
  compress?: boolean
}

const SAFE_NAME = /^(?!\/)(?!.*(?:^|\/)\.\.?(?:\/|$))[^\0\\]+$/

/** Zips the entries in the given order. Refuses unsafe or duplicate names. */
export async function buildPayloadZip(
  entries: readonly ZipEntryInput[],
  options: BuildZipOptions = {},
): Promise<Buffer> {
  const zip = new yazl.ZipFile()
  const seen = new Set<string>()
  const mtime = new Date()
  for (const e of entries) {
    if (!SAFE_NAME.test(e.name) || e.name.endsWith('/')) {
      throw new PayloadArchiveError(`refusing to add unsafe archive name ${JSON.stringify(e.name)}`)
    }
    if (seen.has(e.name)) throw new PayloadArchiveError(`duplicate archive entry ${e.name}`)
    seen.add(e.name)
    const data = typeof e.data === 'string' ? Buffer.from(e.data, 'utf8') : Buffer.from(e.data)
    zip.addBuffer(data, e.name, {
      compress: options.compress ?? false,
      mode: 0o100000 | (e.mode ?? 0o600),
      mtime,
    })
  }
  zip.end()
  const chunks: Buffer[] = []
  for await (const chunk of zip.outputStream as AsyncIterable<Buffer>) chunks.push(chunk)
  return Buffer.concat(chunks)
}

/**
 * The regular files directly inside `dir` (tenant `--include`), as zip entries. Symlinks, devices and
 * sub-directories are skipped, as upstream only copies plain files.
 */
export async function readIncludeDir(dir: string): Promise<{ entries: ZipEntryInput[]; skipped: string[] }> {
  const entries: ZipEntryInput[] = []
  const skipped: string[] = []
  let names: string[]
  try {
    names = (await readdir(dir)).sort()
  } catch (cause) {
    throw new PayloadArchiveError(`cannot read include directory ${dir}`, { cause })
  }
  for (const name of names) {
    const path = join(dir, name)
    const info = await lstat(path)
    if (!info.isFile()) {
      skipped.push(name)
      continue
    }
    entries.push({ name, data: await readFile(path), mode: info.mode & 0o777 })
  }
  return { entries, skipped }
}
