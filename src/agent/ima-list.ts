/**
 * Serves the IMA measurement list from an entry number without rescanning (keylime-api.md §1): the byte offset of
 * every `STRIDE`th entry is remembered in an index that grows as the file grows, so a request seeks to the nearest
 * remembered entry before it and reads forward at most `STRIDE - 1` lines. A list of 1,000,000 entries costs about
 * 4,000 numbers, not a million. Works on regular files and on securityfs, whose files report size 0, by reading
 * forward until EOF instead of trusting stat.
 */
import { type FileHandle, open } from 'node:fs/promises'

const CHUNK = 1 << 16
/** Entries between two remembered offsets. */
export const IMA_INDEX_STRIDE = 256

export interface ImaListSlice {
  /** Text of complete lines starting at `entry`. */
  text: string
  /** The entry number the text starts at (0 when the requested entry was past the end). */
  entry: number
}

export class ImaMeasurementList {
  readonly path: string
  /** checkpoints[k] = byte offset where entry k × STRIDE starts. */
  private checkpoints: number[] = [0]
  /** Complete entries seen so far, and the byte offset after the last of them. */
  private count = 0
  private end = 0
  private queue: Promise<unknown> = Promise.resolve()
  /** Kept open across reads once `holdOpen` ran: securityfs lists are root-only, and run_as drops root. */
  private held: FileHandle | null = null

  constructor(path: string) {
    this.path = path
  }

  /** Number of complete entries indexed so far. */
  get indexedEntries(): number {
    return this.count
  }

  /**
   * Entries from `entry` on, or null when the file does not exist (the field is then omitted). An entry past the
   * end returns the whole list and entry 0, as upstream does.
   */
  read(entry: number): Promise<ImaListSlice | null> {
    const run = this.queue.then(() => this.readNow(entry))
    this.queue = run.catch(() => undefined)
    return run
  }

  /** Number of complete entries in the list now, or null when it does not exist (reads only what was appended). */
  entryCount(): Promise<number | null> {
    const run = this.queue.then(() => this.countNow())
    this.queue = run.catch(() => undefined)
    return run
  }

  /** Opens the list now and reads through that handle from then on (a missing list is still looked up per read). */
  async holdOpen(): Promise<void> {
    if (this.held) return
    try {
      this.held = await open(this.path, 'r')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
  }

  /** Closes the held handle once pending reads are done. */
  close(): Promise<void> {
    const run = this.queue.then(async () => {
      const fh = this.held
      this.held = null
      await fh?.close()
    })
    this.queue = run.catch(() => undefined)
    return run
  }

  private async countNow(): Promise<number | null> {
    const fh = await this.handle()
    if (fh === null) return null
    try {
      await this.extendIndex(fh)
      return this.count
    } finally {
      if (fh !== this.held) await fh.close()
    }
  }

  /** The held handle, else a newly opened one (the caller closes it), else null when the list does not exist. */
  private async handle(): Promise<FileHandle | null> {
    if (this.held) return this.held
    try {
      return await open(this.path, 'r')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        this.reset()
        return null
      }
      throw err
    }
  }

  private async readNow(entry: number): Promise<ImaListSlice | null> {
    const fh = await this.handle()
    if (fh === null) return null
    const ownHandle = fh !== this.held
    try {
      await this.extendIndex(fh)
      const start = Number.isInteger(entry) && entry >= 0 && entry <= this.count ? entry : 0
      const from = await this.offsetOf(fh, start)
      const to = this.end
      const buf = Buffer.allocUnsafe(to - from)
      let filled = 0
      while (filled < buf.length) {
        const { bytesRead } = await fh.read(buf, filled, buf.length - filled, from + filled)
        if (bytesRead === 0) break
        filled += bytesRead
      }
      return { text: buf.subarray(0, filled).toString('utf8'), entry: start }
    } finally {
      if (ownHandle) await fh.close()
    }
  }

  private reset(): void {
    this.checkpoints = [0]
    this.count = 0
    this.end = 0
  }

  /** Byte offset of an indexed entry: from the checkpoint at or before it, forward over the lines between. */
  private async offsetOf(fh: FileHandle, entry: number): Promise<number> {
    const k = Math.floor(entry / IMA_INDEX_STRIDE)
    let pos = this.checkpoints[k] as number
    let skip = entry - k * IMA_INDEX_STRIDE
    const buf = Buffer.allocUnsafe(CHUNK)
    while (skip > 0) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(CHUNK, this.end - pos), pos)
      if (bytesRead === 0) throw new Error(`${this.path} changed while it was read`)
      let nl = buf.indexOf(10, 0)
      while (nl !== -1 && nl < bytesRead && skip > 0) {
        skip--
        if (skip === 0) return pos + nl + 1
        nl = buf.indexOf(10, nl + 1)
      }
      pos += bytesRead
    }
    return pos
  }

  /** Reads what was appended since the last call, counting complete lines and remembering every STRIDEth start. */
  private async extendIndex(fh: FileHandle): Promise<void> {
    const st = await fh.stat()
    // A regular file that shrank was replaced or truncated: start over (securityfs reports size 0, skip there).
    if (st.isFile() && st.size > 0 && st.size < this.end) this.reset()
    const buf = Buffer.allocUnsafe(CHUNK)
    let pos = this.end
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, CHUNK, pos)
      if (bytesRead === 0) break
      let nl = buf.indexOf(10, 0)
      while (nl !== -1 && nl < bytesRead) {
        this.count++
        this.end = pos + nl + 1
        if (this.count % IMA_INDEX_STRIDE === 0) this.checkpoints.push(this.end)
        nl = buf.indexOf(10, nl + 1)
      }
      pos += bytesRead
    }
  }
}
