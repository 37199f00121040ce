/**
 * Device-mapper measurements (spec ima-and-runtime-policy §11): the kernel (≥ 5.15, dm-ima) measures table loads and
 * device state changes as ima-buf entries named `dm_*` whose buffer is `key=value` text. This module parses those
 * buffers, validates a runtime policy's `ima.dm_policy` rule set, and runs the per-device state machine. Pure: the
 * state is plain JSON the caller stores with the rest of the IMA replay state.
 */
import { hash } from 'node:crypto'
import { KeylimeError } from '../../common/errors.ts'
import { compilePythonRegex, type LinearRegex, PythonRegexError } from '../python-regex.ts'
import { type FailureEvent, failure } from '../verdict.ts'
import { RuntimePolicyError } from './errors.ts'
import { KERNEL_HASHES } from './hash-algs.ts'

// ---------------------------------------------------------------------------------------------------------------
// Events and their parser

export const DM_EVENT_NAMES = [
  'dm_table_load',
  'dm_device_resume',
  'dm_device_remove',
  'dm_table_clear',
  'dm_device_rename',
  'dm_target_update',
] as const
export type DmEventName = (typeof DM_EVENT_NAMES)[number]

export function isDmEventName(name: string): name is DmEventName {
  return (DM_EVENT_NAMES as readonly string[]).includes(name)
}

/** A dm buffer that is not what the kernel writes for its event. `offset` is a character offset when known. */
export class DmEventParseError extends KeylimeError {
  readonly offset: number | undefined

  constructor(message: string, offset?: number) {
    super('ERR_DM_EVENT_PARSE', offset === undefined ? message : `offset ${offset}: ${message}`, {
      statusCode: 400,
    })
    this.offset = offset
  }
}

/** What a no_data event still says about the device. */
export interface DmDeviceIdentity {
  name: string
  uuid: string
}

export interface DmDeviceMetadata extends DmDeviceIdentity {
  major: number
  minor: number
  minorCount: number
  numTargets: number
}

export interface DmTarget {
  index: number
  begin: number
  len: number
  name: string
  version: string
  /** Target-specific attributes in logged order, values as logged (unescaped). */
  attributes: Record<string, string>
}

export type DmEvent =
  | { type: 'dm_table_load'; dmVersion: string; device: DmDeviceMetadata; targets: DmTarget[] }
  | {
      type: 'dm_device_resume'
      dmVersion: string
      device: DmDeviceIdentity | DmDeviceMetadata
      /** `<alg>:<hex>` of the table being activated; null for `device_resume=no_data`. */
      activeTableHash: string | null
      capacity: number
    }
  | {
      type: 'dm_device_remove'
      dmVersion: string
      active: DmDeviceMetadata | null
      inactive: DmDeviceMetadata | null
      /** The device the event is about: active metadata, else inactive, else the no_data name and uuid. */
      device: DmDeviceIdentity
      activeTableHash: string | null
      inactiveTableHash: string | null
      removeAll: boolean
      capacity: number
    }
  | {
      type: 'dm_table_clear'
      dmVersion: string
      device: DmDeviceIdentity | DmDeviceMetadata
      inactiveTableHash: string | null
      capacity: number
    }
  | {
      type: 'dm_device_rename'
      dmVersion: string
      /** Metadata before the rename; null for `device_rename=no_data` (no table was ever loaded). */
      device: DmDeviceMetadata | null
      newName: string
      newUuid: string
      capacity: number
    }
  | { type: 'dm_target_update'; dmVersion: string; device: DmDeviceMetadata; target: DmTarget }

/** The kernel's buffers are a few KiB at most (DM_IMA_MEASUREMENT_BUF_LEN is 4096); anything far larger is hostile. */
export const MAX_DM_BUFFER_BYTES = 64 * 1024

interface Section {
  /** `device_active_metadata` / `device_inactive_metadata` in front of a remove event's metadata. */
  prefix: string | null
  items: [key: string, value: string][]
  offset: number
}

const SECTION_PREFIXES = new Set(['device_active_metadata', 'device_inactive_metadata'])
const TARGET_FIELDS = ['target_index', 'target_begin', 'target_len', 'target_name', 'target_version']
const ESCAPED = new Set(['\\', ';', '=', ','])

function isKeyChar(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x5f // a-z 0-9 _
}

/**
 * Splits the text into `;`-terminated sections of `,`-separated `key=value` items. The kernel escapes `\ ; = ,`
 * in names with a backslash; NUL padding (older kernels' no_data events) is allowed only between sections.
 */
