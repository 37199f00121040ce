/**
 * One long IMA list on several threads. The PCR 10 replay is a chain (each extend needs the previous value), but
 * what costs most per entry does not: parsing the line, the template hash, the bank's measurement and the policy
 * lookup. The list (its UTF-8 bytes, in a SharedArrayBuffer that every thread reads in place) is cut into chunks of
 * whole lines; helper threads take the first chunks nobody has taken and run the fast path (`fast-path.ts`) over
 * them, storing each accepted line's measurement. The verifying thread goes through the chunks in order: one nobody
 * took it checks itself, extending as it goes; for a checked one it only extends PCR 10 with the stored measurements
 * (without even reading the lines when every one was accepted); and when the next one is still being checked, it
 * checks the first chunk nobody has taken, as a helper would, instead of waiting. So both threads stay busy to the
 * end, the verifying thread doing the extends and less of the checking. A line the fast path refused goes to the
 * general path on the verifying thread, in order, so failure events, learned keys and device-mapper state come out
 * exactly as in one thread.
 *
 * Claims go through one SharedArrayBuffer (a cursor and a compare-and-swap per chunk), so a busy or slow helper never
 * holds the verification up. Pure: no I/O; the verifier's evidence pool (`src/verifier/evidence-pool.ts`) hands the
 * plan to its workers.
 */
import { ImaNgFastPath, PREFETCH_LINES } from './fast-path.ts'
import { BANK_SIZE, type PcrBank } from './hash-algs.ts'
import type { CompiledRuntimePolicy } from './policy.ts'

/** Chunk states in the shared header. */
const FREE = 0
const HELPING = 1
const VERIFYING = 2
const DONE = 3
const FAILED = 4

/**
 * Fewest bytes (newline included) of a line the fast path accepts: "10 " + a 20-byte (sha1) column in hex +
 * " ima-ng " + a three-letter algorithm + ":" + a 16-byte digest in hex + " " + a one-character name + "\n". It only
 * sizes the shared buffer: a chunk holding more accepted lines than this allows is left to the verifying thread.
 */
const MIN_ACCEPTED_LINE = 3 + 40 + 8 + 4 + 32 + 1 + 1 + 1

const NEWLINE = 10

/** How one list is split, and where its helpers' results go; cloned to each thread (its buffers are shared). */
export interface ImaChunkPlan {
  bank: PcrBank
  /** Template-hash column algorithm (the policy's `log_hash_alg`). */
  columnAlg: PcrBank
  /**
   * Whether helpers compare each logged template hash with the computed one (always when the column's algorithm is
   * the bank's). Not needed for a replay anchored to a quote (`ImaIncrementVerification`), which is what the
   * verifier runs; a verification that compares them uses only a plan that did.
   */
  checkColumn: boolean
  /** The list's UTF-8 bytes, in a SharedArrayBuffer: every thread reads this one copy. */
  list: Uint8Array
  /** Chunk k is the list from `starts[k]` to `starts[k + 1]` (the last one ends at its end), whole lines. */
  starts: number[]
  /**
   * Int32 header (a cursor, then per chunk its state, its number of accepted lines and its number of lines), then
   * per chunk the offsets of its accepted lines (from the chunk's start, Int32) and their measurements.
   */
  shared: SharedArrayBuffer
}

interface Layout {
  header: Int32Array
  /** Per chunk: offsets and measurements of its accepted lines, and how many fit. */
  offsets: Int32Array[]
  measurements: Uint8Array[]
  capacity: number[]
}

const CURSOR = 0
const stateAt = (k: number) => 1 + 3 * k
const countAt = (k: number) => 2 + 3 * k
const linesAt = (k: number) => 3 + 3 * k
const headerInts = (chunks: number) => 1 + 3 * chunks

/** A Buffer over `list`'s memory (shared or not): its `indexOf` is several times faster than Uint8Array's. */
export function listBuffer(list: Uint8Array): Buffer {
  return Buffer.isBuffer(list) ? list : Buffer.from(list.buffer, list.byteOffset, list.byteLength)
}

/**
 * The UTF-8 bytes of `text` in a SharedArrayBuffer, for threads to read in place: at the start of `reuse` when it is
 * long enough (memory touched before: first writes to fresh pages cost far more than the encoding itself).
 */
export function sharedListBytes(text: string, reuse?: SharedArrayBuffer | null): Uint8Array {
  const bytes = Buffer.byteLength(text, 'utf8')
  const list =
    reuse != null && reuse.byteLength >= bytes
      ? new Uint8Array(reuse, 0, bytes)
      : new Uint8Array(new SharedArrayBuffer(bytes))
  listBuffer(list).write(text, 0, 'utf8')
  return list
}

