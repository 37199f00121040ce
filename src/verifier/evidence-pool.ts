/**
 * The verifier's pool of evidence worker threads: the pure evidence pipeline (quote signature, clock, PCR policy,
 * boot-log replay, IMA replay and policy) runs on every core while the event loop keeps scheduling, agent I/O and
 * the database. Workers start as they are needed, up to `workers`.
 *
 * - Back-pressure: each worker holds at most `depth` jobs (enough to stay busy while the event loop is); further jobs
 *   wait in one queue of at most `maxQueued`; past that `run` waits for room, so callers slow down instead of piling
 *   inputs up.
 * - Copies: a policy's text is sent to a worker once (it keeps the compiled policy by key, at most
 *   `maxPoliciesPerWorker`, the oldest forgotten first); the boot log's bytes are transferred, not copied; a long
 *   IMA list is written once into a SharedArrayBuffer as UTF-8, which every worker reads in place; the quote and a
 *   short IMA list are cloned.
 * - One long IMA list uses every idle worker: the idle ones check chunks of it while the job's worker extends PCR 10
 *   through them in order and checks chunks too (`src/evidence/ima/chunks.ts`), sharing one more
 *   SharedArrayBuffer; a busy worker is never waited for.
 * - Failures fail closed for one attestation: a job that throws rejects with the worker's error; a worker that dies
 *   (crash, or ended because one evaluation outlasted `jobTimeoutMs`) rejects the job it was running, re-queues the
 *   jobs waiting behind it and is replaced.
 */
import { createRequire } from 'node:module'
import { availableParallelism } from 'node:os'
import { pathToFileURL } from 'node:url'
import { Worker } from 'node:worker_threads'
import {
  abandonImaChunks,
  type ImaChunkPlan,
  isPcrBank,
  planImaChunks,
  sharedListBytes,
} from '../evidence/ima/index.ts'
import type { EvidenceInput, EvidenceResult } from '../evidence/pipeline.ts'
import type {
  EvidenceJob,
  EvidenceJobReply,
  ImaHelpJob,
  PolicyRef,
  PolicySource,
  WireEvidenceInput,
} from './evidence-job.ts'

export interface EvidencePoolOptions {
  /** Worker threads at most; default one per core. */
  workers?: number
  /** Jobs handed to one worker at once. */
  depth?: number
  /** Jobs waiting for a worker before `run` itself waits. */
  maxQueued?: number
  /** Compiled policies kept by each worker. */
  maxPoliciesPerWorker?: number
  /** Longest one evaluation may run before its worker is ended (that attestation fails closed). */
  jobTimeoutMs?: number
  /** Where a compiled policy of an input came from (the policy store records it). */
  sourceOf: (policy: object) => PolicySource | undefined
  /** Told each time a worker dies (for the log). */
  onWorkerDied?: (reason: string) => void
  /**
   * About how many bytes of an IMA list one helper chunk holds; lists shorter than two chunks stay on one worker.
   * Default 512 Ki (~3,500 entries, a few milliseconds of work against the message that starts a helper).
   */
  imaChunkChars?: number
}

/**
 * IMA lists at least this long go to workers as shared bytes: writing them once beats the structured clone (a copy
 * on the event loop and one on the worker); shorter ones, nearly every incremental attestation, are cloned (unless
 * they are long enough for helpers, who can only read shared bytes).
 */
const SHARE_IMA_LIST_CHARS = 64 * 1024

/**
 * How long the buffer of the last long IMA list is kept for the next one. Writing a list into fresh memory costs
 * several times more than the encoding (page faults: ~0.5 s for 150 MB on the 2-core test machine, on the event
 * loop, before any worker can start), so lists that come one after the other (agents' first attestations after a
 * restart) reuse one buffer; an idle pool lets it go.
 */
const SPARE_LIST_KEEP_MS = 30_000