function tokenize(text: string): Section[] {
  const sections: Section[] = []
  const n = text.length
  let pos = 0
  while (pos < n) {
    while (pos < n && text.charCodeAt(pos) === 0) pos++
    if (pos >= n) break
    const section: Section = { prefix: null, items: [], offset: pos }
    for (;;) {
      const keyStart = pos
      while (pos < n && isKeyChar(text.charCodeAt(pos))) pos++
      if (pos === keyStart || text[pos] !== '=') {
        throw new DmEventParseError('expected key=value', keyStart)
      }
      const key = text.slice(keyStart, pos)
      pos++
      if (section.items.length === 0 && section.prefix === null && SECTION_PREFIXES.has(key)) {
        section.prefix = key
        continue
      }
      let value = ''
      while (pos < n) {
        const c = text.charCodeAt(pos)
        if (c === 0x2c || c === 0x3b) break // , ;
        if (c === 0x5c) {
          const next = text[pos + 1]
          if (next === undefined || !ESCAPED.has(next)) throw new DmEventParseError('invalid escape', pos)
          value += next
          pos += 2
          continue
        }
        if (c < 0x20 || c === 0x7f) throw new DmEventParseError(`control character 0x${c.toString(16)}`, pos)
        value += text[pos]
        pos++
      }
      section.items.push([key, value])
      if (pos >= n) throw new DmEventParseError(`section not terminated by ';'`, section.offset)
      pos++
      if (text.charCodeAt(pos - 1) === 0x3b) break
    }
    sections.push(section)
  }
  return sections
}

function describeSection(s: Section): string {
  const keys = s.items.map(([k]) => k).join(',')
  return s.prefix === null ? `{${keys}}` : `${s.prefix}={${keys}}`
}

/** Walks the sections of one event in order. */
class SectionReader {
  readonly #sections: Section[]
  #next = 0

  constructor(sections: Section[]) {
    this.#sections = sections
  }

  peek(): Section | undefined {
    return this.#sections[this.#next]
  }

  take(what: string): Section {
    const s = this.#sections[this.#next]
    if (s === undefined) throw new DmEventParseError(`missing ${what}`)
    this.#next++
    return s
  }

  done(): void {
    const s = this.#sections[this.#next]
    if (s !== undefined) throw new DmEventParseError(`unexpected ${describeSection(s)}`, s.offset)
  }
}

function fail(s: Section, message: string): never {
  throw new DmEventParseError(`${message} (got ${describeSection(s)})`, s.offset)
}

function hasKeys(s: Section, keys: readonly string[]): boolean {
  return s.items.length === keys.length && keys.every((k, i) => s.items[i]?.[0] === k)
}

function value(s: Section, index: number): string {
  return (s.items[index] as [string, string])[1]
}

function parseCount(text: string, field: string, offset: number): number {
  if (!/^\d{1,16}$/.test(text)) throw new DmEventParseError(`${field} is not a decimal number`, offset)
  const n = Number(text)
  if (!Number.isSafeInteger(n)) throw new DmEventParseError(`${field} is too large`, offset)
  return n
}

const VERSION = /^\d{1,5}\.\d{1,5}\.\d{1,5}$/

function readDmVersion(r: SectionReader): string {
  const s = r.take('dm_version')
  if (s.prefix !== null || !hasKeys(s, ['dm_version'])) fail(s, 'expected dm_version=')
  const v = value(s, 0)
  if (!VERSION.test(v)) fail(s, 'dm_version is not <major>.<minor>.<patch>')
  return v
}

const METADATA_KEYS = ['name', 'uuid', 'major', 'minor', 'minor_count', 'num_targets']

function metadataOf(s: Section): DmDeviceMetadata {
  return {
    name: value(s, 0),
    uuid: value(s, 1),
    major: parseCount(value(s, 2), 'major', s.offset),
    minor: parseCount(value(s, 3), 'minor', s.offset),
    minorCount: parseCount(value(s, 4), 'minor_count', s.offset),
    numTargets: parseCount(value(s, 5), 'num_targets', s.offset),
  }
}

function readMetadata(r: SectionReader, prefix: string | null = null): DmDeviceMetadata {
  const s = r.take('device metadata')
  if (s.prefix !== prefix || !hasKeys(s, METADATA_KEYS)) fail(s, `expected ${METADATA_KEYS.join(',')}`)
  return metadataOf(s)
}

/** Full metadata, or just `name,uuid` when the event goes on with `<noDataKey>=no_data`. */
function readDeviceOrNoData(
  r: SectionReader,
  noDataKey: string,
): { device: DmDeviceIdentity; noData: boolean } {
  const s = r.take('device metadata')
  if (s.prefix === null && hasKeys(s, ['name', 'uuid'])) {
    const marker = r.take(noDataKey)
    if (marker.prefix !== null || !hasKeys(marker, [noDataKey]) || value(marker, 0) !== 'no_data') {
      fail(marker, `expected ${noDataKey}=no_data after a name/uuid-only device`)
    }
    return { device: { name: value(s, 0), uuid: value(s, 1) }, noData: true }
  }
  if (s.prefix !== null || !hasKeys(s, METADATA_KEYS)) fail(s, `expected ${METADATA_KEYS.join(',')}`)
  return { device: metadataOf(s), noData: false }
}

