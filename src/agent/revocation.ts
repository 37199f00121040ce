/**
 * Revocation notifications, agent side (keylime-protocols.md §F, consumer): messages are dropped until the
 * revocation certificate from the payload is loaded; the signature (RSA-PSS, SHA-256, MGF1-SHA-256) is checked
 * against it; then the configured actions and the payload's `action_list` run one at a time with the message as a
 * JSON file argument, stopping at the first failure. Processing is queued so the HTTP reply never waits for it.
 */
import { createPublicKey, type KeyObject, X509Certificate } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve, sep } from 'node:path'
import type { Logger } from '../common/log.ts'
import { RevocationError, verifyRevocation } from '../crypto/revocation.ts'
import { runScript } from './payload.ts'

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
  timeoutMs: number
  log: Logger
}

export type RevocationOutcome =
  | { status: 'dropped'; reason: string }
  | { status: 'rejected'; reason: string }
  | { status: 'done'; ran: string[]; failed?: string }

export class RevocationHandler {
  private readonly o: RevocationHandlerOptions
  private key: KeyObject | null = null
  private queue: Promise<unknown> = Promise.resolve()
  /** Every outcome, newest last (bounded), for operators and tests. */
  readonly outcomes: RevocationOutcome[] = []

  constructor(o: RevocationHandlerOptions) {
    this.o = o
  }

  /** (Re)loads the revocation certificate; returns whether one is loaded now. */
  loadCertificate(): boolean {
    if (!existsSync(this.o.certPath)) return this.key !== null
    try {
      const cert = new X509Certificate(readFileSync(this.o.certPath))
      this.key = createPublicKey(cert.publicKey.export({ type: 'spki', format: 'pem' }))
      this.o.log.info('revocation certificate loaded')
    } catch (err) {
      this.o.log.error(`cannot load revocation certificate ${this.o.certPath}: ${(err as Error).message}`)
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
    let m: { type: string; agent_id: string }
    try {
      m = verifyRevocation(body, this.key)
    } catch (err) {
      const reason = err instanceof RevocationError ? err.message : 'invalid notification'
      this.o.log.warn(`revocation notification rejected: ${reason}`)
      return { status: 'rejected', reason }
    }
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
    try {
      for (const name of names) {
        const path = this.resolveAction(name)
        if (!path) {
          this.o.log.error(`revocation action '${name}' not found; stopping`)
          return { status: 'done', ran, failed: name }
        }
        const code = await runScript(
          path,
          [msgFile],
          this.o.workDir,
          this.o.timeoutMs,
          this.o.log,
          `action ${name}`,
        )
        if (code !== 0) {
          this.o.log.error(`revocation action '${name}' failed; stopping`)
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
