/**
 * Incremental verification of an IMA measurement list against the quoted PCR 10 and a compiled runtime policy
 * (spec ima-and-runtime-policy §6-§7, protocols §G). Pure: the verifier passes the stored state in and persists the
 * returned one; no I/O, no clock.
 */
import { type FailureEvent, failure, PASS, type Verdict } from '../verdict.ts'
import { type ImaChunkPlan, ImaChunkReader, listBuffer } from './chunks.ts'
import { type DmState, DmStateError, DmValidator, isDmEventName } from './dm.ts'
import { type ImaEntry, parseImaLine, splitImaLines } from './entry.ts'
import { ImaParseError } from './errors.ts'
import type { ExcludeMatcher } from './excludes.ts'
import { ImaNgFastPath, PREFETCH_LINES } from './fast-path.ts'
import { BANK_SIZE, digestLatin1, digestWith, isPcrBank, type PcrBank } from './hash-algs.ts'
import { ImaKeyring, type KeyringJson, parseKeyBuffer } from './keyring.ts'
import { allowedDigests, type CompiledRuntimePolicy, type DigestIndex, lookupDigest } from './policy.ts'
import { entryMeasurement } from './replay.ts'
import { verifyImaSignature } from './signature.ts'

/** Per-agent replay state; plain JSON, persisted by the verifier between quotes (and across verifier restarts). */
export interface ImaReplayState {
  version: 1
  /** Entry number to request next (`ima_ml_entry`). */
  nextEntry: number
  /** PCR 10 (hex) after entry `nextEntry - 1`, per bank that has been replayed. */
  pcr10: Partial<Record<PcrBank, string>>
  /** Keys learned from ima-buf key measurements, per kernel keyring name. */
  learnedKeyrings: Record<string, KeyringJson>
  /** Where the quote matched last time and how long that list was (quote-progress check). */
  progress: { matchLine: number; logLength: number } | null
  /** Device-mapper devices as of `nextEntry`, when the policy has a `dm_policy`. */
  dm?: DmState
}

export function initialImaReplayState(): ImaReplayState {
  return { version: 1, nextEntry: 0, pcr10: {}, learnedKeyrings: {}, progress: null }
}

export interface VerifyImaIncrementInput {
  /**
   * List text starting at entry `firstEntry`, or its UTF-8 bytes (as `sharedListBytes` makes them for threads to
   * share); text is read as its UTF-8 bytes either way.
   */
  listText: string | Uint8Array
  /** Entry number the agent says the text starts at (`ima_measurement_list_entry`). */
  firstEntry: number
  state: ImaReplayState | null
  /** PCR 10 from the verified quote; `value: null` (or no object) replays and checks without anchoring. */
  quotedPcr10: { hashAlg: PcrBank; value: string | Uint8Array | null } | null
  /** null: no runtime policy (only template hashes and signatures are checked, as upstream with `None`). */
  policy: CompiledRuntimePolicy | null
  /** Boot aggregates from the measured-boot log, `{bank: [hex…]}`, accepted for the `boot_aggregate` entry. */
  bootAggregates?: Partial<Record<string, readonly string[]>>
  /** Per-agent verification keys (deprecated `ima_sign_verification_keys`); replaces the policy's keys. */
  verificationKeys?: ImaKeyring
  /**
   * true: violations (ToMToU/open-writers) are accepted silently. false: each one is an `ima.validation.tomtou`
   * failure. Upstream inverts its own option; this follows the option's name. Default true (= upstream's shipped
   * behaviour of no event).
   */
  ignoreTomtouErrors?: boolean
  /** Helper threads check chunks of a long list with this plan (`chunks.ts`); ignored when it does not fit. */
  chunks?: ImaChunkPlan
}

export interface VerifyImaIncrementResult {
  verdict: Verdict
  state: ImaReplayState
  /** Lines into `listText` at which the running value matched the quote (0 = before any line), or null. */
  matchedAt: number | null
  /** Running PCR 10 (hex) after the last line. */
  running: string
  /** Lines processed (parse failures included). */
  lines: number
}

