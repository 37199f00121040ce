/**
 * The one error path of the `keylime` command line: every command's failure becomes one line
 * `keylime <command>: <what failed>: <why> (<what to do>)` on stderr and one exit status from `EXIT`; the stack is
 * printed only with `--debug` (or KEYLIME_DEBUG=1).
 */
import { KeylimeError } from '../common/errors.ts'

/** Exit statuses shared by every command (README "Exit status", `keylime --help`). */
export const EXIT = {
  ok: 0,
  /** A check failed (policy, signature, attestation verdict) or the operation was refused. */
  failed: 1,
  /** Bad usage or bad input: flags, arguments, files, configuration. */
  usage: 2,
  /** Trust refused: the agent's identity quote or EK certificate did not verify. */
  untrusted: 3,
  /** A remote service was unreachable, failed TLS, or answered with an error. */
  remote: 4,
  /** An unexpected internal error (a bug): rerun with --debug and report it. */
  internal: 5,
} as const

export type ExitStatus = (typeof EXIT)[keyof typeof EXIT]

export const EXIT_STATUS_HELP = `Exit status (every command):
  0  success
  1  a check failed (policy, signature, attestation) or the operation was refused
  2  bad usage or bad input (flags, arguments, files, configuration)
  3  trust refused (agent identity quote or EK certificate)
  4  a remote service failed (unreachable, TLS handshake, error answer)
  5  internal error (rerun with --debug and report it)`

/** A failure the command line reports as is: message, exit status and what the operator can do. */
export class CliError extends Error {
  readonly exitCode: ExitStatus
  readonly hint: string | undefined

  constructor(message: string, exitCode: ExitStatus, hint?: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'CliError'
    this.exitCode = exitCode
    this.hint = hint
  }
}

/** A failed step: `what` names what was being done ("reading /etc/keylime/agent.conf"), `cause` why it failed. */
export class StepError extends Error {
  readonly what: string

  constructor(what: string, cause: unknown) {
    super(what, { cause })
    this.name = 'StepError'
    this.what = what
  }
}

/** Runs `fn`; a failure is re-thrown as a StepError naming `what`. */
export async function step<T>(what: string, fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn()
  } catch (err) {
    throw err instanceof StepError || err instanceof CliError ? err : new StepError(what, err)
  }
}

interface Described {
  what?: string
  why: string
  hint?: string
  exitCode: ExitStatus
}

type SystemError = Error & {
  code?: string
  path?: string
  address?: string
  port?: number
  hostname?: string
  syscall?: string
}

const TLS_CERT_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'CERT_SIGNATURE_FAILURE',
])

const where = (e: SystemError) =>
  e.address !== undefined ? `${e.address}${e.port === undefined ? '' : `:${e.port}`}` : undefined

/** Errors of the project: KeylimeError, and the TPM library's own (it depends on nothing of ours). */
function isProjectError(e: unknown): e is Error & { code: string; statusCode?: number; exitCode?: number } {
  if (e instanceof KeylimeError) return true
  const code = (e as { code?: unknown } | null)?.code
  return e instanceof Error && typeof code === 'string' && code in KEYLIME_HINTS
}

/** The innermost cause worth reporting: undici and fetch wrap the socket error in `cause`. */
function rootCause(err: unknown): unknown {
  let current = err
  for (let depth = 0; depth < 8; depth++) {
    if (isProjectError(current) || current instanceof CliError) return current
    if (current instanceof Error && describeSystemError(current as SystemError)) return current
    const next = (current as { cause?: unknown } | undefined)?.cause
    if (next === undefined || next === null) return current
    current = next
  }
  return current
}

/** The innermost error in the `cause` chain of `err` that is a known system error. */
function deepestSystemError(err: unknown): SystemError | undefined {
  let found: SystemError | undefined
  let current = err
  for (let depth = 0; current instanceof Error && depth < 8; depth++) {
    if (describeSystemError(current as SystemError)) found = current as SystemError
    current = (current as { cause?: unknown }).cause
  }
  return found
}