function readTarget(r: SectionReader): DmTarget {
  const s = r.take('target')
  if (
    s.prefix !== null ||
    s.items.length < TARGET_FIELDS.length ||
    !TARGET_FIELDS.every((k, i) => s.items[i]?.[0] === k)
  ) {
    fail(s, `expected ${TARGET_FIELDS.join(',')},<attributes>`)
  }
  const version = value(s, 4)
  if (!VERSION.test(version)) fail(s, 'target_version is not <major>.<minor>.<patch>')
  const attributes: Record<string, string> = Object.create(null)
  for (const [key, v] of s.items.slice(TARGET_FIELDS.length)) {
    if (TARGET_FIELDS.includes(key) || Object.hasOwn(attributes, key)) fail(s, `duplicate target key ${key}`)
    attributes[key] = v
  }
  return {
    index: parseCount(value(s, 0), 'target_index', s.offset),
    begin: parseCount(value(s, 1), 'target_begin', s.offset),
    len: parseCount(value(s, 2), 'target_len', s.offset),
    name: value(s, 3),
    version,
    attributes,
  }
}

const TABLE_HASH = /^(?:([a-z0-9_-]{1,32}):)?([0-9a-fA-F]{16,256})$/

/** `<alg>:<hex>`, lowercase; a bare hex value (early dm-ima documentation) is sha256. */
function normaliseTableHash(text: string, s: Section): string {
  const m = TABLE_HASH.exec(text)
  if (m === null) fail(s, 'table hash is not <alg>:<hex>')
  return `${m[1] ?? 'sha256'}:${(m[2] as string).toLowerCase()}`
}

function readSingle(r: SectionReader, key: string): string {
  const s = r.take(key)
  if (s.prefix !== null || !hasKeys(s, [key])) fail(s, `expected ${key}=`)
  return value(s, 0)
}

function readCapacity(r: SectionReader): number {
  const s = r.peek()
  return parseCount(readSingle(r, 'current_device_capacity'), 'current_device_capacity', s?.offset ?? 0)
}

function readYesNo(text: string, field: string, s: Section): boolean {
  if (text === 'y') return true
  if (text === 'n') return false
  return fail(s, `${field} must be y or n`)
}

function decodeText(buffer: Uint8Array): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(buffer)
  } catch {
    throw new DmEventParseError('buffer is not UTF-8 text')
  }
}

/** Parses the buffer of a dm ima-buf entry. Throws only `DmEventParseError`. */
export function parseDmEvent(type: DmEventName, buffer: Uint8Array): DmEvent {
  if (!isDmEventName(type))
    throw new DmEventParseError(`not a device-mapper event: ${String(type).slice(0, 40)}`)
  if (buffer.length > MAX_DM_BUFFER_BYTES) {
    throw new DmEventParseError(`buffer of ${buffer.length} bytes exceeds ${MAX_DM_BUFFER_BYTES}`)
  }
  const r = new SectionReader(tokenize(decodeText(buffer)))
  const dmVersion = readDmVersion(r)
  let event: DmEvent
  switch (type) {
    case 'dm_table_load': {
      const device = readMetadata(r)
      const targets = [readTarget(r)]
      while (r.peek() !== undefined) targets.push(readTarget(r))
      event = { type, dmVersion, device, targets }
      break
    }
    case 'dm_device_resume': {
      const { device, noData } = readDeviceOrNoData(r, 'device_resume')
      let activeTableHash: string | null = null
      if (!noData) {
        const s = r.peek()
        activeTableHash = normaliseTableHash(readSingle(r, 'active_table_hash'), s as Section)
      }
      event = { type, dmVersion, device, activeTableHash, capacity: readCapacity(r) }
      break
    }
    case 'dm_device_remove': {
      let active: DmDeviceMetadata | null = null
      let inactive: DmDeviceMetadata | null = null
      let identity: DmDeviceIdentity | null = null
      if (r.peek()?.prefix === null) {
        // No table at all: `name=…,uuid=…;device_remove=no_data;`
        const s = r.take('device')
        if (!hasKeys(s, ['name', 'uuid']))
          fail(s, 'expected device_active_metadata=, device_inactive_metadata= or name,uuid')
        const marker = r.take('device_remove')
        if (marker.prefix !== null || !hasKeys(marker, ['device_remove']) || value(marker, 0) !== 'no_data') {
          fail(marker, 'expected device_remove=no_data')
        }
        identity = { name: value(s, 0), uuid: value(s, 1) }
      }
      if (identity === null && r.peek()?.prefix === 'device_active_metadata') {
        active = readMetadata(r, 'device_active_metadata')
      }
      if (identity === null && r.peek()?.prefix === 'device_inactive_metadata') {
        inactive = readMetadata(r, 'device_inactive_metadata')
      }
      const device = active ?? inactive ?? identity
      if (device === null) throw new DmEventParseError('remove event names no device')
      // `[active_table_hash=…,][inactive_table_hash=…,]remove_all=y|n;`
      const s = r.take('remove_all')
      const keys = s.items.map(([k]) => k)
      const expected = [
        ...(active !== null ? ['active_table_hash'] : []),
        ...(inactive !== null ? ['inactive_table_hash'] : []),
        'remove_all',
      ]
      if (s.prefix !== null || keys.join() !== expected.join()) fail(s, `expected ${expected.join(',')}`)
      const activeTableHash = active !== null ? normaliseTableHash(value(s, 0), s) : null
      const inactiveTableHash =
        inactive !== null ? normaliseTableHash(value(s, expected.length - 2), s) : null
      const removeAll = readYesNo(value(s, expected.length - 1), 'remove_all', s)
      event = {
        type,
        dmVersion,
        active,
        inactive,
        device,
        activeTableHash,
        inactiveTableHash,
        removeAll,
        capacity: readCapacity(r),
      }
      break
    }
    case 'dm_table_clear': {
      const { device, noData } = readDeviceOrNoData(r, 'table_clear')
      let inactiveTableHash: string | null = null
      if (!noData) {
        const s = r.peek()
        inactiveTableHash = normaliseTableHash(readSingle(r, 'inactive_table_hash'), s as Section)
      }
      event = { type, dmVersion, device, inactiveTableHash, capacity: readCapacity(r) }
      break
    }
    case 'dm_device_rename': {
      let device: DmDeviceMetadata | null = null
      const first = r.peek()
      if (first !== undefined && first.prefix === null && hasKeys(first, ['device_rename'])) {
        if (value(first, 0) !== 'no_data') fail(first, 'expected device_rename=no_data')
        r.take('device_rename')
      } else {
        device = readMetadata(r)
      }
      const s = r.take('new_name')
      if (s.prefix !== null || !hasKeys(s, ['new_name', 'new_uuid'])) fail(s, 'expected new_name,new_uuid')
      event = {
        type,
        dmVersion,
        device,
        newName: value(s, 0),
        newUuid: value(s, 1),
        capacity: readCapacity(r),
      }
      break
    }
    case 'dm_target_update': {
      const device = readMetadata(r)
      event = { type, dmVersion, device, target: readTarget(r) }
      break
    }
  }
  r.done()
  return event
}

