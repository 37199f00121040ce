/**
 * Revocation notifications, agent side (keylime-protocols.md §F, consumer): messages are dropped until the
 * revocation certificate from the payload is loaded; the signature (RSA-PSS, SHA-256, MGF1-SHA-256) is checked
 * against it; then the configured actions and the payload's `action_list` run one at a time with the message as a
 * JSON file argument, stopping at the first failure. Processing is queued so the HTTP reply never waits for it.
 *
 * Replays (our addition; upstream has none): a signed message stays valid forever, so anyone who captured one could
 * make every agent run its actions again. A message is acted on at most once: its digest is recorded, in a file
 * under the work directory so restarts keep it, before its actions run; one whose `event_time` is further than
 * `revocation_max_age_seconds` from the agent's clock is ignored, which also bounds what must be remembered.
 *
 * Each action runs as `<action> <message.json>` in the environment `actionEnvironment` builds (documented in
 * docs/agent.md), bounded by `revocation_action_timeout_seconds` and with its output logged up to a limit
 * (`run-program.ts`): an action that hangs, floods its output or fails is stopped or passed over, never waited on
 * past its timeout.
 */
import { createHash, createPublicKey, type KeyObject, X509Certificate } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve, sep } from 'node:path'
import type { Logger } from '../common/log.ts'
import { RevocationError, type RevocationMessage, verifyRevocation } from '../crypto/revocation.ts'
import { runProgram } from './run-program.ts'

export interface RevocationHandlerOptions {
  /** `revocation_cert` path (default `secure/unzipped/RevocationNotifier-cert.crt`). */
  certPath: string
  /** Config `revocation_actions` (comma list). */
  actions: string
  actionsDir: string
  allowPayloadActions: boolean
  /** `secure/unzipped`, where payload actions and `action_list` live. */
  unzippedDir: string
  /** Working directory for actions (keylime_dir). */
  workDir: string
  /** This agent's UUID, given to actions as KEYLIME_AGENT_UUID. */
  agentUuid: string
  timeoutMs: number
  /** `revocation_max_age_seconds` in ms: the accepted distance of `event_time` from now, either way. */
  maxAgeMs: number
  /** File recording the revocations acted on (under keylime_dir, so it survives restarts). */
  seenPath: string
  /**
   * A copy of the last loaded revocation certificate outside the secure directory (a public certificate, no
   * secret): the secure directory is wiped at shutdown, and a restarted agent must still verify revocations.
   */
  keptCertPath?: string
  log: Logger
  /** Clock, for tests. */
  now?: () => number
}

export type RevocationOutcome =
  | { status: 'dropped'; reason: string }
  | { status: 'rejected'; reason: string }
  | { status: 'ignored'; reason: string }
  | { status: 'done'; ran: string[]; failed?: string }

/** PATH of revocation actions: the system directories, never what the agent was started with. */
export const ACTION_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

/**
 * The whole environment of a revocation action. Nothing of the agent's own environment is passed on: it can carry
 * configuration (KEYLIME_* options, key passwords) that an action, possibly shipped in a payload, has no need of.
 */
export function actionEnvironment(o: {
  agentUuid: string
  workDir: string
  unzippedDir: string
  messagePath: string
}): NodeJS.ProcessEnv {
  return {
    PATH: ACTION_PATH,
    LANG: 'C.UTF-8',
    HOME: o.workDir,
    KEYLIME_AGENT_UUID: o.agentUuid,
    KEYLIME_DIR: o.workDir,
    KEYLIME_PAYLOAD_DIR: o.unzippedDir,
    KEYLIME_REVOCATION_MESSAGE: o.messagePath,
  }
}

/** Upper bound on remembered revocations; far above what a verifier sends within the age window. */
export const MAX_SEEN_REVOCATIONS = 10_000

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec']
const ASCTIME = /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2}) ([ \d]\d) (\d\d):(\d\d):(\d\d) (\d{4})$/

/**
 * `event_time` (C asctime, "Tue Nov 26 15:09:00 2025") as ms since the epoch, read as UTC: our verifier writes UTC;
 * upstream's writes its local time without a zone, so such a verifier must run in UTC or the window cover its offset.
 */
export function parseEventTime(text: unknown): number | null {
  const m = typeof text === 'string' ? ASCTIME.exec(text) : null
  if (m === null) return null
  const month = MONTHS.indexOf(m[1] as string)
  const [day, hour, minute, second, year] = m.slice(2).map(Number) as [number, number, number, number, number]
  if (month < 0 || hour > 23 || minute > 59 || second > 60) return null
  const ms = Date.UTC(year, month, day, hour, minute, second)
  // Date.UTC rolls Feb 31 over into March: only a real calendar date is accepted.
  return new Date(ms).getUTCDate() === day ? ms : null
}