/** Known operating-system, network and TLS errors; undefined for anything else. */
function describeSystemError(e: SystemError): Described | undefined {
  const code = e.code ?? ''
  const path = e.path === undefined ? '' : `: ${e.path}`
  switch (code) {
    case 'ENOENT':
      return {
        why: `no such file or directory${path}`,
        hint: 'check the path',
        exitCode: EXIT.usage,
      }
    case 'EACCES':
    case 'EPERM':
      return {
        why: `permission denied${path}`,
        hint: 'run as a user that may use it, or change its owner or mode',
        exitCode: EXIT.usage,
      }
    case 'EISDIR':
      return { why: `is a directory${path}`, hint: 'give a file', exitCode: EXIT.usage }
    case 'ENOTDIR':
      return { why: `not a directory${path}`, hint: 'check the path', exitCode: EXIT.usage }
    case 'ECONNREFUSED':
      return {
        why: `connection refused by ${where(e) ?? 'the server'}`,
        hint: 'is the service running and listening on that address and port?',
        exitCode: EXIT.remote,
      }
    case 'ECONNRESET':
    case 'UND_ERR_SOCKET':
      return {
        why: `connection closed by ${where(e) ?? 'the server'}`,
        hint: 'check the port and, for mTLS, that the server trusts this client certificate',
        exitCode: EXIT.remote,
      }
    case 'ETIMEDOUT':
    case 'UND_ERR_CONNECT_TIMEOUT':
    case 'UND_ERR_HEADERS_TIMEOUT':
    case 'UND_ERR_BODY_TIMEOUT':
      return {
        why: `timed out talking to ${where(e) ?? 'the server'}`,
        hint: 'check the address, the port and the firewall',
        exitCode: EXIT.remote,
      }
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return {
        why: `host not found: ${e.hostname ?? ''}`.trimEnd(),
        hint: 'check the host name',
        exitCode: EXIT.remote,
      }
    case 'EADDRINUSE':
      return {
        why: `address already in use: ${where(e) ?? ''}`.trimEnd(),
        hint: 'stop the other process listening there or choose another port',
        exitCode: EXIT.usage,
      }
    case 'EADDRNOTAVAIL':
      return {
        why: `address not available on this machine: ${where(e) ?? ''}`.trimEnd(),
        hint: 'listen on an address of this machine, or 0.0.0.0',
        exitCode: EXIT.usage,
      }
    case 'ERR_SOCKET_BAD_PORT':
      return { why: 'bad port number', hint: 'a port is an integer from 1 to 65535', exitCode: EXIT.usage }
  }
  if (TLS_CERT_CODES.has(code)) {
    return {
      why: `the server's TLS certificate is not trusted (${code})`,
      hint: 'check the CA certificate this command trusts (tls_dir, trusted_server_ca) and the server name',
      exitCode: EXIT.remote,
    }
  }
  if (
    code.startsWith('ERR_SSL_') ||
    code.startsWith('ERR_TLS_') ||
    /wrong version number|ssl3_get_record/.test(e.message)
  ) {
    return {
      why: /wrong version number|WRONG_VERSION_NUMBER|packet length too long/i.test(`${code} ${e.message}`)
        ? 'the server does not speak TLS on that port'
        : `TLS handshake failed (${code || e.message})`,
      hint: "check the port: the verifier's HTTPS port is 8881, the registrar's 8891",
      exitCode: EXIT.remote,
    }
  }
  return undefined
}

/** What to do about the project's own errors, by their stable code. */
const KEYLIME_HINTS: Record<string, { hint: string; exitCode?: ExitStatus }> = {
  ERR_CONFIG: {
    hint: 'fix the flag, configuration file or KEYLIME_* variable it names',
    exitCode: EXIT.usage,
  },
  ERR_AGENT_CONFIG: { hint: 'fix agent.conf or the KEYLIME_AGENT_* variable it names', exitCode: EXIT.usage },
  ERR_VERIFIER_CONFIG: { hint: 'fix verifier.conf or the flag it names', exitCode: EXIT.usage },
  ERR_OPTION_NOT_IMPLEMENTED: {
    hint: 'remove the option or set it back to its default',
    exitCode: EXIT.usage,
  },
  ERR_AGENT_RUN_AS: {
    hint: 'fix the account or permissions it names, or set run_as = "" in agent.conf (--run-as "") to keep running as the starting user',
    exitCode: EXIT.usage,
  },
  ERR_CA_EXISTS: { hint: 'use that CA, or choose another --dir', exitCode: EXIT.usage },
  ERR_CA_MISSING: {
    hint: 'create one with `keylime ca init` or point --dir at an existing CA',
    exitCode: EXIT.usage,
  },
  ERR_DB: {
    hint: 'check database_url, and that the database server runs and accepts this user',
    exitCode: EXIT.remote,
  },
  ERR_TPM_TRANSPORT: {
    hint: 'check the TPM transport (--tpm, KEYLIME_TPM, tpm in agent.conf): a device needs its kernel driver and root or the tss group; swtpm must be listening at the address given',
    exitCode: EXIT.remote,
  },
  ERR_PUSH_AGENT: {
    hint: 'fix the push options it names in agent.conf (verifier_url, verifier_tls_ca_cert, tpm_hash_alg) or the flag',
    exitCode: EXIT.usage,
  },
  ERR_AGENT_REGISTRATION: {
    hint: 'check registrar_ip/registrar_port in agent.conf and that the registrar is running',
    exitCode: EXIT.remote,
  },
}

const oneLine = (text: string) => text.replace(/\s+/g, ' ').trim()

