/**
 * Serves the IMA measurement list from an entry number without rescanning (keylime-api.md §1): byte offsets of
 * entries are remembered in an index that grows as the file grows. Works on regular files and on securityfs, whose
 * files report size 0, by reading forward until EOF instead of trusting stat.
 */
import { type FileHandle, open } from 'node:fs/promises'

const CHUNK = 1 << 16

export interface ImaListSlice {
  /** Text of complete lines starting at `entry`. */
  text: string
  /** The entry number the text starts at (0 when the requested entry was past the end). */
  entry: number
}

export class ImaMeasurementList {
  readonly path: string
  /** offsets[i] = byte offset where entry i starts; offsets[count] = end of the last complete line. */
  private offsets: number[] = [0]
  private queue: Promise<unknown> = Promise.resolve()
  /** Kept open across reads once `holdOpen` ran: securityfs lists are root-only, and run_as drops root. */
  private held: FileHandle | null = null

  constructor(path: string) {
    this.path = path
  }

  /** Number of complete entries indexed so far. */
  get indexedEntries(): number {
    return this.offsets.length - 1
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
      return this.indexedEntries
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
        this.offsets = [0]
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
      const count = this.indexedEntries
      const start = Number.isInteger(entry) && entry >= 0 && entry <= count ? entry : 0
      const from = this.offsets[start] as number
      const to = this.offsets[count] as number
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

  /** Reads what was appended since the last call and records where each new complete line starts. */
  private async extendIndex(fh: FileHandle): Promise<void> {
    const st = await fh.stat()
    let end = this.offsets[this.offsets.length - 1] as number
    // A regular file that shrank was replaced or truncated: start over (securityfs reports size 0, skip there).
    if (st.isFile() && st.size > 0 && st.size < end) {
      this.offsets = [0]
      end = 0
    }
    const buf = Buffer.allocUnsafe(CHUNK)
    let pos = end
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, CHUNK, pos)
      if (bytesRead === 0) break
      let nl = buf.indexOf(10, 0)
      while (nl !== -1 && nl < bytesRead) {
        this.offsets.push(pos + nl + 1)
        nl = buf.indexOf(10, nl + 1)
      }
      pos += bytesRead
    }
  }
}
