/**
 * One long IMA list on several threads. The PCR 10 replay is a chain (each extend needs the previous value), but
 * what costs most per entry does not: parsing the line, the template hash (checked against the logged one), the
 * bank's measurement and the policy lookup. The list is cut into chunks of whole lines; helper threads take chunks
 * from the end and run the fast path (`fast-path.ts`) over them, while the verifying thread goes from the start,
 * checking the chunks no helper has claimed itself and, for the others, only extending PCR 10 with the helpers'
 * measurements. A line a helper's fast path refused goes to the general path on the verifying thread, so failure
 * events, learned keys and device-mapper state come out exactly as in one thread.
 *
 * Claims go through one SharedArrayBuffer (compare-and-swap per chunk), so a busy or slow helper never holds the
 * verification up: a chunk nobody took when the verifying thread reaches it is simply done there. Pure: no I/O; the
 * verifier's evidence pool (`src/verifier/evidence-pool.ts`) hands the plan to its workers.
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
 * Fewest characters (newline included) of a line the fast path accepts: "10 " + a 20-byte (sha1) column in hex +
 * " ima-ng " + a three-letter algorithm + ":" + a 16-byte digest in hex + " " + a one-character name + "\n". It only
 * sizes the shared buffer: a chunk holding more accepted lines than this allows is left to the verifying thread.
 */
const MIN_ACCEPTED_LINE = 3 + 40 + 8 + 4 + 32 + 1 + 1 + 1