function replaceOrAppend(message: string, systemMessage: string, why: string): string {
  if (systemMessage !== '' && message.includes(systemMessage)) return message.replace(systemMessage, why)
  return message.includes(why) ? message : `${message}: ${why}`
}

function exitForStatus(statusCode: number | undefined): ExitStatus {
  if (statusCode === undefined) return EXIT.failed
  // 400: the input was wrong; 404: what the command names does not exist.
  if (statusCode === 400 || statusCode === 404) return EXIT.usage
  if (statusCode >= 500) return EXIT.remote
  return EXIT.failed
}

/** The one-line description of `err`: what failed, why, what to do, and the exit status. */
export function describeFailure(err: unknown): Described {
  let what: string | undefined
  let current = err
  while (current instanceof StepError) {
    what = what === undefined ? current.what : `${what}: ${current.what}`
    current = current.cause
  }
  const cause = rootCause(current)
  const withWhat = (d: Described): Described => (what === undefined ? d : { ...d, what })
  if (cause instanceof CliError) {
    return withWhat({
      why: cause.message,
      exitCode: cause.exitCode,
      ...(cause.hint ? { hint: cause.hint } : {}),
    })
  }
  if (isProjectError(cause)) {
    const known = KEYLIME_HINTS[cause.code]
    const own = (cause as { exitCode?: unknown }).exitCode
    // A project error that wraps a system error (a refused database connection) reports both.
    const inner = deepestSystemError(cause.cause)
    const system = inner === undefined ? undefined : describeSystemError(inner)
    const message = oneLine(cause.message)
    return withWhat({
      // The system error's own words ("connect ECONNREFUSED 127.0.0.1:5432") read better as ours.
      why: !system ? message : replaceOrAppend(message, oneLine((inner as SystemError).message), system.why),
      exitCode:
        typeof own === 'number'
          ? (own as ExitStatus)
          : (known?.exitCode ?? system?.exitCode ?? exitForStatus(cause.statusCode)),
      ...((known?.hint ?? system?.hint) ? { hint: known?.hint ?? system?.hint } : {}),
    })
  }
  const system = cause instanceof Error ? describeSystemError(cause as SystemError) : undefined
  if (system) return withWhat(system)
  if (cause instanceof SyntaxError && /JSON/.test(cause.message)) {
    return withWhat({
      why: `malformed JSON (${cause.message})`,
      hint: 'check the file',
      exitCode: EXIT.usage,
    })
  }
  if (cause instanceof RangeError && /port/i.test(cause.message)) {
    return withWhat({
      why: 'bad port number',
      hint: 'a port is an integer from 1 to 65535',
      exitCode: EXIT.usage,
    })
  }
  const message = cause instanceof Error ? cause.message : String(cause)
  return withWhat({
    why: `unexpected error: ${message}`,
    hint: 'rerun with --debug and report it',
    exitCode: EXIT.internal,
  })
}

/** One terminal-safe line: control characters escaped, at most 600 characters (bytes of a binary file stay out). */
function printable(text: string): string {
  const escaped = oneLine(text).replace(/[\u0000-\u001f\u007f-\u009f\ufffd]/g, (c) =>
    c === '\ufffd' ? '?' : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`,
  )
  return escaped.length > 600 ? `${escaped.slice(0, 600)}…` : escaped
}

/** The line printed for `err` under `command` (e.g. `tenant`, `policy create runtime`). */
export function failureLine(command: string, err: unknown): { line: string; exitCode: ExitStatus } {
  const d = describeFailure(err)
  const parts = [`keylime ${command}`, ...(d.what === undefined ? [] : [d.what]), printable(d.why)]
  return { line: `${parts.join(': ')}${d.hint === undefined ? '' : ` (${d.hint})`}`, exitCode: d.exitCode }
}

/** Whether stacks are wanted: `--debug` anywhere on the command line, or KEYLIME_DEBUG=1. */
export const debugWanted = (): boolean => process.env.KEYLIME_DEBUG === '1'

/** Prints the failure of `command` once and sets the exit status. */
export function reportFailure(command: string, err: unknown): ExitStatus {
  const { line, exitCode } = failureLine(command, err)
  process.stderr.write(`${line}\n`)
  if (debugWanted()) process.stderr.write(`${stackOf(err)}\n`)
  process.exitCode = exitCode
  return exitCode
}

function stackOf(err: unknown): string {
  const lines: string[] = []
  let current: unknown = err
  for (let depth = 0; current !== undefined && current !== null && depth < 8; depth++) {
    lines.push(
      depth === 0 ? '' : 'caused by:',
      current instanceof Error ? (current.stack ?? current.message) : String(current),
    )
    current = (current as { cause?: unknown }).cause
  }
  return lines.filter(Boolean).join('\n')
}