/** A job the pool could not evaluate: never a pass, never the agent's fault. */
export class EvidenceWorkerError extends Error {
  override name = 'EvidenceWorkerError'
}

interface Job {
  input: EvidenceInput
  resolve: (r: EvidenceResult) => void
  reject: (e: Error) => void
  /** The boot log's buffer moved to a worker: the job cannot be sent again. */
  transferred: boolean
  /** A helper's share of another job's IMA list: answered with a count, never re-sent. */
  help?: ImaChunkPlan
  /** The IMA list's bytes in a SharedArrayBuffer, made once (a job sent again reuses them). */
  sharedList?: Uint8Array
  /** The pool wrote `sharedList` into a buffer of its own, to be reused once the job is answered. */
  ownsSharedList?: boolean
}

interface Slot {
  worker: Worker
  /** Jobs posted and not answered, oldest first (a worker answers in order). */
  inFlight: Map<number, Job>
  /** Policy keys this worker holds, least recently used first. */
  known: Set<string>
  lastError: string | null
  /** The entry module has loaded: the oldest job's time limit runs from now on. */
  ready: boolean
  timer: NodeJS.Timeout | null
}

export interface EvidencePoolStats {
  workers: number
  inFlight: number
  queued: number
  /** Workers that died since the pool started. */
  workerDeaths: number
  /** Policy texts sent to workers (each worker compiles a policy once, until it forgets it). */
  policiesSent: number
  /** Chunks of long IMA lists checked by helping workers, for the job's worker to only extend PCR 10 with. */
  imaChunksHelped: number
  /** IMA lists written into shared memory for the workers to read in place (instead of a copy each). */
  imaListsShared: number
  /** Of those, the lists written into the buffer of an earlier one. */
  imaListBuffersReused: number
}

const WORKER_ENTRY = import.meta.url.endsWith('.ts')
  ? new URL('./evidence-worker.ts', import.meta.url)
  : // the bundle (scripts/build.mjs) puts its chunks and the worker entry two folders below the package root
    new URL('../verifier/evidence-worker.js', import.meta.url)

function startWorker(): Worker {
  if (!WORKER_ENTRY.pathname.endsWith('.ts')) return new Worker(WORKER_ENTRY)
  // from source (tsx, vitest): the thread registers tsx's loader before it imports the TypeScript entry
  const tsxApi = createRequire(import.meta.url)
    .resolve('tsx/esm/api')
    .replace(/\.cjs$/, '.mjs')
  const boot = `import(${JSON.stringify(pathToFileURL(tsxApi).href)}).then((m) => { m.register(); return import(${JSON.stringify(WORKER_ENTRY.href)}) })`
  return new Worker(boot, { eval: true })
}

/** The boot log's buffer when it owns it whole (a Buffer from the small-allocation pool shares its buffer). */
function transferList(log: Uint8Array | undefined): ArrayBuffer[] {
  if (log === undefined) return []
  const buf = log.buffer
  return buf instanceof ArrayBuffer && log.byteOffset === 0 && log.byteLength === buf.byteLength ? [buf] : []
}

export class EvidencePool {
  readonly workers: number
  private readonly depth: number
  private readonly maxQueued: number
  private readonly maxPolicies: number
  private readonly jobTimeoutMs: number
  private readonly shareImaListChars: number
  private readonly slots: Slot[] = []
  private readonly queue: Job[] = []
  private readonly roomWaiters: (() => void)[] = []
  private nextId = 1
  private closed = false
  private deaths = 0
  private policiesSent = 0
  private imaChunksHelped = 0
  private imaListsShared = 0
  private imaListBuffersReused = 0
  /** The buffer of an answered job's shared IMA list, kept for the next long list, and when it is let go. */
  private spareList: SharedArrayBuffer | null = null
  private spareTimer: NodeJS.Timeout | null = null