// ---------------------------------------------------------------------------------------------------------------
// dm_policy: schema, validation and compilation

/** A rule value: null matches anything, a boolean or integer is compared, a string is a full-match Python regex. */
export type DmRuleAttribute = null | boolean | number | string

export interface DmRule {
  required: boolean
  device_resume_required: boolean
  device_rename: { valid_name: DmRuleAttribute; valid_uuid: DmRuleAttribute }
  device_remove: { allow_removal: boolean }
  allow_clear: boolean
  table_load: {
    allow_multiple_loads: boolean
    name: DmRuleAttribute
    uuid: DmRuleAttribute
    major: DmRuleAttribute
    minor: DmRuleAttribute
    minor_count: DmRuleAttribute
    num_targets: DmRuleAttribute
    targets: Record<string, DmRuleAttribute>[]
  }
}

export interface DmPolicy {
  version: 1
  match_on: 'name' | 'uuid'
  rules: Record<string, DmRule>
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Checks that `v` is an object with exactly `keys` (a typo must not silently drop a rule). */
function readObject(v: unknown, field: string, keys: readonly string[]): Record<string, unknown> {
  if (!isPlainObject(v)) throw new RuntimePolicyError(field, 'must be an object')
  const missing = keys.filter((k) => !Object.hasOwn(v, k))
  if (missing.length > 0)
    throw new RuntimePolicyError(field, `missing required member(s) ${missing.join(', ')}`)
  const unknown = Object.keys(v).filter((k) => !keys.includes(k))
  if (unknown.length > 0) {
    throw new RuntimePolicyError(
      field,
      `unknown member(s) ${unknown.map((k) => JSON.stringify(k)).join(', ')}`,
    )
  }
  return v
}

function readBool(v: unknown, field: string): boolean {
  if (typeof v !== 'boolean') throw new RuntimePolicyError(field, 'must be true or false')
  return v
}

function compileFullMatch(pattern: string, field: string): LinearRegex {
  try {
    return compilePythonRegex([pattern], 'fullmatch')
  } catch (err) {
    if (err instanceof PythonRegexError) {
      throw new RuntimePolicyError(field, `${JSON.stringify(pattern)}: ${err.message}`)
    }
    throw err
  }
}

function readAttribute(v: unknown, field: string): DmRuleAttribute {
  if (v === null || typeof v === 'boolean') return v
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) throw new RuntimePolicyError(field, 'must be an integer, not a fraction')
    return v
  }
  if (typeof v === 'string') {
    compileFullMatch(v, field)
    return v
  }
  throw new RuntimePolicyError(field, 'must be null, a boolean, an integer or a regular expression string')
}

const RULE_KEYS = [
  'required',
  'device_resume_required',
  'device_rename',
  'device_remove',
  'allow_clear',
  'table_load',
]
const TABLE_LOAD_KEYS = [
  'allow_multiple_loads',
  'name',
  'uuid',
  'major',
  'minor',
  'minor_count',
  'num_targets',
  'targets',
]
const TABLE_LOAD_METADATA = ['name', 'uuid', 'major', 'minor', 'minor_count', 'num_targets'] as const