const NEWLINE = 10
/** About how many characters of a list given as text are encoded at a time. */
const TEXT_SEGMENT_CHARS = 1 << 18

function toHex(v: string | Uint8Array): string {
  return typeof v === 'string' ? v.toLowerCase().replace(/^0x/, '') : Buffer.from(v).toString('hex')
}

function resetResult(events: FailureEvent[], running: string, lines: number): VerifyImaIncrementResult {
  return { verdict: { ok: false, events }, state: initialImaReplayState(), matchedAt: null, running, lines }
}

/** Checks one entry against the policy (no I/O); pushes failures to `events`. */
class EntryValidator {
  readonly #policy: CompiledRuntimePolicy | null
  readonly #keyrings: ImaKeyring[]
  readonly #learned: Map<string, ImaKeyring>
  readonly #bootAggregates: ReadonlySet<string>
  readonly #events: FailureEvent[]
  readonly logHashAlg: PcrBank
  readonly #ignoreTomtou: boolean
  readonly #input: VerifyImaIncrementInput
  readonly #dm: DmValidator | null = null

  constructor(input: VerifyImaIncrementInput, learned: Map<string, ImaKeyring>, events: FailureEvent[]) {
    this.#input = input
    this.#policy = input.policy
    this.#learned = learned
    this.#events = events
    this.logHashAlg = input.policy?.logHashAlg ?? 'sha1'
    this.#ignoreTomtou = input.ignoreTomtouErrors ?? true
    const tenantKeys = input.verificationKeys ?? input.policy?.verificationKeys ?? new ImaKeyring()
    this.#keyrings = [tenantKeys, ...learned.values()]
    const aggregates = new Set<string>()
    for (const list of Object.values(input.bootAggregates ?? {}))
      for (const d of list ?? []) aggregates.add(d.toLowerCase())
    this.#bootAggregates = aggregates
    const dmPolicy = input.policy?.dmPolicy ?? null
    if (dmPolicy !== null) {
      // A replay from entry 0 (first run, reboot, reset) starts the device states over, like the rest of the state.
      const stored = input.firstEntry !== 0 ? input.state?.dm : undefined
      try {
        this.#dm = new DmValidator(dmPolicy, stored)
      } catch (err) {
        if (!(err instanceof DmStateError)) throw err
        events.push(failure('ima.validation.dm.invalid_state', `${err.message}; replaying from entry 0`))
        this.#dm = new DmValidator(dmPolicy)
      }
    }
  }

