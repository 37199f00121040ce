/** Payload zip extraction through team CRYPTO's safe extractor (refuses zip-slip, links, devices, bombs). */
import { extractPayloadZipSafely } from '../payload/extract.ts'

/** Limits sized for upstream's 1 MiB payload cap with generous room for compression. */
export async function extractZipSafely(zip: Uint8Array, destDir: string): Promise<void> {
  await extractPayloadZipSafely(zip, destDir, {
    maxEntries: 1000,
    maxTotalBytes: 64 * 1024 * 1024,
    maxRatio: 200,
  })
}