function readRule(v: unknown, field: string, matchOn: 'name' | 'uuid'): DmRule {
  const rule = readObject(v, field, RULE_KEYS)
  const rename = readObject(rule.device_rename, `${field}.device_rename`, ['valid_name', 'valid_uuid'])
  const remove = readObject(rule.device_remove, `${field}.device_remove`, ['allow_removal'])
  const load = readObject(rule.table_load, `${field}.table_load`, TABLE_LOAD_KEYS)
  const metadata = {} as Record<(typeof TABLE_LOAD_METADATA)[number], DmRuleAttribute>
  for (const k of TABLE_LOAD_METADATA) metadata[k] = readAttribute(load[k], `${field}.table_load.${k}`)
  if (typeof metadata[matchOn] !== 'string') {
    throw new RuntimePolicyError(
      `${field}.table_load.${matchOn}`,
      `must be a regular expression string: match_on is ${JSON.stringify(matchOn)}, so it selects the rule`,
    )
  }
  if (!Array.isArray(load.targets))
    throw new RuntimePolicyError(`${field}.table_load.targets`, 'must be an array')
  const targets = load.targets.map((t, i) => {
    const tf = `${field}.table_load.targets[${i}]`
    if (!isPlainObject(t)) throw new RuntimePolicyError(tf, 'must be an object')
    const out: Record<string, DmRuleAttribute> = Object.create(null)
    for (const key of Object.keys(t)) {
      if (!/^[a-z0-9_]{1,64}$/.test(key)) {
        throw new RuntimePolicyError(
          `${tf}[${JSON.stringify(key)}]`,
          'is not a target attribute name ([a-z0-9_])',
        )
      }
      out[key] = readAttribute(t[key], `${tf}.${key}`)
    }
    return out
  })
  if (typeof metadata.num_targets === 'number' && targets.length !== metadata.num_targets) {
    throw new RuntimePolicyError(
      `${field}.table_load.targets`,
      `has ${targets.length} entries but num_targets is ${metadata.num_targets}`,
    )
  }
  return {
    required: readBool(rule.required, `${field}.required`),
    device_resume_required: readBool(rule.device_resume_required, `${field}.device_resume_required`),
    device_rename: {
      valid_name: readAttribute(rename.valid_name, `${field}.device_rename.valid_name`),
      valid_uuid: readAttribute(rename.valid_uuid, `${field}.device_rename.valid_uuid`),
    },
    device_remove: { allow_removal: readBool(remove.allow_removal, `${field}.device_remove.allow_removal`) },
    allow_clear: readBool(rule.allow_clear, `${field}.allow_clear`),
    table_load: {
      allow_multiple_loads: readBool(load.allow_multiple_loads, `${field}.table_load.allow_multiple_loads`),
      ...metadata,
      targets,
    },
  }
}

/**
 * Validates an `ima.dm_policy` object (upstream's schema forces null; we accept and enforce a real rule set). Throws
 * `RuntimePolicyError` naming the bad field under `field`.
 */
export function parseDmPolicy(v: unknown, field = 'ima.dm_policy'): DmPolicy {
  const p = readObject(v, field, ['version', 'match_on', 'rules'])
  if (p.version !== 1) throw new RuntimePolicyError(`${field}.version`, 'must be 1')
  if (p.match_on !== 'name' && p.match_on !== 'uuid') {
    throw new RuntimePolicyError(`${field}.match_on`, 'must be "name" or "uuid"')
  }
  const matchOn = p.match_on
  if (!isPlainObject(p.rules)) throw new RuntimePolicyError(`${field}.rules`, 'must be an object')
  const rules: Record<string, DmRule> = Object.create(null)
  for (const name of Object.keys(p.rules)) {
    const rf = `${field}.rules[${JSON.stringify(name)}]`
    // JavaScript objects list integer-like keys first, which would change which rule is tried first.
    if (/^(?:0|[1-9]\d*)$/.test(name))
      throw new RuntimePolicyError(rf, 'rule names must not be plain integers')
    rules[name] = readRule(p.rules[name], rf, matchOn)
  }
  return { version: 1, match_on: matchOn, rules }
}

interface CompiledAttribute {
  readonly expected: DmRuleAttribute
  readonly regex: LinearRegex | null
}

export interface CompiledDmRule {
  readonly name: string
  readonly rule: DmRule
  readonly select: LinearRegex
  readonly metadata: readonly (readonly [keyof DmDeviceMetadata, string, CompiledAttribute])[]
  readonly numTargets: CompiledAttribute
  readonly validName: CompiledAttribute
  readonly validUuid: CompiledAttribute
  readonly targets: readonly (readonly (readonly [string, CompiledAttribute])[])[]
}

export interface CompiledDmPolicy {
  readonly matchOn: 'name' | 'uuid'
  /** In policy order: a table load takes the first rule whose `table_load[match_on]` fully matches. */
  readonly rules: readonly CompiledDmRule[]
  readonly byName: ReadonlyMap<string, CompiledDmRule>
}

function compileAttribute(expected: DmRuleAttribute): CompiledAttribute {
  return {
    expected,
    regex: typeof expected === 'string' ? compileFullMatch(expected, 'dm_policy') : null,
  }
}

const METADATA_FIELDS: readonly (readonly [keyof DmDeviceMetadata, (typeof TABLE_LOAD_METADATA)[number]])[] =
  [
    ['name', 'name'],
    ['uuid', 'uuid'],
    ['major', 'major'],
    ['minor', 'minor'],
    ['minorCount', 'minor_count'],
    ['numTargets', 'num_targets'],
  ]

