/**
 * Config layering shared by every component (keylime-config-and-cli.md §1):
 * schema defaults < base file < conf.d snippets (sorted, later wins) < `KEYLIME_<C>_*` env < CLI flags.
 * INI (verifier, registrar, tenant, ca) and TOML `[agent]` (agent) read into the same raw shape
 * `{section: {option: string}}`; a typed schema per component then parses the strings.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { isAbsolute, join, resolve } from 'node:path'
import { parse as parseToml } from 'smol-toml'
import { KeylimeError } from '../common/errors.ts'

export class ConfigError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_CONFIG', message, options)
  }
}

export type IniComponent = 'verifier' | 'registrar' | 'tenant' | 'ca' | 'logging'
export type RawSections = Record<string, Record<string, string>>

/** Upstream search order: `/usr/etc/keylime` first, then `/etc/keylime` (later wins). */
export const DEFAULT_CONFIG_DIRS = ['/usr/etc/keylime', '/etc/keylime'] as const

/** Strips surrounding spaces and one pair of double quotes, as upstream's getter does. */
export function cleanValue(raw: string): string {
  let v = raw.trim()
  if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1).trim()
  return v
}

/**
 * Minimal RawConfigParser-compatible INI reader: `[section]`, `key = value` or `key: value`, `#`/`;` full-line
 * comments, indented continuation lines, no interpolation. Option names are case-insensitive (lower-cased).
 */
export function parseIni(text: string, source = '<string>'): RawSections {
  const out: RawSections = {}
  let section: Record<string, string> | null = null
  let lastKey: string | null = null
  const lines = text.split(/\r?\n/)
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? ''
    const trimmed = line.trim()
    if (trimmed === '' || trimmed.startsWith('#') || trimmed.startsWith(';')) {
      if (trimmed === '') lastKey = null
      continue
    }
    if (/^\s/.test(line) && section && lastKey !== null) {
      section[lastKey] = `${section[lastKey] ?? ''}\n${trimmed}`
      continue
    }
    const sec = /^\[([^\]]+)\]\s*$/.exec(trimmed)
    if (sec) {
      const name = (sec[1] ?? '').trim()
      out[name] ??= {}
      section = out[name]
      lastKey = null
      continue
    }
    const m = /^([^=:]+?)\s*[=:]\s*(.*)$/.exec(trimmed)
    if (!m || !section) {
      throw new ConfigError(
        `${source}:${i + 1}: expected "[section]" or "option = value", got ${JSON.stringify(trimmed.slice(0, 80))}`,
      )
    }
    lastKey = (m[1] ?? '').toLowerCase()
    section[lastKey] = m[2] ?? ''
  }
  return out
}

function mergeInto(target: RawSections, src: RawSections): void {
  for (const [sec, opts] of Object.entries(src)) {
    target[sec] = { ...(target[sec] ?? {}), ...opts }
  }
}

function snippetFiles(dir: string, ext: string): string[] {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) return []
  return readdirSync(dir)
    .filter((f) => f.endsWith(ext))
    .sort()
    .map((f) => join(dir, f))
}

export interface LoadOptions {
  /** An explicit file (the `--config` flag): replaces the file set like `KEYLIME_<C>_CONFIG`. */
  configFile?: string | undefined
  env?: NodeJS.ProcessEnv
  /** Directories searched in order (tests point these at temp dirs). */
  configDirs?: readonly string[]
}

export interface LoadedRaw {
  sections: RawSections
  /** Files read, in order, for logging which layers applied. */
  files: string[]
}

