/** The pull nonce: 20 random alphanumeric characters per quote (keylime-protocols.md §D.1). */
import { randomBytes } from 'node:crypto'

const NONCE_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'

// Nonces are drawn from a pool refilled 4 KiB at a time: one randomBytes() call per quote cost more than the rest
// of the nonce. Nonces are public, so holding future ones in memory reveals nothing.
let randomPool = Buffer.alloc(0)
let randomPoolAt = 0

export function randomNonce(length = 20): string {
  let s = ''
  while (s.length < length) {
    if (randomPoolAt >= randomPool.length) {
      randomPool = randomBytes(4096)
      randomPoolAt = 0
    }
    const byte = randomPool[randomPoolAt++] as number
    // 248 = 4 * 62: bytes above it are dropped so every character is equally likely.
    if (byte < 248) s += NONCE_CHARS[byte % 62]
  }
  return s
}
