/**
 * `run_as` (keylime-config-and-cli.md §2.6): an agent started as root gives up root once the TPM is open, its keys
 * and work directories exist and its socket is bound, and runs on as `user:group` with that group alone.
 */
import { execFileSync } from 'node:child_process'
import { accessSync, chownSync, constants, lstatSync, mkdirSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { KeylimeError } from '../common/errors.ts'
import type { Logger } from '../common/log.ts'

export class RunAsError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_AGENT_RUN_AS', message, options)
  }
}

export interface RunAsIdentity {
  /** As configured, e.g. `keylime:tss`. */
  label: string
  uid: number
  gid: number
}

/** One `getent` database entry (`name:x:id:...`), or null when the name is unknown. */
function lookup(database: 'passwd' | 'group', name: string): string[] | null {
  try {
    // getent goes through NSS, so users from LDAP/SSSD resolve as they would for setuid itself.
    return execFileSync('getent', [database, name], { encoding: 'utf8' }).split('\n')[0]?.split(':') ?? null
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { status?: number }
    if (e.status === 2) return null // getent: key not found
    if (e.code !== 'ENOENT')
      throw new RunAsError(`cannot look up ${database} entry '${name}'`, { cause: err })
  }
  // No getent on this system: the local files are all there is.
  const byNameOrId = (fields: string[]) => fields[0] === name || fields[2] === name
  const line = readFileSync(`/etc/${database}`, 'utf8')
    .split('\n')
    .map((l) => l.split(':'))
    .find(byNameOrId)
  return line ?? null
}

/**
 * The identity `run_as` names, or null when there is nothing to do: the value is empty, or this process is not
 * root (logged, since the operator asked for a switch that will not happen). A user or group that does not exist
 * is an error: staying root silently would be worse than not starting.
 */
export function resolveRunAs(value: string, log: Logger): RunAsIdentity | null {
  const label = value.trim()
  if (label === '') return null
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    log.info(`run_as '${label}' is ignored: the agent is not running as root`)
    return null
  }
  const [user = '', group, ...rest] = label.split(':')
  if (user === '' || group === '' || rest.length > 0) {
    throw new RunAsError(`run_as '${label}' must be 'user:group' or 'user'`)
  }
  const passwd = lookup('passwd', user)
  if (!passwd) throw new RunAsError(`run_as: user '${user}' does not exist on this system`)
  const uid = Number(passwd[2])
  let gid = Number(passwd[3])
  if (group !== undefined) {
    const entry = lookup('group', group)
    if (!entry) throw new RunAsError(`run_as: group '${group}' does not exist on this system`)
    gid = Number(entry[2])
  }
  if (!Number.isInteger(uid) || !Number.isInteger(gid)) {
    throw new RunAsError(`run_as '${label}': the account database has no numeric uid/gid for it`)
  }
  return { label, uid, gid }
}

/** Hands a directory to the identity, creating it (0700) if needed; with `recursive`, everything inside too. */
export function giveDirectory(dir: string, who: RunAsIdentity, recursive: boolean): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const own = (path: string) => {
    chownSync(path, who.uid, who.gid)
    if (!recursive || !lstatSync(path).isDirectory()) return
    for (const name of readdirSync(path)) {
      const child = join(path, name)
      // Symlinks are not followed: a link planted in the payload must not hand out files elsewhere.
      if (lstatSync(child).isSymbolicLink()) continue
      own(child)
    }
  }
  own(dir)
}

/** Hands one existing file to the identity. */
export function giveFile(path: string, who: RunAsIdentity): void {
  chownSync(path, who.uid, who.gid)
}

/** Switches group, supplementary groups, then user; afterwards root cannot be regained. */
export function dropPrivileges(who: RunAsIdentity, log: Logger): void {
  try {
    // Group first: once the uid is no longer 0, changing groups is no longer allowed.
    process.setgroups?.([who.gid])
    process.setgid?.(who.gid)
    process.setuid?.(who.uid)
  } catch (err) {
    throw new RunAsError(`cannot switch to run_as '${who.label}': ${(err as Error).message}`, { cause: err })
  }
  if (process.getuid?.() !== who.uid || process.geteuid?.() !== who.uid || process.getegid?.() !== who.gid) {
    throw new RunAsError(`switching to run_as '${who.label}' did not take effect`)
  }
  log.info(`dropped privileges to ${who.label} (uid ${who.uid}, gid ${who.gid})`)
}

/** Fails with a clear message when the dropped process cannot write where it must (e.g. a parent not searchable). */
export function checkWritable(dir: string, who: RunAsIdentity): void {
  try {
    accessSync(dir, constants.W_OK | constants.X_OK)
  } catch (err) {
    throw new RunAsError(
      `as run_as '${who.label}' the agent cannot write to ${dir}; its parent directories must be searchable by that user`,
      { cause: err },
    )
  }
}