  constructor(private readonly o: EvidencePoolOptions) {
    this.workers = Math.max(1, o.workers ?? availableParallelism())
    this.depth = Math.max(1, o.depth ?? 4)
    this.maxQueued = Math.max(1, o.maxQueued ?? 64 * this.workers)
    this.maxPolicies = Math.max(1, o.maxPoliciesPerWorker ?? 32)
    this.jobTimeoutMs = o.jobTimeoutMs ?? 60_000
    this.shareImaListChars = Math.min(SHARE_IMA_LIST_CHARS, 2 * (o.imaChunkChars ?? SHARE_IMA_LIST_CHARS))
  }

  /** Evaluates one input on a worker; rejects with `EvidenceWorkerError` when it cannot be evaluated. */
  async run(input: EvidenceInput): Promise<EvidenceResult> {
    while (this.queue.length >= this.maxQueued && !this.closed)
      await new Promise<void>((r) => this.roomWaiters.push(r))
    if (this.closed) throw new EvidenceWorkerError('evidence pool is closed')
    return new Promise<EvidenceResult>((resolve, reject) => {
      this.queue.push({ input, resolve, reject, transferred: false })
      this.pump()
    })
  }

  /** Starts every worker now instead of on demand. */
  warm(): void {
    while (!this.closed && this.slots.length < this.workers) this.spawn()
  }

  stats(): EvidencePoolStats {
    let inFlight = 0
    for (const s of this.slots) inFlight += s.inFlight.size
    return {
      workers: this.slots.length,
      inFlight,
      queued: this.queue.length,
      workerDeaths: this.deaths,
      policiesSent: this.policiesSent,
      imaChunksHelped: this.imaChunksHelped,
      imaListsShared: this.imaListsShared,
      imaListBuffersReused: this.imaListBuffersReused,
    }
  }

  /** Stops every worker; what is queued or running rejects. */
  async close(): Promise<void> {
    this.closed = true
    const gone = new EvidenceWorkerError('evidence pool is closed')
    for (const job of this.queue.splice(0)) job.reject(gone)
    for (const w of this.roomWaiters.splice(0)) w()
    const slots = this.slots.splice(0)
    for (const s of slots) for (const job of s.inFlight.values()) job.reject(gone)
    this.dropSpareList()
    await Promise.all(slots.map((s) => s.worker.terminate()))
  }

  private pump(): void {
    while (this.queue.length > 0) {
      const slot = this.freeSlot()
      if (slot === null) break
      this.post(slot, this.queue.shift() as Job)
    }
    while (this.roomWaiters.length > 0 && this.queue.length < this.maxQueued)
      (this.roomWaiters.shift() as () => void)()
  }

  /** An idle worker, else a new one while below `workers`, else the least busy one with room. */
  private freeSlot(): Slot | null {
    let best: Slot | null = null
    for (const s of this.slots) {
      if (s.inFlight.size === 0) return s
      if (s.inFlight.size < this.depth && (best === null || s.inFlight.size < best.inFlight.size)) best = s
    }
    if (this.slots.length < this.workers) return this.spawn()
    return best
  }

  private spawn(): Slot {
    const worker = startWorker()
    worker.unref()
    const slot: Slot = {
      worker,
      inFlight: new Map(),
      known: new Set(),
      lastError: null,
      ready: false,
      timer: null,
    }
    worker.on('message', (reply: EvidenceJobReply) => this.answered(slot, reply))
    worker.on('error', (err) => {
      slot.lastError = err.message
    })
    // a reply that cannot be read belongs to the oldest job: end the worker, which fails exactly that job
    worker.on('messageerror', (err) => {
      slot.lastError = `unreadable reply: ${err.message}`
      void worker.terminate()
    })
    worker.on('exit', (code) => this.died(slot, code))
    this.slots.push(slot)
    return slot
  }