/** Compiles a validated dm_policy once (regular expressions built); the result is frozen and shareable. */
export function compileDmPolicy(policy: DmPolicy): CompiledDmPolicy {
  const rules = Object.keys(policy.rules).map((name): CompiledDmRule => {
    const rule = policy.rules[name] as DmRule
    const load = rule.table_load
    return Object.freeze({
      name,
      rule,
      select: compileFullMatch(load[policy.match_on] as string, 'dm_policy'),
      metadata: METADATA_FIELDS.map(([prop, key]) => [prop, key, compileAttribute(load[key])] as const),
      numTargets: compileAttribute(load.num_targets),
      validName: compileAttribute(rule.device_rename.valid_name),
      validUuid: compileAttribute(rule.device_rename.valid_uuid),
      targets: load.targets.map((t) =>
        Object.keys(t).map((k) => [k, compileAttribute(t[k] ?? null)] as const),
      ),
    })
  })
  return Object.freeze({
    matchOn: policy.match_on,
    rules: Object.freeze(rules),
    byName: new Map(rules.map((r) => [r.name, r])),
  })
}

const TRUE_WORDS = new Set(['y', 'yes', 't', 'true', 'on', '1'])
const FALSE_WORDS = new Set(['n', 'no', 'f', 'false', 'off', '0'])

/** A value from an event: strings as logged, numbers for the numeric fields, null when the event lacks it. */
export type DmValue = string | number | boolean | null | undefined

/**
 * Upstream's attribute rule: null → always ok; boolean → the value read as y/yes/t/true/on/1 or
 * n/no/f/false/off/0 (any case); integer → integer compare; string → full-match regex on the value's text.
 */
export function matchDmAttribute(
  actual: DmValue,
  expected: DmRuleAttribute,
  regex?: LinearRegex | null,
): boolean {
  if (expected === null) return true
  if (actual === null || actual === undefined) return false
  if (typeof expected === 'boolean') {
    if (typeof actual === 'string') {
      const word = actual.toLowerCase()
      return expected ? TRUE_WORDS.has(word) : FALSE_WORDS.has(word)
    }
    return typeof actual === 'number' ? actual === (expected ? 1 : 0) : actual === expected
  }
  if (typeof expected === 'number') {
    if (typeof actual === 'number') return actual === expected
    if (typeof actual === 'boolean') return (actual ? 1 : 0) === expected
    const text = actual.trim()
    return /^[+-]?\d{1,40}$/.test(text) && BigInt(text) === BigInt(expected)
  }
  const re = regex ?? compileFullMatch(expected, 'dm_policy')
  const text = typeof actual === 'boolean' ? (actual ? 'True' : 'False') : String(actual)
  return re.test(text)
}

function matches(actual: DmValue, attr: CompiledAttribute): boolean {
  return matchDmAttribute(actual, attr.expected, attr.regex)
}

// ---------------------------------------------------------------------------------------------------------------
// Per-device state machine

/** One device seen in a table load, keyed by its name or uuid (the policy's `match_on`). */
export interface DmDeviceState {
  key: string
  /** Rule that accepted the table load. */
  rule: string
  /** A resume activated the loaded table. */
  active: boolean
  /** False once an event broke the rule (or while a required resume is still missing). */
  valid: boolean
  /** `sha256:<hex>` of the loaded table's measured buffer: what a later resume must name. */
  tableHash: string
}

/** Plain JSON, stored in `ImaReplayState.dm`; an array so that no device key can clash with object internals. */
export interface DmState {
  devices: DmDeviceState[]
}

export function initialDmState(): DmState {
  return { devices: [] }
}

/** A stored dm state that is not what `DmValidator.state()` wrote (the verifier's own data, so a 500). */
export class DmStateError extends KeylimeError {
  constructor(message: string) {
    super('ERR_DM_STATE', message, { statusCode: 500 })
  }
}

function copyState(state: DmState | null | undefined): Map<string, DmDeviceState> {
  const devices = new Map<string, DmDeviceState>()
  if (state === null || state === undefined) return devices
  if (!isPlainObject(state) || !Array.isArray(state.devices))
    throw new DmStateError('stored dm state has no device list')
  for (const d of state.devices) {
    if (
      !isPlainObject(d) ||
      typeof d.key !== 'string' ||
      typeof d.rule !== 'string' ||
      typeof d.active !== 'boolean' ||
      typeof d.valid !== 'boolean' ||
      typeof d.tableHash !== 'string'
    ) {
      throw new DmStateError('stored dm state has a malformed device')
    }
    devices.set(d.key, { key: d.key, rule: d.rule, active: d.active, valid: d.valid, tableHash: d.tableHash })
  }
  return devices
}

/** The parts of an ima-buf entry the validator needs. */
export interface DmMeasurement {
  name: string
  /** `d-ng` algorithm name as logged. */
  digestAlg: string
  digest: Uint8Array
  buffer: Uint8Array
}

const STANDARD_TARGET_FIELDS: Record<string, (t: DmTarget) => DmValue> = {
  target_index: (t) => t.index,
  target_begin: (t) => t.begin,
  target_len: (t) => t.len,
  target_name: (t) => t.name,
  target_version: (t) => t.version,
}

