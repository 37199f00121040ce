/**
 * Payload modes of `keylime tenant add` (keylime-protocols.md §C step 4, §E): `-f FILE` encrypts a file (or, with
 * `--include DIR`, a zip of the file plus the directory's files) under a fresh K; `-k KEYFILE -p PAYLOAD` takes
 * K, U, V from a key file and an already-encrypted payload; `--cert` zips are passed in as `inline` bytes.
 */
import { createHmac } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { basename } from 'node:path'
import { authTag, encryptPayload, generateKuv, rsaOaepEncrypt } from '../crypto/payload.ts'
// zip.ts directly: the package index also loads the certificate-package code and its X.509 library.
import { buildPayloadZip, readIncludeDir } from '../payload/zip.ts'
import { EXIT_USAGE, TenantError } from './errors.ts'
import type { PayloadCrypto, PreparedPayload } from './tenant-service.ts'

export const payloadCrypto: PayloadCrypto = {
  authTag: (k, uuid) => authTag(k, uuid),
  encryptToAgent: (pubkeyPem, data) => rsaOaepEncrypt(pubkeyPem, data).toString('base64'),
  hmacChallenge: (k, challenge) => createHmac('sha384', k).update(challenge, 'utf8').digest('hex'),
}

function readOrUsage(path: string, what: string): Buffer {
  try {
    return readFileSync(path)
  } catch (err) {
    throw new TenantError(`cannot read ${what} ${path}: ${(err as Error).message}`, EXIT_USAGE)
  }
}

export interface PayloadSources {
  file?: string
  key?: string
  payload?: string
  include?: string
  /** Plaintext already built in memory (the `--cert` package). */
  inline?: Buffer
  maxPayloadSize: number
}

export async function preparePayloadFromFiles(src: PayloadSources): Promise<PreparedPayload | undefined> {
  if (src.key) {
    const lines = readOrUsage(src.key, 'key file')
      .toString('utf8')
      .split(/\r?\n/)
      .filter((l) => l.trim() !== '')
    if (lines.length < 3)
      throw new TenantError(`key file ${src.key} needs three base64 lines: K, U, V`, EXIT_USAGE)
    const [k, u, v] = lines.slice(0, 3).map((l) => Buffer.from(l.trim(), 'base64')) as [
      Buffer,
      Buffer,
      Buffer,
    ]
    const blob = readOrUsage(src.payload as string, 'encrypted payload')
      .toString('utf8')
      .trim()
    return { k, u, v, payload: blob }
  }
  let plaintext: Buffer
  if (src.inline) plaintext = src.inline
  else if (src.file) {
    plaintext = readOrUsage(src.file, 'payload file')
    if (src.include) {
      const { entries } = await readIncludeDir(src.include)
      plaintext = await buildPayloadZip([{ name: basename(src.file), data: plaintext }, ...entries])
    }
  } else return undefined
  if (plaintext.length > src.maxPayloadSize) {
    throw new TenantError(
      `payload is ${plaintext.length} bytes, more than max_payload_size (${src.maxPayloadSize})`,
      EXIT_USAGE,
    )
  }
  const { k, u, v } = generateKuv()
  return { k, u, v, payload: encryptPayload(k, plaintext) }
}
