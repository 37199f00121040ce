import { TpmFormatError } from '../errors.ts'

/**
 * Bounds-checked big-endian reader over one buffer. Every read checks the remaining length first, so a
 * decoder can never read past its buffer; failures are `TpmFormatError` carrying the offset and field path.
 */
export class TpmReader {
  readonly bytes: Uint8Array
  offset: number
  /** End of the readable region (a sized field narrows it while its contents are decoded). */
  private end: number
  private readonly view: DataView
  private readonly path: string[] = []

  constructor(bytes: Uint8Array, offset = 0, end = bytes.length) {
    this.bytes = bytes
    this.offset = offset
    this.end = end
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  }

  get remaining(): number {
    return this.end - this.offset
  }

  /** Throws a format error at the current offset and path. */
  fail(message: string, at = this.offset): never {
    throw new TpmFormatError(message, at, this.path.join('.'))
  }

  /** Decodes `fn` with `name` appended to the error path. */
  scope<T>(name: string, fn: () => T): T {
    this.path.push(name)
    const value = fn()
    this.path.pop()
    return value
  }

  private need(n: number, what: string): void {
    if (n > this.end - this.offset) {
      this.fail(`truncated: ${what} needs ${n} bytes, ${this.end - this.offset} left`)
    }
  }

  u8(what = 'u8'): number {
    this.need(1, what)
    return this.view.getUint8(this.offset++)
  }

  u16(what = 'u16'): number {
    this.need(2, what)
    const v = this.view.getUint16(this.offset)
    this.offset += 2
    return v
  }

  u32(what = 'u32'): number {
    this.need(4, what)
    const v = this.view.getUint32(this.offset)
    this.offset += 4
    return v
  }

  u64(what = 'u64'): bigint {
    this.need(8, what)
    const v = this.view.getBigUint64(this.offset)
    this.offset += 8
    return v
  }

  /** `n` bytes as a view into the buffer (no copy; callers that keep it beyond the buffer's life should copy). */
  raw(n: number, what = 'bytes'): Uint8Array {
    this.need(n, what)
    const v = this.bytes.subarray(this.offset, this.offset + n)
    this.offset += n
    return v
  }

  /** A TPM2B: u16 size then that many bytes. `max` bounds the size where the spec does. */
  tpm2b(what = 'TPM2B', max?: number): Uint8Array {
    const size = this.u16(`${what}.size`)
    if (max !== undefined && size > max) this.fail(`${what} size ${size} exceeds ${max}`, this.offset - 2)
    return this.raw(size, what)
  }

  /**
   * A sized structure (`u16 size` + contents, e.g. TPM2B_PUBLIC): `fn` decodes the contents within exactly
   * `size` bytes and must consume all of them. Returns the value and the raw contents.
   */
  sized<T>(what: string, fn: (r: TpmReader) => T): { value: T; raw: Uint8Array } {
    const size = this.u16(`${what}.size`)
    this.need(size, what)
    const start = this.offset
    const outerEnd = this.end
    this.end = start + size
    const value = fn(this)
    if (this.offset !== this.end) this.fail(`${what}: ${this.end - this.offset} unused bytes inside the size`)
    this.end = outerEnd
    return { value, raw: this.bytes.subarray(start, start + size) }
  }

  /** Requires the whole buffer to have been consumed. */
  expectEnd(what: string): void {
    if (this.offset !== this.end) this.fail(`${this.end - this.offset} trailing bytes after ${what}`)
  }
}

/**
 * Runs a decoder over a whole buffer, requiring exact consumption, and turns any stray exception into a
 * `TpmFormatError` so callers only ever see that type.
 */
export function decodeExact<T>(bytes: Uint8Array, what: string, fn: (r: TpmReader) => T): T {
  if (!(bytes instanceof Uint8Array)) throw new TpmFormatError(`${what}: input is not a byte array`, 0, what)
  const r = new TpmReader(bytes)
  try {
    const value = r.scope(what, () => fn(r))
    r.expectEnd(what)
    return value
  } catch (err) {
    if (err instanceof TpmFormatError) throw err
    throw new TpmFormatError(`${what}: ${(err as Error)?.message ?? String(err)}`, r.offset, what)
  }
}
