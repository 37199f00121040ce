/**
 * Typed option schemas. Each component declares `{key: opt.int(8890)}` etc.; `resolveConfig` turns raw strings
 * (files + env) and typed CLI flags into a typed object, naming the option on any parse failure.
 */
import {
  ConfigError,
  cleanValue,
  type IniComponent,
  type LoadOptions,
  loadIniRaw,
  parseBool,
  parseFloatOption,
  parseIntOption,
  parseList,
  type RawSections,
} from './loader.ts'

export interface OptionSpec<T> {
  readonly kind: 'string' | 'int' | 'float' | 'bool' | 'list'
  readonly default: T
  /** Section when not the component's own (e.g. `revocations` in verifier.conf). */
  readonly section?: string
  /** Option name in the file when it differs from the schema key. */
  readonly option?: string
  /** Inclusive range of an int option (ports: 0-65535, where 0 asks the system for a free port). */
  readonly range?: readonly [number, number]
}

type Extra = { section?: string; option?: string }

export const opt = {
  string: (d: string, x: Extra = {}): OptionSpec<string> => ({ kind: 'string', default: d, ...x }),
  int: (d: number, x: Extra = {}): OptionSpec<number> => ({ kind: 'int', default: d, ...x }),
  port: (d: number, x: Extra = {}): OptionSpec<number> => ({
    kind: 'int',
    default: d,
    range: [0, 65535],
    ...x,
  }),
  float: (d: number, x: Extra = {}): OptionSpec<number> => ({ kind: 'float', default: d, ...x }),
  bool: (d: boolean, x: Extra = {}): OptionSpec<boolean> => ({ kind: 'bool', default: d, ...x }),
  list: (d: readonly string[], x: Extra = {}): OptionSpec<string[]> => ({
    kind: 'list',
    default: [...d],
    ...x,
  }),
}

// biome-ignore lint/suspicious/noExplicitAny: schema values are heterogeneous OptionSpecs
export type Schema = Record<string, OptionSpec<any>>
export type ConfigOf<S extends Schema> = { [K in keyof S]: S[K]['default'] }

function parseAs<T>(spec: OptionSpec<T>, raw: string, name: string): T {
  switch (spec.kind) {
    case 'string':
      return cleanValue(raw) as T
    case 'int':
      return inRange(spec, parseIntOption(raw, name), name) as T
    case 'float':
      return parseFloatOption(raw, name) as T
    case 'bool':
      return parseBool(raw, name) as T
    case 'list':
      return parseList(raw, name) as T
  }
}

function inRange<T>(spec: OptionSpec<T>, value: number, name: string): number {
  if (spec.range && (value < spec.range[0] || value > spec.range[1])) {
    throw new ConfigError(`${name}: ${value} is out of range (${spec.range[0]}-${spec.range[1]})`)
  }
  return value
}

/** Flags may be typed values or strings (commander hands strings); undefined flags are ignored. */
export type Flags<S extends Schema> = { [K in keyof S]?: S[K]['default'] | string | undefined }

export function resolveConfig<S extends Schema>(
  schema: S,
  component: string,
  sections: RawSections,
  flags: Flags<S> = {},
): ConfigOf<S> {
  const out: Record<string, unknown> = {}
  for (const [key, spec] of Object.entries(schema)) {
    const section = spec.section ?? component
    const option = spec.option ?? key
    const name = `[${section}] ${option}`
    const flag = flags[key]
    if (flag !== undefined) {
      out[key] =
        typeof flag === 'string' && spec.kind !== 'string'
          ? parseAs(spec, flag, `--${key.replaceAll('_', '-')}`)
          : typeof flag === 'number' && spec.kind === 'int'
            ? inRange(spec, flag, `--${key.replaceAll('_', '-')}`)
            : flag
      continue
    }
    const raw = sections[section]?.[option]
    out[key] = raw === undefined ? structuredClone(spec.default) : parseAs(spec, raw, name)
  }
  return out as ConfigOf<S>
}

export interface Loaded<S extends Schema> {
  config: ConfigOf<S>
  files: string[]
  /** `[section] option` of the files (or environment) that Keylime TS does not read: reported, never fatal. */
  unknown: string[]
}

/** Options a file may carry that no schema lists: the template version. */
const BOOKKEEPING = new Set(['version'])

/** Every `[section] option` of `sections` (in the schema's sections) that `schema` does not read. */
export function unknownOptions(schema: Schema, component: string, sections: RawSections): string[] {
  const known = new Map<string, Set<string>>()
  for (const [key, spec] of Object.entries(schema)) {
    const section = spec.section ?? component
    const set = known.get(section) ?? new Set<string>()
    set.add(spec.option ?? key)
    known.set(section, set)
  }
  const out: string[] = []
  for (const [section, options] of known) {
    for (const option of Object.keys(sections[section] ?? {}))
      if (!options.has(option) && !BOOKKEEPING.has(option)) out.push(`[${section}] ${option}`)
  }
  return out
}

/** Loads an INI component: files, conf.d, env, then flags. */
export function loadIniConfig<S extends Schema>(
  component: IniComponent,
  schema: S,
  opts: LoadOptions & { flags?: Flags<S> } = {},
): Loaded<S> {
  const knownSections = [...new Set(Object.values(schema).map((s) => s.section ?? component))]
  const { sections, files } = loadIniRaw(component, { ...opts, knownSections })
  return {
    config: resolveConfig(schema, component, sections, opts.flags),
    files,
    unknown: unknownOptions(schema, component, sections),
  }
}

export { ConfigError }