function readFileOrThrow(path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message}`, { cause: err })
  }
}

/** The file set of §1.1/§1.2: explicit file or env replaces; else base (`/etc` over `/usr/etc`) + conf.d snippets. */
function fileSet(component: string, ext: string, opts: LoadOptions): string[] {
  const env = opts.env ?? process.env
  const explicit = opts.configFile ?? env[`KEYLIME_${component.toUpperCase()}_CONFIG`]
  if (opts.configFile !== undefined) {
    if (!existsSync(opts.configFile)) throw new ConfigError(`config file not found: ${opts.configFile}`)
    return [opts.configFile]
  }
  if (explicit && existsSync(explicit)) return [explicit]
  const dirs = opts.configDirs ?? DEFAULT_CONFIG_DIRS
  const files: string[] = []
  // base file: the last directory that has it wins (upstream prefers /etc over /usr/etc)
  const bases = dirs.map((d) => join(d, `${component}.conf`)).filter((p) => existsSync(p))
  const base = bases[bases.length - 1]
  if (base) files.push(base)
  for (const d of dirs) files.push(...snippetFiles(join(d, `${component}.conf.d`), ext))
  return files
}

/** Reads an INI component's files and applies `KEYLIME_<C>_<OPTION>` / `KEYLIME_<C>_<SECTION>_<OPTION>` env. */
export function loadIniRaw(
  component: IniComponent,
  opts: LoadOptions & { knownSections?: readonly string[] } = {},
): LoadedRaw {
  const files = fileSet(component, '.conf', opts)
  const sections: RawSections = {}
  for (const f of files) mergeInto(sections, parseIni(readFileOrThrow(f), f))
  sections[component] ??= {}
  applyEnv(component, sections, opts.env ?? process.env, opts.knownSections ?? [])
  return { sections, files }
}

function applyEnv(
  component: string,
  sections: RawSections,
  env: NodeJS.ProcessEnv,
  knownSections: readonly string[],
): void {
  const prefix = `KEYLIME_${component.toUpperCase()}_`
  const allSections = new Set([...Object.keys(sections), ...knownSections])
  // longest section names first so `REVOCATIONS_WEBHOOK_URL` is not read as an own-section option
  const others = [...allSections].filter((s) => s !== component).sort((a, b) => b.length - a.length)
  for (const [name, value] of Object.entries(env)) {
    if (value === undefined || !name.startsWith(prefix) || name === `${prefix}CONFIG`) continue
    const rest = name.slice(prefix.length).toLowerCase()
    const other = others.find((s) => rest.startsWith(`${s.toLowerCase()}_`))
    if (other) {
      sections[other] ??= {}
      ;(sections[other] as Record<string, string>)[rest.slice(other.length + 1)] = value
    } else {
      ;(sections[component] as Record<string, string>)[rest] = value
    }
  }
}

/** Reads the agent's TOML files (table `[agent]`) and applies `KEYLIME_AGENT_<OPTION>` env. */
export function loadAgentRaw(opts: LoadOptions = {}): LoadedRaw {
  const files = fileSet('agent', '.conf', opts)
  const agent: Record<string, string> = {}
  for (const f of files) {
    let doc: Record<string, unknown>
    try {
      doc = parseToml(readFileOrThrow(f)) as Record<string, unknown>
    } catch (err) {
      if (err instanceof ConfigError) throw err
      throw new ConfigError(`${f}: invalid TOML: ${(err as Error).message}`, { cause: err })
    }
    const table = doc.agent
    if (table === undefined) continue
    if (typeof table !== 'object' || table === null || Array.isArray(table)) {
      throw new ConfigError(`${f}: [agent] must be a table`)
    }
    for (const [k, v] of Object.entries(table)) {
      agent[k.toLowerCase()] = Array.isArray(v) ? JSON.stringify(v) : String(v)
    }
  }
  const sections: RawSections = { agent }
  applyEnv('agent', sections, opts.env ?? process.env, [])
  return { sections, files }
}

/** `KEYLIME_DIR` (default `/var/lib/keylime`); `KEYLIME_TEST=on` makes it the CWD as upstream. */
export function keylimeDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.KEYLIME_DIR) return resolve(env.KEYLIME_DIR)
  if (parseBool(env.KEYLIME_TEST ?? 'off', 'KEYLIME_TEST')) return process.cwd()
  return '/var/lib/keylime'
}

/** Resolves a possibly relative path against the work dir. */
export function resolveInDir(dir: string, path: string): string {
  return isAbsolute(path) ? path : join(dir, path)
}

// ---- value parsers (strings from files/env -> typed) ----

export function parseBool(raw: string, name: string): boolean {
  const v = cleanValue(raw).toLowerCase()
  if (['true', 'yes', 'on', '1'].includes(v)) return true
  if (['false', 'no', 'off', '0'].includes(v)) return false
  throw new ConfigError(
    `${name}: expected a boolean (true/false/yes/no/on/off/1/0), got ${JSON.stringify(raw)}`,
  )
}

export function parseIntOption(raw: string, name: string): number {
  const v = cleanValue(raw)
  if (!/^-?\d+$/.test(v)) throw new ConfigError(`${name}: expected an integer, got ${JSON.stringify(raw)}`)
  return Number(v)
}

export function parseFloatOption(raw: string, name: string): number {
  const v = cleanValue(raw)
  const n = Number(v)
  if (v === '' || !Number.isFinite(n))
    throw new ConfigError(`${name}: expected a number, got ${JSON.stringify(raw)}`)
  return n
}

/**
 * Lists as upstream writes them: a Python/JSON literal (`['a', "b"]`), or a comma-separated string;
 * empty string -> [].
 */
export function parseList(raw: string, name: string): string[] {
  const v = cleanValue(raw)
  if (v === '') return []
  if (v.startsWith('[')) {
    if (!v.endsWith(']')) throw new ConfigError(`${name}: unterminated list ${JSON.stringify(raw)}`)
    const inner = v.slice(1, -1).trim()
    if (inner === '') return []
    const items: string[] = []
    const re = /\s*(?:'([^']*)'|"([^"]*)"|([^,'"\s][^,]*?))\s*(?:,|$)/gy
    let m: RegExpExecArray | null
    let pos = 0
    // biome-ignore lint/suspicious/noAssignInExpressions: standard sticky-regex scan
    while (pos < inner.length && (m = re.exec(inner)) !== null) {
      items.push((m[1] ?? m[2] ?? m[3] ?? '').trim())
      pos = re.lastIndex
    }
    if (pos < inner.length) throw new ConfigError(`${name}: cannot parse list ${JSON.stringify(raw)}`)
    return items
  }
  return v
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
}