function clip(text: string): string {
  return text.length > 120 ? `${text.slice(0, 117)}...` : text
}

/**
 * Validates dm events against a compiled dm_policy, one entry at a time, updating the per-device state. Event ids
 * are upstream's: `ima.validation.dm.<event name>.<id>`, plus `ima.validation.dm.invalid_data` and `.parsing_failed`.
 */
export class DmValidator {
  readonly #policy: CompiledDmPolicy
  readonly #devices: Map<string, DmDeviceState>

  /** `state` is copied, never modified. Throws `DmStateError` when a stored state is malformed. */
  constructor(policy: CompiledDmPolicy, state?: DmState | null) {
    this.#policy = policy
    this.#devices = copyState(state)
  }

  /** The state to persist (a copy). */
  state(): DmState {
    return { devices: [...this.#devices.values()].map((d) => ({ ...d })) }
  }

  /** Checks one dm_* ima-buf entry; failures are pushed to `events`. Never throws for bad entries. */
  validate(m: DmMeasurement, events: FailureEvent[]): void {
    if (!isDmEventName(m.name)) {
      events.push(failure('ima.validation.dm.invalid_event_type', { message: 'not a dm event', got: m.name }))
      return
    }
    const alg = KERNEL_HASHES[m.digestAlg]?.node
    const digestHex = Buffer.from(m.digest).toString('hex')
    if (alg === undefined || alg === null) {
      events.push(
        failure(
          'ima.validation.dm.invalid_data',
          `cannot check a ${clip(m.digestAlg)} digest of the dm buffer`,
        ),
      )
    } else if (hash(alg, m.buffer, 'hex') !== digestHex) {
      events.push(
        failure('ima.validation.dm.invalid_data', 'hash in IMA log and of the actual data mismatch'),
      )
    }
    let event: DmEvent
    try {
      event = parseDmEvent(m.name, m.buffer)
    } catch (err) {
      if (!(err instanceof DmEventParseError)) throw err
      events.push(
        failure('ima.validation.dm.parsing_failed', `Could not construct valid entry: ${err.message}`),
      )
      return
    }
    const out = new EventSink(event.type, events)
    switch (event.type) {
      case 'dm_table_load':
        this.#tableLoad(event, sha256Of(m.buffer), out)
        return
      case 'dm_device_resume':
        this.#deviceResume(event, out)
        return
      case 'dm_device_remove':
        this.#deviceRemove(event, out)
        return
      case 'dm_table_clear':
        this.#tableClear(event, out)
        return
      case 'dm_device_rename':
        this.#deviceRename(event, out)
        return
      case 'dm_target_update':
        this.#targetUpdate(event, out)
        return
    }
  }

  #keyOf(device: DmDeviceIdentity): string {
    return this.#policy.matchOn === 'name' ? device.name : device.uuid
  }

  /** The device and its rule, or a `<what>_before_table_load` event. */
  #known(device: DmDeviceIdentity | null, what: string, out: EventSink) {
    const key = device === null ? null : this.#keyOf(device)
    const state = key === null ? undefined : this.#devices.get(key)
    if (key === null || state === undefined) {
      out.add(`${what}_before_table_load`, `${capitalise(what)} event before table was loaded`)
      return null
    }
    const rule = this.#policy.byName.get(state.rule)
    if (rule === undefined) {
      out.add(
        'no_matching_policy',
        `device ${key} was loaded under rule ${state.rule}, which the policy lacks`,
      )
      return null
    }
    return { key, state, rule }
  }