  /** `measurement` is the entry's per-bank digest already computed for replay (reused when banks agree). */
  validate(entry: ImaEntry, bank: PcrBank, measurement: Buffer): void {
    if (entry.pcr !== 10) {
      this.#events.push(
        failure('ima.validation.ima_pcr', {
          message: 'IMA entry is not for the IMA PCR',
          expected: '10',
          got: String(entry.pcr),
        }),
      )
      return
    }
    if (entry.violation) {
      if (!this.#ignoreTomtou) {
        this.#events.push(
          failure('ima.validation.tomtou', `ToMToU / open-writers violation for ${entry.name}`),
        )
      }
      return
    }
    const computed = this.logHashAlg === bank ? measurement : digestWith(this.logHashAlg, entry.templateData)
    if (!computed.equals(entry.templateHash)) {
      this.#events.push(
        failure('ima.validation.ima_hash', {
          message: 'IMA template hash does not match the calculated hash.',
          expected: entry.templateHash.toString('hex'),
          got: computed.toString('hex'),
        }),
      )
      return
    }
    switch (entry.templateName) {
      case 'ima':
      case 'ima-ng':
      case 'ima-modsig':
        if (this.#policy !== null) this.#checkFile(entry, this.#policy)
        return
      case 'ima-sig':
        this.#checkSigned(entry)
        return
      case 'ima-buf':
        this.#checkBuffer(entry)
        return
    }
  }

  #checkFile(entry: ImaEntry, policy: CompiledRuntimePolicy): void {
    if (entry.name === 'boot_aggregate' && this.#bootAggregates.has(entry.digestHex)) return
    this.#checkDigest(
      policy.digests,
      entry.name,
      entry.digestHex,
      entry.name === 'boot_aggregate',
      policy.excludes,
    )
  }

  /** `excludes`: an excluded name passes; tested only when the digest does not (the regex costs more). */
  #checkDigest(
    index: DigestIndex,
    name: string,
    hex: string,
    bootAggregate = false,
    excludes: ExcludeMatcher | null = null,
  ): boolean {
    const found = lookupDigest(index, name, hex)
    if (found === 'ok') return true
    if (excludes?.test(name)) return true
    if (found === 'missing' && !(bootAggregate && this.#bootAggregates.size > 0)) {
      this.#events.push(
        failure('ima.validation.ima-ng.not_in_allowlist', `File not found in allowlist: ${name}`),
      )
    } else {
      this.#events.push(
        failure('ima.validation.ima-ng.runtime_policy_hash', {
          message: 'Hash not found in runtime policy',
          got: hex,
          expected: [...allowedDigests(index, name), ...(bootAggregate ? this.#bootAggregates : [])],
        }),
      )
    }
    return false
  }

  #checkSigned(entry: ImaEntry): void {
    const policy = this.#policy
    if (entry.signature !== null) {
      if (policy?.excludes?.test(entry.name)) return
      if (verifyImaSignature(entry.signature, entry.digestAlg, entry.digest, this.#keyrings)) return
    }
    if (policy !== null) {
      this.#checkFile(entry, policy)
      return
    }
    this.#events.push(
      failure(
        'ima.validator.ima-sig.invalid_signature',
        `signature for file ${entry.name} could not be validated`,
      ),
    )
  }

  #checkBuffer(entry: ImaEntry): void {
    const policy = this.#policy
    if (policy === null || entry.buffer === null) return
    const key = parseKeyBuffer(entry.buffer)
    if (key?.kind === 'unsupported') {
      this.#events.push(
        failure('ima.invalid_key', `unsupported key measured on ${entry.name}: ${key.reason}`),
      )
      return
    }
    if (key) {
      if (policy.ignoreAllKeyrings || policy.ignoredKeyrings.has(entry.name)) return
      if (!this.#checkDigest(policy.keyrings, entry.name, entry.digestHex)) return
      let ring = this.#learned.get(entry.name)
      if (ring === undefined) {
        ring = new ImaKeyring()
        this.#learned.set(entry.name, ring)
        this.#keyrings.push(ring)
      }
      ring.add(key.key, key.keyId)
      return
    }
    if (this.#dm !== null && isDmEventName(entry.name)) {
      const { name, digestAlg, digest } = entry
      this.#dm.validate({ name, digestAlg, digest, buffer: entry.buffer }, this.#events)
      return
    }
    this.#checkDigest(policy.imaBuf, entry.name, entry.digestHex, false, policy.excludes)
  }

  /**
   * Device states as of line `matchedAt`, the point that is stored: lines after the quote's match are sent again
   * next time and must not count twice (a table load would become a second load). Only when a dm line follows the
   * match are the dm lines before it validated again, from the stored state, by this same code.
   */
  dmStateAt(list: string | Buffer, matchedAt: number, bank: PcrBank): DmState | undefined {
    if (this.#dm === null) return undefined
    const lines = splitImaLines(typeof list === 'string' ? list : list.toString('utf8'))
    const maybeDm = (text: string) => text.includes(' ima-buf ') && text.includes(' dm_')
    if (!lines.slice(matchedAt).some(maybeDm)) return this.#dm.state()
    const again = new EntryValidator(this.#input, new Map(), [])
    for (let i = 0; i < matchedAt; i++) {
      const text = lines[i] as string
      if (!maybeDm(text)) continue
      let entry: ImaEntry
      try {
        entry = parseImaLine(text, i + 1)
      } catch (err) {
        if (err instanceof ImaParseError) continue
        throw err
      }
      again.validate(entry, bank, entryMeasurement(entry, bank))
    }
    return again.#dm?.state()
  }
}

/**
 * Replays `listText` on top of the stored state, checks every entry, and finds where the running PCR 10 equals the
 * quote. Any failure returns the reset state (next request from entry 0, learned keys dropped).
 */
export function verifyImaIncrement(input: VerifyImaIncrementInput): VerifyImaIncrementResult {
  return new ImaIncrementVerification(input).finish()
}

/**
 * `verifyImaIncrement` in slices, so a server can interleave a long first replay with other work
 * (`while (!v.step(5000)) await setImmediate()`, then `v.finish()`). Same result as the one-shot call.
 *
 * The logged template-hash column is not compared with a hash of the template data when the replay is anchored to a
 * quote and the column's algorithm is not the bank's (sha1 column, sha256 quote: a third hash per entry). That
 * comparison secures nothing there: what is extended into the PCR is the bank's hash of the template data, so a
 * replay that reaches the quoted value has authenticated every entry's data up to that point, while the column is a
 * value anyone who edits the list can recompute. The column's one meaning that matters, all zeros for a violation
 * (extended as all 0xFF), is still read, and the chain binds it too: a real entry marked as a violation, or a
 * violation given a digest, extends something else than the TPM did. The column is still compared where it is free
 * (its algorithm is the bank's), by the general path (every entry the fast path leaves to it), and when nothing is
 * anchored. A replay that does not reach the quote is run again comparing every column, so a tampered entry is
 * named by its `ima.validation.ima_hash` as before, beside `ima.pcr_mismatch`. So a list whose column disagrees with
 * its data, but whose data the TPM did measure, now passes where upstream reports `ima_hash`.
 */
export class ImaIncrementVerification {
  readonly #input: VerifyImaIncrementInput
  #pass: ImaReplayPass
  #result: VerifyImaIncrementResult | null = null

  constructor(input: VerifyImaIncrementInput) {
    this.#input = input
    this.#pass = new ImaReplayPass(input, false)
  }

  /** Processes up to `maxLines` more lines; true once every line has been processed. */
  step(maxLines = Number.POSITIVE_INFINITY): boolean {
    if (this.#result !== null) return true
    if (!this.#pass.step(maxLines)) return false
    const result = this.#pass.finish()
    if (this.#pass.columnsDeferred && !this.#pass.quoteReached) {
      // the quote was not reached: again with every column compared, for events that name the tampered entries
      this.#pass = new ImaReplayPass(this.#input, true)
      return false
    }
    this.#result = result
    return true
  }

  /** Processes what is left and returns the verdict and the state to persist. */
  finish(): VerifyImaIncrementResult {
    while (!this.step()) {}
    return this.#result as VerifyImaIncrementResult
  }
}

/** One replay of the list; `strict`: every template-hash column compared, no helpers' chunks. */
class ImaReplayPass {
  readonly #input: VerifyImaIncrementInput
  /** Fast-path entries' template-hash columns are not compared (anchored replay, column algorithm not the bank's). */
  readonly columnsDeferred: boolean
  readonly #bank: PcrBank
  /** Quoted PCR 10 as latin1 (one char per byte), compared with each running value; null: not anchored. */
  readonly #targetLatin1: string | null
  readonly #targetHex: string | null
  readonly #continuing: boolean
  readonly #events: FailureEvent[] = []
  readonly #learned = new Map<string, ImaKeyring>()
  /**
   * The list's UTF-8 bytes, read in place: all of them, or for a list given as text the segment being read (a list
   * is encoded a segment of whole lines at a time, so that a long one is never copied whole).
   */
  #list: Buffer
  /** A list given as text, and how many of its characters the segments so far hold. */
  readonly #text: string | null = null
  #textAt = 0
  #segment = Buffer.alloc(0)
  /** Running PCR 10 in the first half, the next measurement in the second. */
  readonly #joined: Buffer
  readonly #fastPath: ImaNgFastPath | null
  /** Helpers' results for a chunked list; null: every line is checked here. */
  readonly #chunks: ImaChunkReader | null = null
  /** The chunk being read: its number, where it starts and where the next one starts. */
  #chunk = 0
  #chunkStart = 0
  #chunkEnd = Number.POSITIVE_INFINITY
  /** Lines the helper accepted in this chunk (-1: the chunk is checked here), and the next of them to meet. */
  #accepted = -1
  #nextAccepted = 0
  readonly #batchStarts = new Int32Array(PREFETCH_LINES)
  readonly #batchEnds = new Int32Array(PREFETCH_LINES)
  #validator: EntryValidator | null = null
  /** Lines processed so far, and where the next one starts in the text. */
  #index = 0
  #offset = 0
  #matchedAt: number | null = null
  #matchedRunning: Buffer | null = null
  #early: VerifyImaIncrementResult | null = null

  constructor(input: VerifyImaIncrementInput, strict: boolean) {
    this.#input = input
    this.columnsDeferred = false
    const bank = input.quotedPcr10?.hashAlg ?? 'sha1'
    if (!isPcrBank(bank)) throw new ImaParseError(`unsupported PCR bank ${String(bank)}`)
    this.#bank = bank
    this.#targetHex = input.quotedPcr10?.value == null ? null : toHex(input.quotedPcr10.value)
    const size = BANK_SIZE[bank]
    const target = this.#targetHex === null ? null : Buffer.from(this.#targetHex, 'hex')
    if (target !== null && target.length !== size) {
      throw new ImaParseError(`quoted PCR 10 is not a ${bank} value`)
    }
    this.#targetLatin1 = target === null ? null : target.toString('latin1')
    this.#joined = Buffer.alloc(size * 2)
    this.#fastPath = null
    this.#list = Buffer.alloc(0)
    const state = input.state
    this.#continuing = input.firstEntry !== 0
    if (this.#continuing) {
      const expected = state?.nextEntry ?? 0
      const storedHex = state?.pcr10[bank]
      const stored = storedHex === undefined ? undefined : Buffer.from(storedHex, 'hex')
      if (state === null || input.firstEntry !== expected || stored?.length !== size) {
        const message =
          stored?.length !== size && state !== null && input.firstEntry === expected
            ? `No PCR 10 ${bank} value stored to continue from entry ${expected}`
            : 'IMA measurement list entry number is not the requested one'
        const event = failure(
          'qoute_validation.invalid_ima_entry_nb',
          { message, got: input.firstEntry, expected },
          false,
        )
        this.#early = resetResult([event], this.#runningHex(), 0)
        return
      }
      stored.copy(this.#joined, 0)
      for (const [name, json] of Object.entries(state.learnedKeyrings)) {
        this.#learned.set(name, ImaKeyring.fromJSON(json))
      }
    }
    this.#validator = new EntryValidator(input, this.#learned, this.#events)
    const columnAlg = this.#validator.logHashAlg
    const checkColumn = strict || target === null || columnAlg === bank
    this.columnsDeferred = !checkColumn
    this.#fastPath = new ImaNgFastPath(bank, columnAlg, input.policy, { checkColumn })
    const list = input.listText
    if (typeof list === 'string') {
      this.#text = list
      this.#nextSegment()
    } else {
      this.#list = listBuffer(list)
      if (!strict)
        this.#chunks = ImaChunkReader.for(
          input.chunks,
          this.#list,
          bank,
          columnAlg,
          checkColumn,
          input.policy,
        )
    }
    if (this.#chunks !== null) this.#chunkEnd = this.#chunks.start(1)
    const running = this.#joined.subarray(0, size)
    if (target !== null && running.equals(target)) {
      this.#matchedAt = 0
      this.#matchedRunning = Buffer.from(running)
    }
  }

  /** Encodes the next segment of a list given as text; false when there is none. */
  #nextSegment(): boolean {
    const text = this.#text
    if (text === null || this.#textAt >= text.length) return false
    let end = text.indexOf('\n', this.#textAt + TEXT_SEGMENT_CHARS)
    end = end < 0 ? text.length : end + 1
    // UTF-8 takes at most three bytes per UTF-16 code unit
    const most = 3 * (end - this.#textAt)
    if (this.#segment.length < most) this.#segment = Buffer.allocUnsafe(most)
    const bytes = this.#segment.write(text.slice(this.#textAt, end), 0, 'utf8')
    this.#list = this.#segment.subarray(0, bytes)
    this.#textAt = end
    this.#offset = 0
    return true
  }

  /** Whether the running value met the quoted one (the result's `matchedAt` is null for any failure). */
  get quoteReached(): boolean {
    return this.#matchedAt !== null
  }

  #runningHex(): string {
    return this.#joined.toString('hex', 0, BANK_SIZE[this.#bank])
  }

  /** Processes up to `maxLines` more lines; true once every line has been processed. */
  step(maxLines = Number.POSITIVE_INFINITY): boolean {
    const validator = this.#validator
    if (this.#early !== null || validator === null) return true
    const bank = this.#bank
    const size = BANK_SIZE[bank]
    // running ‖ measurement: each extend hashes this buffer and writes the result back into its first half.
    const joined = this.#joined
    const fast = this.#fastPath
    const chunks = this.#chunks
    const target = this.#targetLatin1
    // Lines as `splitImaLines` cuts them (on "\n", no line after a final "\n"), read in place in the list.
    let list = this.#list
    let length = list.length
    let offset = this.#offset
    let i = this.#index
    const stop = Math.min(Number.MAX_SAFE_INTEGER, i + maxLines)
    // lines go in batches, so that the fast path can fetch their policy entries together first
    const starts = this.#batchStarts
    const ends = this.#batchEnds
    while (i < stop) {
      if (offset >= length) {
        if (!this.#nextSegment()) break
        list = this.#list
        length = list.length
        offset = 0
      }
      if (chunks !== null && offset >= this.#chunkEnd) this.#nextChunk(chunks, offset)
      const accepted = this.#accepted
      if (
        accepted >= 0 &&
        offset === this.#chunkStart &&
        accepted === chunks?.lines(this.#chunk) &&
        i + accepted <= stop
      ) {
        // the helper accepted every line of this chunk: only the extends are left, the lines need no reading
        i = this.#extendChunk(chunks, i)
        offset = Math.min(this.#chunkEnd, length)
        continue
      }
      // a batch stays within one chunk
      const batchLimit = Math.min(length, this.#chunkEnd)
      let batch = 0
      while (batch < PREFETCH_LINES && i + batch < stop && offset < batchLimit) {
        let end = list.indexOf(NEWLINE, offset)
        if (end < 0) end = length
        starts[batch] = offset
        ends[batch] = end
        offset = end + 1
        batch++
      }
      if (accepted < 0) fast?.prefetch(list, starts, ends, batch)
      for (let j = 0; j < batch; j++, i++) {
        const start = starts[j] as number
        const end = ends[j] as number
        if (start === end) continue
        let measured: boolean
        if (accepted < 0) measured = fast?.measureInto(list, start, end, joined, size) === true
        else {
          // the helper's fast path accepted this line, or refused it and left it to the general path below
          const k = this.#chunk
          const next = this.#nextAccepted
          measured = next < accepted && chunks?.offsetAt(k, next) === start - this.#chunkStart
          if (measured) {
            chunks?.copyMeasurement(k, next, joined, size)
            this.#nextAccepted = next + 1
          }
        }
        if (!measured) {
          const line = list.toString('utf8', start, end)
          let entry: ImaEntry
          try {
            entry = parseImaLine(line, i + 1)
          } catch (err) {
            if (!(err instanceof ImaParseError)) throw err
            this.#events.push(
              failure('ima.parser.entry', `Line was not parsable into a valid IMA entry: ${line}`),
            )
            continue
          }
          const measurement = entryMeasurement(entry, bank)
          joined.set(measurement, size)
          validator.validate(entry, bank, measurement)
        }
        const running = digestLatin1(bank, joined)
        for (let b = 0; b < size; b++) joined[b] = running.charCodeAt(b)
        if (running === target && this.#matchedAt === null) {
          this.#matchedAt = i + 1
          this.#matchedRunning = Buffer.from(running, 'latin1')
        }
      }
    }
    this.#index = i
    this.#offset = offset
    return offset >= length && (this.#text === null || this.#textAt >= this.#text.length)
  }

  /** Extends PCR 10 with every measurement of the current chunk (all its lines, as its helper accepted them). */
  #extendChunk(chunks: ImaChunkReader, first: number): number {
    const bank = this.#bank
    const size = BANK_SIZE[bank]
    const joined = this.#joined
    const target = this.#targetLatin1
    const k = this.#chunk
    const count = this.#accepted
    let i = first
    const from = chunks.measurements(k)
    for (let n = 0, p = 0; n < count; n++) {
      for (let b = size; b < 2 * size; b++, p++) joined[b] = from[p] as number
      const running = digestLatin1(bank, joined)
      for (let b = 0; b < size; b++) joined[b] = running.charCodeAt(b)
      i++
      if (running === target && this.#matchedAt === null) {
        this.#matchedAt = i
        this.#matchedRunning = Buffer.from(running, 'latin1')
      }
    }
    this.#nextAccepted = count
    return i
  }

  /** Moves to the chunk holding the line that starts at `start`: claims it, or takes the helper's results. */
  #nextChunk(chunks: ImaChunkReader, start: number): void {
    while (start >= this.#chunkEnd) {
      const k = ++this.#chunk
      this.#chunkStart = chunks.start(k)
      this.#chunkEnd = k + 1 < chunks.chunks ? chunks.start(k + 1) : Number.POSITIVE_INFINITY
      this.#accepted = chunks.claim(k)
      this.#nextAccepted = 0
    }
  }

  /** Processes what is left and returns the verdict and the state to persist. */
  finish(): VerifyImaIncrementResult {
    if (this.#early !== null) return this.#early
    this.step()
    const events = this.#events
    const lineCount = this.#index
    const matchedAt = this.#matchedAt
    const state = this.#input.state
    const runningHex = this.#runningHex()
    if (this.#targetLatin1 !== null && matchedAt === null) {
      events.push(
        failure('ima.pcr_mismatch', `IMA measurement list does not match TPM PCR ${this.#targetHex}`),
      )
    }
    const previous = this.#continuing ? (state?.progress ?? null) : null
    if (matchedAt !== null && previous !== null) {
      const lag = previous.logLength - previous.matchLine
      if (lag > 0 && matchedAt !== lineCount && matchedAt < lag) {
        events.push(
          failure(
            'ima.quote_progress',
            `Quote matched IMA list at line ${matchedAt}, before the previous lag of ${lag} lines was caught up`,
          ),
        )
      }
    }
    if (events.length > 0) return resetResult(events, runningHex, lineCount)

    const learnedJson: Record<string, KeyringJson> = {}
    for (const [name, ring] of this.#learned) learnedJson[name] = ring.toJSON()
    let next: ImaReplayState
    if (matchedAt !== null && this.#matchedRunning !== null) {
      const dm = this.#validator?.dmStateAt(this.#text ?? this.#list, matchedAt, this.#bank)
      next = {
        version: 1,
        nextEntry: this.#input.firstEntry + matchedAt,
        pcr10: { [this.#bank]: this.#matchedRunning.toString('hex') },
        learnedKeyrings: learnedJson,
        progress: { matchLine: matchedAt, logLength: lineCount },
        ...(dm === undefined ? {} : { dm }),
      }
    } else {
      next = this.#continuing && state !== null ? state : initialImaReplayState()
    }
    return { verdict: PASS, state: next, matchedAt, running: runningHex, lines: lineCount }
  }
}