function layout(plan: ImaChunkPlan): Layout {
  const chunks = plan.starts.length
  const size = BANK_SIZE[plan.bank]
  const header = new Int32Array(plan.shared, 0, headerInts(chunks))
  let at = header.byteLength
  const offsets: Int32Array[] = []
  const measurements: Uint8Array[] = []
  const capacity: number[] = []
  for (let k = 0; k < chunks; k++) {
    const end = k + 1 < chunks ? (plan.starts[k + 1] as number) : plan.list.length
    const lines = Math.floor((end - (plan.starts[k] as number)) / MIN_ACCEPTED_LINE) + 1
    capacity.push(lines)
    offsets.push(new Int32Array(plan.shared, at, lines))
    at += lines * 4
    measurements.push(new Uint8Array(plan.shared, at, lines * size))
    at += lines * size
    at = (at + 3) & ~3
  }
  return { header, offsets, measurements, capacity }
}

/**
 * A plan for checking `list` (UTF-8 bytes in a SharedArrayBuffer, see `sharedListBytes`) on several threads, or null
 * when it is too short to be worth it (`chunkBytes`: about how long a chunk is; the verifying thread alone then
 * takes the first chunk).
 */
export function planImaChunks(
  list: Uint8Array,
  bank: PcrBank,
  columnAlg: PcrBank,
  chunkBytes = 1 << 19,
  { checkColumn = false }: { checkColumn?: boolean } = {},
): ImaChunkPlan | null {
  if (list.length < 2 * chunkBytes || !(list.buffer instanceof SharedArrayBuffer)) return null
  const bytesOf = listBuffer(list)
  const starts = [0]
  for (let at = chunkBytes; at < list.length; ) {
    // the line holding byte `at - 1` ends the chunk, so each chunk is at least `chunkBytes` long
    const newline = bytesOf.indexOf(NEWLINE, at - 1)
    if (newline < 0 || newline + 1 >= list.length) break
    starts.push(newline + 1)
    at = newline + 1 + chunkBytes
  }
  if (starts.length < 2) return null
  const size = BANK_SIZE[bank]
  let bytes = 4 * headerInts(starts.length)
  for (let k = 0; k < starts.length; k++) {
    const end = k + 1 < starts.length ? (starts[k + 1] as number) : list.length
    const lines = Math.floor((end - (starts[k] as number)) / MIN_ACCEPTED_LINE) + 1
    bytes += lines * (4 + size)
    bytes = (bytes + 3) & ~3
  }
  const plan: ImaChunkPlan = {
    bank,
    columnAlg,
    checkColumn: checkColumn || columnAlg === bank,
    list,
    starts,
    shared: new SharedArrayBuffer(bytes),
  }
  // chunk 0 is the verifying thread's
  Atomics.store(layout(plan).header, CURSOR, 1)
  return plan
}

/** Takes the first chunk nobody has taken (its state becomes HELPING), or returns -1 when none is left. */
function takeFreeChunk(header: Int32Array, chunks: number): number {
  for (;;) {
    const k = Atomics.add(header, CURSOR, 1)
    if (k >= chunks) return -1
    // the verifying thread may have reached it first
    if (Atomics.compareExchange(header, stateAt(k), FREE, HELPING) === FREE) return k
  }
}

/** Runs the fast path over a chunk taken by `takeFreeChunk`, stores what it accepted and publishes the state. */
class ChunkChecker {
  readonly #plan: ImaChunkPlan
  readonly #layout: Layout
  readonly #list: Buffer
  readonly #fast: ImaNgFastPath
  readonly #starts = new Int32Array(PREFETCH_LINES)
  readonly #ends = new Int32Array(PREFETCH_LINES)

  constructor(plan: ImaChunkPlan, layout: Layout, policy: CompiledRuntimePolicy | null) {
    this.#plan = plan
    this.#layout = layout
    this.#list = listBuffer(plan.list)
    this.#fast = new ImaNgFastPath(plan.bank, plan.columnAlg, policy, { checkColumn: plan.checkColumn })
  }

  check(k: number): void {
    const plan = this.#plan
    const { header, offsets, measurements, capacity } = this.#layout
    const list = this.#list
    const fast = this.#fast
    const starts = this.#starts
    const ends = this.#ends
    const size = BANK_SIZE[plan.bank]
    let state = DONE
    let count = 0
    let lines = 0
    try {
      const start = plan.starts[k] as number
      const end = k + 1 < plan.starts.length ? (plan.starts[k + 1] as number) : list.length
      const at = offsets[k] as Int32Array
      const out = measurements[k] as Uint8Array
      const room = capacity[k] as number
      for (let offset = start; offset < end && state === DONE; ) {
        let batch = 0
        while (batch < PREFETCH_LINES && offset < end) {
          let lineEnd = list.indexOf(NEWLINE, offset)
          if (lineEnd < 0 || lineEnd > end) lineEnd = end
          starts[batch] = offset
          ends[batch] = lineEnd
          offset = lineEnd + 1
          batch++
        }
        lines += batch
        fast.prefetch(list, starts, ends, batch)
        for (let j = 0; j < batch; j++) {
          const lineStart = starts[j] as number
          const lineEnd = ends[j] as number
          if (lineEnd > lineStart && fast.measureInto(list, lineStart, lineEnd, out, count * size)) {
            if (count === room) {
              state = FAILED
              break
            }
            at[count++] = lineStart - start
          }
        }
      }
    } catch {
      state = FAILED
    }
    Atomics.store(header, countAt(k), count)
    Atomics.store(header, linesAt(k), lines)
    Atomics.store(header, stateAt(k), state)
    Atomics.notify(header, stateAt(k))
  }
}