  private post(slot: Slot, job: Job): void {
    const added: string[] = []
    let message: EvidenceJob | ImaHelpJob
    let helpers: Slot[] = []
    try {
      if (job.help !== undefined) {
        const policy = job.input.ima?.policy
        const help = { plan: job.help, policy: policy ? this.ref(policy, slot, added) : null }
        message = { id: this.nextId++, help, forget: [] }
      } else {
        const input = this.toWire(job, slot, added)
        helpers = this.idleHelpers(slot)
        const plan = helpers.length > 0 && job.sharedList ? this.imaPlan(job.input, job.sharedList) : null
        if (plan === null) helpers = []
        else if (input.ima !== null) input.ima.chunks = plan
        message = { id: this.nextId++, input, forget: [] }
      }
    } catch (err) {
      job.reject(err instanceof EvidenceWorkerError ? err : new EvidenceWorkerError((err as Error).message))
      return
    }
    // make room for the new policies, never forgetting one this job uses
    const inUse = new Set(
      'help' in message
        ? [message.help.policy?.key]
        : [message.input.ima?.policy?.key, message.input.measuredBoot?.policy?.key],
    )
    for (const key of slot.known) {
      if (slot.known.size + added.length - message.forget.length <= this.maxPolicies) break
      if (!inUse.has(key)) message.forget.push(key)
    }
    const transfer = transferList(job.input.measuredBoot?.eventLog)
    try {
      slot.worker.postMessage(message, transfer)
    } catch (err) {
      job.reject(new EvidenceWorkerError(`evidence cannot be sent to a worker: ${(err as Error).message}`))
      return
    }
    for (const key of message.forget) slot.known.delete(key)
    for (const key of added) slot.known.add(key)
    this.policiesSent += added.length
    job.transferred = transfer.length > 0
    if (slot.inFlight.size === 0) slot.worker.ref()
    slot.inFlight.set(message.id, job)
    this.armTimer(slot)
    const plan = 'input' in message ? message.input.ima?.chunks : undefined
    if (plan === undefined) return
    const ignore = () => {}
    for (const helper of helpers)
      this.post(helper, { input: job.input, resolve: ignore, reject: ignore, transferred: false, help: plan })
  }

  /** Workers other than `busy` with nothing to do: the ones that may help with its IMA list. */
  private idleHelpers(busy: Slot): Slot[] {
    if (this.workers < 2) return []
    const idle = this.slots.filter((s) => s !== busy && s.inFlight.size === 0 && this.queue.length === 0)
    // a pool that has not started all its workers starts one to help (it joins once it has loaded)
    if (idle.length === 0 && this.queue.length === 0 && this.slots.length < this.workers)
      idle.push(this.spawn())
    return idle
  }

  /** How to split the input's IMA list (`list`, its shared bytes) between workers, or null when it is too short. */
  private imaPlan(input: EvidenceInput, list: Uint8Array): ImaChunkPlan | null {
    const ima = input.ima
    if (ima === null || !isPcrBank(input.hashAlg)) return null
    return planImaChunks(list, input.hashAlg, ima.policy?.logHashAlg ?? 'sha1', this.o.imaChunkChars)
  }

  private toWire(job: Job, slot: Slot, added: string[]): WireEvidenceInput {
    const { measuredBoot: mb, ima, ...quote } = job.input
    const text = ima?.listText
    if (job.sharedList === undefined) {
      if (typeof text === 'string' && text.length >= this.shareImaListChars) {
        const reuse = this.spareList
        job.sharedList = sharedListBytes(text, reuse)
        job.ownsSharedList = true
        // the spare now belongs to this job (or was too short: a longer one replaces it when this job is answered)
        if (job.sharedList.buffer === reuse) {
          this.spareList = null
          this.imaListBuffersReused++
        }
        this.imaListsShared++
      } else if (text instanceof Uint8Array && text.buffer instanceof SharedArrayBuffer) job.sharedList = text
    }
    return {
      ...quote,
      measuredBoot:
        mb === null ? null : { ...mb, policy: mb.policy ? this.ref(mb.policy, slot, added) : null },
      ima:
        ima === null
          ? null
          : {
              ...ima,
              listText: job.sharedList ?? ima.listText,
              policy: ima.policy ? this.ref(ima.policy, slot, added) : null,
              verificationKeys: ima.verificationKeys ? ima.verificationKeys.toJSON() : null,
            },
    }
  }