/** Digests of the revocations acted on, with their event times; bounded and persisted. */
class SeenRevocations {
  readonly #byDigest = new Map<string, number>()

  constructor(
    private readonly path: string,
    private readonly maxAgeMs: number,
    private readonly log: Logger,
  ) {}

  /** Reads the file if there is one; an unreadable file is reported and replaced on the next write. */
  load(now: number): void {
    if (!existsSync(this.path)) return
    try {
      const data = JSON.parse(readFileSync(this.path, 'utf8')) as { version?: unknown; seen?: unknown }
      if (data.version !== 1 || !Array.isArray(data.seen)) throw new Error('not a version 1 list')
      for (const item of data.seen) {
        if (
          !Array.isArray(item) ||
          typeof item[0] !== 'string' ||
          !/^[0-9a-f]{64}$/.test(item[0]) ||
          !Number.isSafeInteger(item[1])
        )
          throw new Error('malformed entry')
        this.#byDigest.set(item[0], item[1])
      }
      this.#prune(now)
    } catch (err) {
      this.#byDigest.clear()
      this.log.error(
        `cannot read ${this.path} (${(err as Error).message}): revocations seen before this start are forgotten`,
      )
    }
  }

  has(digest: string): boolean {
    return this.#byDigest.has(digest)
  }

  get size(): number {
    return this.#byDigest.size
  }