/** How one list is split, and where its helpers' results go; cloned to each thread (the buffer is shared). */
export interface ImaChunkPlan {
  bank: PcrBank
  /** Template-hash column algorithm (the policy's `log_hash_alg`) the fast path checks. */
  columnAlg: PcrBank
  /** Characters of the list text the plan was made for. */
  textLength: number
  /** Chunk k is the text from `starts[k]` to `starts[k + 1]` (the last one ends at `textLength`), whole lines. */
  starts: number[]
  /**
   * Int32 header (a cursor, then per chunk its state and its number of accepted lines), then per chunk the offsets
   * of its accepted lines (from the chunk's start, Int32) and their measurements.
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
const stateAt = (k: number) => 1 + 2 * k
const countAt = (k: number) => 2 + 2 * k

function layout(plan: ImaChunkPlan): Layout {
  const chunks = plan.starts.length
  const size = BANK_SIZE[plan.bank]
  const header = new Int32Array(plan.shared, 0, 1 + 2 * chunks)
  let at = header.byteLength
  const offsets: Int32Array[] = []
  const measurements: Uint8Array[] = []
  const capacity: number[] = []
  for (let k = 0; k < chunks; k++) {
    const end = k + 1 < chunks ? (plan.starts[k + 1] as number) : plan.textLength
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
 * A plan for checking `text` on several threads, or null when it is too short to be worth it (`chunkChars`: about
 * how long a chunk is; the verifying thread alone then takes the first chunk).
 */
export function planImaChunks(
  text: string,
  bank: PcrBank,
  columnAlg: PcrBank,
  chunkChars = 1 << 19,
): ImaChunkPlan | null {
  if (text.length < 2 * chunkChars) return null
  const starts = [0]
  for (let at = chunkChars; at < text.length; ) {
    // the line holding character `at - 1` ends the chunk, so each chunk is at least `chunkChars` long
    const newline = text.indexOf('\n', at - 1)
    if (newline < 0 || newline + 1 >= text.length) break
    starts.push(newline + 1)
    at = newline + 1 + chunkChars
  }
  if (starts.length < 2) return null
  const size = BANK_SIZE[bank]
  let bytes = 4 * (1 + 2 * starts.length)
  for (let k = 0; k < starts.length; k++) {
    const end = k + 1 < starts.length ? (starts[k + 1] as number) : text.length
    const lines = Math.floor((end - (starts[k] as number)) / MIN_ACCEPTED_LINE) + 1
    bytes += lines * (4 + size)
    bytes = (bytes + 3) & ~3
  }
  const plan = { bank, columnAlg, textLength: text.length, starts, shared: new SharedArrayBuffer(bytes) }
  Atomics.store(layout(plan).header, CURSOR, starts.length)
  return plan
}

/**
 * A helper thread's part: claims chunks from the end until it meets the verifying thread, and runs the fast path
 * over each. Returns the number of chunks it checked.
 */
export function helpWithImaChunks(
  plan: ImaChunkPlan,
  text: string,
  policy: CompiledRuntimePolicy | null,
): number {
  if (text.length !== plan.textLength) return 0
  const { header, offsets, measurements, capacity } = layout(plan)
  const size = BANK_SIZE[plan.bank]
  const fast = new ImaNgFastPath(plan.bank, plan.columnAlg, policy)
  const starts = new Int32Array(PREFETCH_LINES)
  const ends = new Int32Array(PREFETCH_LINES)
  let helped = 0
  for (;;) {
    const k = Atomics.sub(header, CURSOR, 1) - 1
    // chunk 0 is always the verifying thread's; a chunk it already took means it took every one before
    if (k < 1 || Atomics.compareExchange(header, stateAt(k), FREE, HELPING) !== FREE) return helped
    let state = DONE
    let count = 0
    try {
      const start = plan.starts[k] as number
      const end = k + 1 < plan.starts.length ? (plan.starts[k + 1] as number) : text.length
      const at = offsets[k] as Int32Array
      const out = measurements[k] as Uint8Array
      const room = capacity[k] as number
      for (let offset = start; offset < end && state === DONE; ) {
        let batch = 0
        while (batch < PREFETCH_LINES && offset < end) {
          let lineEnd = text.indexOf('\n', offset)
          if (lineEnd < 0 || lineEnd > end) lineEnd = end
          starts[batch] = offset
          ends[batch] = lineEnd
          offset = lineEnd + 1
          batch++
        }
        fast.prefetch(text, starts, ends, batch)
        for (let j = 0; j < batch; j++) {
          const lineStart = starts[j] as number
          const lineEnd = ends[j] as number
          if (lineEnd > lineStart && fast.measureInto(text, lineStart, lineEnd, out, count * size)) {
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
    Atomics.store(header, stateAt(k), state)
    Atomics.notify(header, stateAt(k))
    helped++
  }
}

/**
 * Gives up every chunk a helper is still checking: the verifying thread checks those itself instead of waiting (for a
 * helper that died). A helper that is in fact alive may still finish one; its results are then used or not, both
 * being right.
 */
export function abandonImaChunks(plan: ImaChunkPlan): void {
  const header = new Int32Array(plan.shared, 0, 1 + 2 * plan.starts.length)
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

  /** null when the plan does not fit this verification (another text, bank or column algorithm). */
  static for(
    plan: ImaChunkPlan | undefined,
    textLength: number,
    bank: PcrBank,
    columnAlg: PcrBank,
  ): ImaChunkReader | null {
    if (
      plan === undefined ||
      plan.textLength !== textLength ||
      plan.bank !== bank ||
      plan.columnAlg !== columnAlg
    )
      return null
    return new ImaChunkReader(plan)
  }

  private constructor(plan: ImaChunkPlan) {
    this.#plan = plan
    this.#layout = layout(plan)
    this.#size = BANK_SIZE[plan.bank]
  }

  get chunks(): number {
    return this.#plan.starts.length
  }

  /** Where chunk `k` starts in the text. */
  start(k: number): number {
    return this.#plan.starts[k] as number
  }

  /**
   * Takes chunk `k` for the verifying thread, or waits for the helper that has it. Returns the number of lines the
   * helper accepted (their offsets and measurements via `offsetAt` / `copyMeasurement`), or -1: check it here.
   */
  claim(k: number): number {
    const header = this.#layout.header
    if (k === 0 || Atomics.compareExchange(header, stateAt(k), FREE, VERIFYING) === FREE) return -1
    let state = Atomics.load(header, stateAt(k))
    while (state === HELPING) {
      Atomics.wait(header, stateAt(k), HELPING, 1000)
      state = Atomics.load(header, stateAt(k))
    }
    return state === DONE ? Atomics.load(header, countAt(k)) : -1
  }

  /** Offset from the chunk's start of its `i`th accepted line. */
  offsetAt(k: number, i: number): number {
    return (this.#layout.offsets[k] as Int32Array)[i] as number
  }

  /** Copies the measurement of chunk `k`'s `i`th accepted line into `out` at `offset`. */
  copyMeasurement(k: number, i: number, out: Uint8Array, offset: number): void {
    const from = this.#layout.measurements[k] as Uint8Array
    const size = this.#size
    for (let b = 0, p = i * size; b < size; b++) out[offset + b] = from[p + b] as number
  }
}
