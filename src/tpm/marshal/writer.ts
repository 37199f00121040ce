/** Growable big-endian writer for TPM structures and command buffers. */
export class TpmWriter {
  private buf: Uint8Array
  private view: DataView
  length = 0

  constructor(initialSize = 256) {
    this.buf = new Uint8Array(initialSize)
    this.view = new DataView(this.buf.buffer)
  }

  private ensure(n: number): void {
    if (this.length + n <= this.buf.length) return
    let size = this.buf.length * 2
    while (size < this.length + n) size *= 2
    const next = new Uint8Array(size)
    next.set(this.buf.subarray(0, this.length))
    this.buf = next
    this.view = new DataView(next.buffer)
  }

  u8(v: number): this {
    this.ensure(1)
    this.view.setUint8(this.length, v)
    this.length += 1
    return this
  }

  u16(v: number): this {
    this.ensure(2)
    this.view.setUint16(this.length, v)
    this.length += 2
    return this
  }

  u32(v: number): this {
    this.ensure(4)
    this.view.setUint32(this.length, v >>> 0)
    this.length += 4
    return this
  }

  u64(v: bigint): this {
    this.ensure(8)
    this.view.setBigUint64(this.length, v)
    this.length += 8
    return this
  }

  raw(bytes: Uint8Array): this {
    this.ensure(bytes.length)
    this.buf.set(bytes, this.length)
    this.length += bytes.length
    return this
  }

  tpm2b(bytes: Uint8Array): this {
    if (bytes.length > 0xffff) throw new RangeError(`TPM2B too large: ${bytes.length} bytes`)
    return this.u16(bytes.length).raw(bytes)
  }

  /** Writes `u16 size` followed by what `fn` writes (TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE ...). */
  sized(fn: (w: TpmWriter) => void): this {
    const at = this.length
    this.u16(0)
    fn(this)
    const size = this.length - at - 2
    if (size > 0xffff) throw new RangeError(`sized structure too large: ${size} bytes`)
    this.view.setUint16(at, size)
    return this
  }

  /** Overwrites a u32 already written at `at` (command size in the header). */
  patchU32(at: number, v: number): void {
    this.view.setUint32(at, v >>> 0)
  }

  finish(): Uint8Array {
    return this.buf.slice(0, this.length)
  }
}

/** Encodes with a fresh writer. */
export function encodeWith(fn: (w: TpmWriter) => void): Uint8Array {
  const w = new TpmWriter()
  fn(w)
  return w.finish()
}