/**
 * A helper thread's part: takes the first chunks nobody has taken, one after the other, and runs the fast path over
 * each (reading the plan's shared list in place), until none is left. Returns the number of chunks it checked.
 */
export function helpWithImaChunks(plan: ImaChunkPlan, policy: CompiledRuntimePolicy | null): number {
  const { header } = layout(plan)
  const checker = new ChunkChecker(plan, layout(plan), policy)
  let helped = 0
  for (
    let k = takeFreeChunk(header, plan.starts.length);
    k >= 0;
    k = takeFreeChunk(header, plan.starts.length)
  ) {
    checker.check(k)
    helped++
  }
  return helped
}

/**
 * Gives up every chunk a helper is still checking: the verifying thread checks those itself instead of waiting (for a
 * helper that died). A helper that is in fact alive may still finish one; its results are then used or not, both
 * being right.
 */
export function abandonImaChunks(plan: ImaChunkPlan): void {
  const header = new Int32Array(plan.shared, 0, headerInts(plan.starts.length))
  for (let k = 1; k < plan.starts.length; k++) {
    if (Atomics.compareExchange(header, stateAt(k), HELPING, FAILED) === HELPING)
      Atomics.notify(header, stateAt(k))
  }
}

/** The verifying thread's side of a plan: per chunk, either "check it here" or the helper's accepted lines. */
export class ImaChunkReader {
  readonly #plan: ImaChunkPlan
  readonly #layout: Layout
  readonly #size: number
  readonly #policy: CompiledRuntimePolicy | null
  /** Checks chunks as a helper does, made when first needed. */
  #checker: ChunkChecker | null = null

  /**
   * null when the plan does not fit this verification (another list, bank or column algorithm, or its helpers did not
   * compare the template-hash columns this verification compares).
   */
  static for(
    plan: ImaChunkPlan | undefined,
    list: Uint8Array,
    bank: PcrBank,
    columnAlg: PcrBank,
    checkColumn: boolean,
    policy: CompiledRuntimePolicy | null,
  ): ImaChunkReader | null {
    if (
      plan === undefined ||
      (checkColumn && !plan.checkColumn) ||
      plan.list.buffer !== list.buffer ||
      plan.list.byteOffset !== list.byteOffset ||
      plan.list.length !== list.length ||
      plan.bank !== bank ||
      plan.columnAlg !== columnAlg
    )
      return null
    return new ImaChunkReader(plan, policy)
  }

  private constructor(plan: ImaChunkPlan, policy: CompiledRuntimePolicy | null) {
    this.#plan = plan
    this.#layout = layout(plan)
    this.#size = BANK_SIZE[plan.bank]
    this.#policy = policy
  }

  get chunks(): number {
    return this.#plan.starts.length
  }

  /** Where chunk `k` starts in the text. */
  start(k: number): number {
    return this.#plan.starts[k] as number
  }

  /**
   * Takes chunk `k` for the verifying thread, or the results of whoever checked it. Returns the number of lines
   * accepted there (their offsets and measurements via `offsetAt` / `copyMeasurement`), or -1: check it here. While
   * a helper is still checking it, checks chunks nobody has taken yet (as a helper would), and waits only when none
   * is left.
   */
  claim(k: number): number {
    const header = this.#layout.header
    if (k === 0 || Atomics.compareExchange(header, stateAt(k), FREE, VERIFYING) === FREE) return -1
    let state = Atomics.load(header, stateAt(k))
    while (state === HELPING) {
      const free = takeFreeChunk(header, this.#plan.starts.length)
      if (free >= 0) {
        this.#checker ??= new ChunkChecker(this.#plan, this.#layout, this.#policy)
        this.#checker.check(free)
      } else Atomics.wait(header, stateAt(k), HELPING, 1000)
      state = Atomics.load(header, stateAt(k))
    }
    return state === DONE ? Atomics.load(header, countAt(k)) : -1
  }

  /** Lines in chunk `k` as its helper counted them (once `claim` returned its accepted lines). */
  lines(k: number): number {
    return Atomics.load(this.#layout.header, linesAt(k))
  }

  /** Offset from the chunk's start of its `i`th accepted line. */
  offsetAt(k: number, i: number): number {
    return (this.#layout.offsets[k] as Int32Array)[i] as number
  }

  /** The measurements of chunk `k`'s accepted lines, one after the other (bank size each). */
  measurements(k: number): Uint8Array {
    return this.#layout.measurements[k] as Uint8Array
  }

  /** Copies the measurement of chunk `k`'s `i`th accepted line into `out` at `offset`. */
  copyMeasurement(k: number, i: number, out: Uint8Array, offset: number): void {
    const from = this.#layout.measurements[k] as Uint8Array
    const size = this.#size
    for (let b = 0, p = i * size; b < size; b++) out[offset + b] = from[p + b] as number
  }
}