  /** Records a revocation and writes the file before returning, so an action never runs unrecorded. */
  add(digest: string, eventTimeMs: number, now: number): void {
    this.#prune(now)
    while (this.#byDigest.size >= MAX_SEEN_REVOCATIONS) {
      let oldest: string | undefined
      let oldestTime = Number.POSITIVE_INFINITY
      for (const [d, t] of this.#byDigest) {
        if (t < oldestTime) {
          oldest = d
          oldestTime = t
        }
      }
      this.#byDigest.delete(oldest as string)
      this.log.warn(
        `more than ${MAX_SEEN_REVOCATIONS} revocations within the age window: forgetting the oldest`,
      )
    }
    this.#byDigest.set(digest, eventTimeMs)
    const tmp = `${this.path}.tmp`
    try {
      writeFileSync(tmp, JSON.stringify({ version: 1, seen: [...this.#byDigest] }), { mode: 0o600 })
      renameSync(tmp, this.path)
    } catch (err) {
      // Still remembered for this process's life; only a restart could replay it.
      this.log.error(`cannot record revocations in ${this.path}: ${(err as Error).message}`)
    }
  }

  /** Entries outside the window are refused by their time anyway. */
  #prune(now: number): void {
    for (const [d, t] of this.#byDigest) if (Math.abs(now - t) > this.maxAgeMs) this.#byDigest.delete(d)
  }
}

export class RevocationHandler {
  private readonly o: RevocationHandlerOptions
  private key: KeyObject | null = null
  private queue: Promise<unknown> = Promise.resolve()
  private readonly seen: SeenRevocations
  private readonly now: () => number
  /** Every outcome, newest last (bounded), for operators and tests. */
  readonly outcomes: RevocationOutcome[] = []

  constructor(o: RevocationHandlerOptions) {
    this.o = o
    this.now = o.now ?? Date.now
    this.seen = new SeenRevocations(o.seenPath, o.maxAgeMs, o.log)
    this.seen.load(this.now())
  }

  /** How many revocations acted on are remembered. */
  get seenCount(): number {
    return this.seen.size
  }

  /** (Re)loads the revocation certificate; returns whether one is loaded now. */
  loadCertificate(): boolean {
    const kept = this.o.keptCertPath
    const path = existsSync(this.o.certPath) ? this.o.certPath : kept && existsSync(kept) ? kept : null
    if (path === null) return this.key !== null
    try {
      const cert = new X509Certificate(readFileSync(path))
      this.key = createPublicKey(cert.publicKey.export({ type: 'spki', format: 'pem' }))
      this.o.log.info(
        path === kept
          ? 'revocation certificate loaded (kept from an earlier payload)'
          : 'revocation certificate loaded',
      )
      if (kept && path !== kept) writeFileSync(kept, cert.toString(), { mode: 0o644 })
    } catch (err) {
      this.o.log.error(`cannot load revocation certificate ${path}: ${(err as Error).message}`)
    }
    return this.key !== null
  }

  get hasCertificate(): boolean {
    return this.key !== null
  }

  /** Queues a notification; returns the processing promise. */
  receive(body: { msg: string; signature: string }): Promise<RevocationOutcome> {
    const run = this.queue.then(() => this.process(body))
    this.queue = run.catch(() => undefined)
    return run.then((out) => {
      this.outcomes.push(out)
      if (this.outcomes.length > 100) this.outcomes.shift()
      return out
    })
  }

  whenIdle(): Promise<unknown> {
    return this.queue
  }

  private async process(body: { msg: string; signature: string }): Promise<RevocationOutcome> {
    if (!this.key) {
      this.o.log.warn('revocation notification dropped: no revocation certificate loaded yet')
      return { status: 'dropped', reason: 'no revocation certificate' }
    }
    let m: RevocationMessage
    try {
      m = verifyRevocation(body, this.key)
    } catch (err) {
      const reason = err instanceof RevocationError ? err.message : 'invalid notification'
      this.o.log.warn(`revocation notification rejected: ${reason}`)
      return { status: 'rejected', reason }
    }
    const eventTime = parseEventTime(m.event_time)
    if (eventTime === null) {
      const reason = 'event_time is missing or not an asctime date'
      this.o.log.warn(`revocation notification rejected: ${reason}`)
      return { status: 'rejected', reason }
    }
    const now = this.now()
    const maxAge = `revocation_max_age_seconds (${this.o.maxAgeMs / 1000})`
    const stale =
      now - eventTime > this.o.maxAgeMs
        ? `event_time ${m.event_time} is older than ${maxAge}`
        : eventTime - now > this.o.maxAgeMs
          ? `event_time ${m.event_time} is later than now + ${maxAge}`
          : null
    const digest = createHash('sha256').update(body.msg, 'utf8').digest('hex')
    const ignored = stale ?? (this.seen.has(digest) ? 'already acted on (replayed)' : null)
    if (ignored !== null) {
      this.o.log.warn(`revocation notification for agent ${m.agent_id} ignored: ${ignored}`)
      return { status: 'ignored', reason: ignored }
    }
    this.seen.add(digest, eventTime, now)
    this.o.log.info(`revocation notification for agent ${m.agent_id} (type ${m.type})`)
    return this.runActions(body.msg)
  }

  /** Config actions, then the payload's `action_list`; each resolved in actionsDir or (if allowed) the payload. */
  actionNames(): string[] {
    const names = this.o.actions
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)
    const listPath = join(this.o.unzippedDir, 'action_list')
    if (existsSync(listPath)) {
      names.push(
        ...readFileSync(listPath, 'utf8')
          .split(/[\s,]+/)
          .map((s) => s.trim())
          .filter(Boolean),
      )
    }
    return names
  }

  private resolveAction(name: string): string | null {
    if (name.includes('/') || name === '.' || name === '..') return null
    const local = resolve(this.o.actionsDir, name)
    if (local.startsWith(resolve(this.o.actionsDir) + sep) && existsSync(local)) return local
    if (this.o.allowPayloadActions) {
      const p = resolve(this.o.unzippedDir, name)
      if (p.startsWith(resolve(this.o.unzippedDir) + sep) && existsSync(p)) return p
    }
    return null
  }

  private async runActions(msgText: string): Promise<RevocationOutcome> {
    const names = this.actionNames()
    const ran: string[] = []
    if (names.length === 0) return { status: 'done', ran }
    const tmp = mkdtempSync(join(tmpdir(), 'keylime-revocation-'))
    const msgFile = join(tmp, 'revocation.json')
    writeFileSync(msgFile, msgText, { mode: 0o600 })
    const env = actionEnvironment({
      agentUuid: this.o.agentUuid,
      workDir: this.o.workDir,
      unzippedDir: this.o.unzippedDir,
      messagePath: msgFile,
    })
    try {
      for (const name of names) {
        const path = this.resolveAction(name)
        if (!path) {
          this.o.log.error(`revocation action '${name}' not found; stopping`)
          return { status: 'done', ran, failed: name }
        }
        const run = await runProgram(path, [msgFile], {
          cwd: this.o.workDir,
          timeoutMs: this.o.timeoutMs,
          log: this.o.log,
          label: `revocation action ${name}`,
          env,
        })
        if (run.code !== 0) {
          this.o.log.error(
            `revocation action '${name}' ${run.timedOut ? 'timed out' : 'failed'}; the actions after it do not run`,
          )
          return { status: 'done', ran, failed: name }
        }
        ran.push(name)
      }
      return { status: 'done', ran }
    } finally {
      rmSync(tmp, { recursive: true, force: true })
    }
  }
}