  private ref(policy: object, slot: Slot, added: string[]): PolicyRef {
    const source = this.o.sourceOf(policy)
    if (source === undefined)
      throw new EvidenceWorkerError('a policy of unknown origin cannot go to a worker')
    if (slot.known.has(source.key)) {
      // most recently used last
      slot.known.delete(source.key)
      slot.known.add(source.key)
      return { key: source.key }
    }
    if (!added.includes(source.key)) added.push(source.key)
    return { key: source.key, source }
  }

  /** Starts the time limit of the worker's oldest job, once the worker is ready. */
  private armTimer(slot: Slot): void {
    if (!slot.ready || slot.timer !== null || slot.inFlight.size === 0) return
    slot.timer = setTimeout(() => {
      slot.lastError = `one evaluation took longer than ${this.jobTimeoutMs} ms`
      void slot.worker.terminate()
    }, this.jobTimeoutMs)
    slot.timer.unref()
  }

  private answered(slot: Slot, reply: EvidenceJobReply): void {
    if ('ready' in reply) {
      slot.ready = true
      this.armTimer(slot)
      return
    }
    if (slot.timer !== null) clearTimeout(slot.timer)
    slot.timer = null
    const job = slot.inFlight.get(reply.id)
    if (job === undefined) return
    slot.inFlight.delete(reply.id)
    if (slot.inFlight.size === 0) slot.worker.unref()
    if ('error' in reply) job.reject(new EvidenceWorkerError(reply.error))
    else if ('result' in reply) job.resolve(reply.result)
    else this.imaChunksHelped += reply.helped
    this.keepSharedList(job)
    this.armTimer(slot)
    this.pump()
  }

  /**
   * Keeps the buffer of an answered job's shared list for the next long list. A helper may still be checking chunks
   * of it (when the job ended early, e.g. on a bad quote): what it then reads is written to that job's plan, which
   * nothing reads any more.
   */
  private keepSharedList(job: Job): void {
    if (!job.ownsSharedList || job.sharedList === undefined || this.closed) return
    const buffer = job.sharedList.buffer as SharedArrayBuffer
    job.ownsSharedList = false
    if (this.spareList !== null && this.spareList.byteLength >= buffer.byteLength) return
    this.spareList = buffer
    if (this.spareTimer !== null) clearTimeout(this.spareTimer)
    this.spareTimer = setTimeout(() => this.dropSpareList(), SPARE_LIST_KEEP_MS)
    this.spareTimer.unref()
  }

  private dropSpareList(): void {
    if (this.spareTimer !== null) clearTimeout(this.spareTimer)
    this.spareTimer = null
    this.spareList = null
  }

  private died(slot: Slot, code: number): void {
    if (slot.timer !== null) clearTimeout(slot.timer)
    const i = this.slots.indexOf(slot)
    if (i < 0) return // closed
    this.slots.splice(i, 1)
    this.deaths++
    const reason = `evidence worker died: ${slot.lastError ?? `exit code ${code}`}`
    this.o.onWorkerDied?.(reason)
    const [running, ...waiting] = slot.inFlight.values()
    // the job's worker must not wait for chunks this one will never finish
    if (running?.help !== undefined) abandonImaChunks(running.help)
    running?.reject(new EvidenceWorkerError(reason))
    if (running !== undefined) this.keepSharedList(running)
    const again: Job[] = []
    for (const job of waiting)
      if (job.transferred) job.reject(new EvidenceWorkerError(reason))
      else if (job.help === undefined) again.push(job)
    this.queue.unshift(...again)
    this.pump()
  }
}