  #tableLoad(event: Extract<DmEvent, { type: 'dm_table_load' }>, tableHash: string, out: EventSink): void {
    const key = this.#keyOf(event.device)
    const existing = this.#devices.get(key)
    const existingRule = existing === undefined ? undefined : this.#policy.byName.get(existing.rule)
    if (existing !== undefined && existingRule?.rule.table_load.allow_multiple_loads !== true) {
      out.add('multiple_table_loads', `Multiple table load entries for device: ${key}`)
      return
    }
    const rule = this.#policy.rules.find((r) => r.select.test(key))
    if (rule === undefined) {
      out.add('no_matching_policy', 'No policy found')
      return
    }
    for (const [prop, field, attr] of rule.metadata) {
      const got = event.device[prop]
      if (!matches(got, attr)) {
        out.add('invalid_entry', { got, expected: attr.expected, context: field })
        return
      }
    }
    const count = event.targets.length
    if (event.device.numTargets !== count || !matches(count, rule.numTargets)) {
      out.add('num_targets_mismatch', 'lengths are not consistent')
      return
    }
    event.targets.forEach((target, i) => {
      const reference = rule.targets[i]
      if (reference !== undefined) checkTarget(target, reference, out)
    })
    this.#devices.set(key, {
      key,
      rule: rule.name,
      active: false,
      valid: !rule.rule.device_resume_required,
      tableHash,
    })
  }

  #deviceResume(event: Extract<DmEvent, { type: 'dm_device_resume' }>, out: EventSink): void {
    const known = this.#known(event.device, 'resume', out)
    if (known === null) return
    const { state } = known
    if (state.active) {
      out.add('already_active', 'table is already active')
      state.valid = false
      return
    }
    if (event.activeTableHash !== state.tableHash) {
      out.add('active_table_mismatch', {
        got: event.activeTableHash,
        expected: state.tableHash,
        context: 'resume does not match the table',
      })
      state.valid = false
      return
    }
    state.active = true
    state.valid = true
  }

  #deviceRemove(event: Extract<DmEvent, { type: 'dm_device_remove' }>, out: EventSink): void {
    const known = this.#known(event.device, 'remove', out)
    if (known === null) return
    if (!known.rule.rule.device_remove.allow_removal) {
      out.add('device_removed', `Device ${known.key} was removed, but that is not allowed`)
      known.state.valid = false
      return
    }
    this.#devices.delete(known.key)
  }

  #tableClear(event: Extract<DmEvent, { type: 'dm_table_clear' }>, out: EventSink): void {
    const known = this.#known(event.device, 'clear', out)
    if (known === null) return
    if (!known.rule.rule.allow_clear) {
      out.add('table_cleared', `Table for device ${known.key} was cleared, but that is not allowed`)
      known.state.valid = false
    }
  }

  #deviceRename(event: Extract<DmEvent, { type: 'dm_device_rename' }>, out: EventSink): void {
    const known = this.#known(event.device, 'rename', out)
    if (known === null || event.device === null) return
    const { rule, state } = known
    let key = known.key
    const move = (to: string) => {
      this.#devices.delete(key)
      state.key = to
      this.#devices.set(to, state)
      key = to
    }
    if (event.device.name !== event.newName) {
      if (!matches(event.newName, rule.validName)) {
        out.add('new_name_invalid', {
          message: 'New name is invalid',
          got: event.newName,
          expected: rule.validName.expected,
        })
        state.valid = false
      } else if (this.#policy.matchOn === 'name') {
        move(event.newName)
      }
    }
    if (event.device.uuid !== event.newUuid) {
      if (!matches(event.newUuid, rule.validUuid)) {
        out.add('new_uuid_invalid', {
          message: 'New uuid is invalid',
          got: event.newUuid,
          expected: rule.validUuid.expected,
        })
        state.valid = false
      } else if (this.#policy.matchOn === 'uuid') {
        move(event.newUuid)
      }
    }
  }

  #targetUpdate(event: Extract<DmEvent, { type: 'dm_target_update' }>, out: EventSink): void {
    const known = this.#known(event.device, 'update', out)
    if (known === null) return
    const reference = known.rule.targets[event.target.index]
    if (reference === undefined) {
      out.add('target_data_invalid', `rule ${known.rule.name} has no target ${event.target.index}`)
      return
    }
    checkTarget(event.target, reference, out)
  }
}

/** Collects events of one dm event type under `ima.validation.dm.<type>.`. */
class EventSink {
  readonly #prefix: string
  readonly #events: FailureEvent[]

  constructor(type: DmEventName, events: FailureEvent[]) {
    this.#prefix = `ima.validation.dm.${type}.`
    this.#events = events
  }

  add(id: string, context: string | Record<string, unknown>): void {
    this.#events.push(failure(this.#prefix + id, context))
  }
}

function capitalise(word: string): string {
  return word.charAt(0).toUpperCase() + word.slice(1)
}

function sha256Of(buffer: Uint8Array): string {
  return `sha256:${hash('sha256', buffer, 'hex')}`
}

function checkTarget(
  target: DmTarget,
  reference: readonly (readonly [string, CompiledAttribute])[],
  out: EventSink,
): void {
  let valid = true
  for (const [key, attr] of reference) {
    const standard = STANDARD_TARGET_FIELDS[key]
    if (standard === undefined && !Object.hasOwn(target.attributes, key)) {
      out.add('target_attribute_not_found', { context: `Key ${key} not found on target ${target.name}` })
      continue
    }
    const got = standard === undefined ? target.attributes[key] : standard(target)
    if (!matches(got, attr)) {
      out.add('target_data_mismatch', { got, expected: attr.expected, context: key })
      valid = false
    }
  }
  if (!valid) out.add('target_data_invalid', 'target data was not valid')
}

/**
 * Upstream's end-of-list check, which upstream never calls (spec §11) and neither does the verifier: devices in an
 * invalid state (`ima.validation.dm.device_invalid_state`) and required rules no valid device uses
 * (`ima.validation.dm.required_policy_not_in_use`). Exposed for status reports and tests.
 */
export function dmPendingFailures(policy: CompiledDmPolicy, state: DmState): FailureEvent[] {
  const events: FailureEvent[] = []
  const used = new Set<string>()
  for (const device of state.devices) {
    if (device.valid) used.add(device.rule)
    else events.push(failure('ima.validation.dm.device_invalid_state', { context: device.key }))
  }
  for (const rule of policy.rules) {
    if (rule.rule.required && !used.has(rule.name)) {
      events.push(
        failure('ima.validation.dm.required_policy_not_in_use', `policy ${rule.name} required but not used`),
      )
    }
  }
  return events
}
