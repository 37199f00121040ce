import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  type CompiledRuntimePolicy,
  compileDmPolicy,
  compileRuntimePolicy,
  DM_EVENT_NAMES,
  type DmEventName,
  DmEventParseError,
  type DmState,
  DmStateError,
  DmValidator,
  dmPendingFailures,
  emptyRuntimePolicy,
  type ImaEntry,
  type ImaReplayState,
  matchDmAttribute,
  parseDmEvent,
  parseDmPolicy,
  parseImaLine,
  parseRuntimePolicy,
  RuntimePolicyError,
  replayImaEntries,
  verifyImaIncrement,
} from '../../src/evidence/ima/index.ts'
import type { FailureEvent } from '../../src/evidence/verdict.ts'
import { fixture, fixtureJson } from '../helpers/fixture.ts'

// The 15 upstream vectors (keylime test/test_ima_dm.py), by their upstream variable names.
const vectorLines = fixture('ima/keylime-testsuite-dm-events.ascii')
  .toString('utf8')
  .split('\n')
  .filter(Boolean)
const vectorNames = fixture('ima/keylime-testsuite-dm-events.names.txt')
  .toString('utf8')
  .split('\n')
  .filter(Boolean)
const vectors = new Map<string, { line: string; entry: ImaEntry }>(
  vectorNames.map((name, i) => {
    const line = vectorLines[i] as string
    return [name, { line, entry: parseImaLine(line) }]
  }),
)

function vector(name: string): { line: string; entry: ImaEntry } {
  const v = vectors.get(name)
  if (v === undefined) throw new Error(`no vector ${name}`)
  return v
}

// biome-ignore lint/suspicious/noExplicitAny: the schema tests write wrong types into policies on purpose
type LoosePolicy = any

const verityPolicyJson = fixtureJson('policies/keylime-testsuite-dm-example_policy_verity.json')
const linearPolicyJson = fixtureJson('policies/keylime-testsuite-dm-example_policy_linear.json')
const verityPolicy = compileDmPolicy(parseDmPolicy(verityPolicyJson))
const linearPolicy = compileDmPolicy(parseDmPolicy(linearPolicyJson))

/** Validates one vector; returns the event ids it produced. */
function check(validator: DmValidator, name: string): string[] {
  const { entry } = vector(name)
  const events: FailureEvent[] = []
  validator.validate(
    { name: entry.name, digestAlg: entry.digestAlg, digest: entry.digest, buffer: entry.buffer as Buffer },
    events,
  )
  return events.map((e) => e.eventId)
}

function eventText(text: string): Buffer {
  return Buffer.from(text, 'latin1')
}

const parseErrorOf = (fn: () => unknown): DmEventParseError => {
  try {
    fn()
  } catch (err) {
    if (err instanceof DmEventParseError) return err
    throw err
  }
  throw new Error('expected a DmEventParseError')
}

describe('dm event buffers', () => {
  it('parses all 15 upstream vectors with the fields they carry', () => {
    expect(vectors.size).toBe(15)
    for (const { entry } of vectors.values()) {
      expect(DM_EVENT_NAMES).toContain(entry.name)
      expect(parseDmEvent(entry.name as DmEventName, entry.buffer as Buffer).type).toBe(entry.name)
    }
    const load = parseDmEvent('dm_table_load', vector('table_load_verity').entry.buffer as Buffer)
    if (load.type !== 'dm_table_load') throw new Error('wrong type')
    expect(load.device).toEqual({
      name: 'test',
      uuid: 'CRYPT-VERITY-c76d07343d3a49b5ab01025d3b354df5-test',
      major: 253,
      minor: 0,
      minorCount: 1,
      numTargets: 1,
    })
    expect(load.targets[0]).toMatchObject({
      index: 0,
      begin: 0,
      len: 204808,
      name: 'verity',
      version: '1.8.0',
    })
    expect(load.targets[0]?.attributes.root_digest).toBe(
      '6eaffe6b8b01990a1e39712657468e9b722cb64ba9942c6d586948da1bd40967',
    )
    const mirror = parseDmEvent('dm_table_load', vector('table_load_mirror').entry.buffer as Buffer)
    if (mirror.type !== 'dm_table_load') throw new Error('wrong type')
    expect(mirror.targets[0]?.attributes).toMatchObject({ mirror_device_1_status: 'A', log_type_status: '' })

    const remove = parseDmEvent('dm_device_remove', vector('device_remove').entry.buffer as Buffer)
    expect(remove).toMatchObject({
      active: { name: 'test', numTargets: 1 },
      inactive: null,
      activeTableHash: 'sha256:09e8a13203b10ce8d352aaafcdaf74986a6e2940e42c44c1a6603624135e1117',
      removeAll: false,
      capacity: 204808,
    })
    // Older kernels pad the no_data clear event with NULs between sections.
    const clear = parseDmEvent('dm_table_clear', vector('table_clear').entry.buffer as Buffer)
    expect(clear).toMatchObject({ device: { name: 'test' }, inactiveTableHash: null, capacity: 204808 })
    const rename = parseDmEvent('dm_device_rename', vector('linear_rename_uuid').entry.buffer as Buffer)
    expect(rename).toMatchObject({
      device: { name: 'test2', uuid: '' },
      newName: 'test2',
      newUuid: 'test_uuid',
    })
  })

  it('parses the kernel forms the vectors lack: escapes, both tables on remove, no_data events', () => {
    const v = 'dm_version=4.45.0;'
    const meta = 'name=linear1,uuid=,major=253,minor=0,minor_count=1,num_targets=1;'
    const rename = parseDmEvent(
      'dm_device_rename',
      eventText(
        `${v}name=linear1,uuid=1234-5678,major=253,minor=0,minor_count=1,num_targets=1;new_name=linear\\=2,new_uuid=1234-5678;current_device_capacity=2;`,
      ),
    )
    expect(rename).toMatchObject({ newName: 'linear=2', device: { uuid: '1234-5678' } })
    const both = parseDmEvent(
      'dm_device_remove',
      eventText(
        `${v}device_active_metadata=${meta}device_inactive_metadata=${meta.replace('num_targets=1', 'num_targets=2')}` +
          `active_table_hash=sha256:${'ab'.repeat(32)},inactive_table_hash=sha256:${'cd'.repeat(32)},remove_all=y;current_device_capacity=8;`,
      ),
    )
    expect(both).toMatchObject({
      active: { numTargets: 1 },
      inactive: { numTargets: 2 },
      inactiveTableHash: `sha256:${'cd'.repeat(32)}`,
      removeAll: true,
    })
    expect(
      parseDmEvent(
        'dm_device_remove',
        eventText(`${v}name=a\\,b,uuid=;device_remove=no_data;remove_all=n;current_device_capacity=0;`),
      ),
    ).toMatchObject({ device: { name: 'a,b', uuid: '' }, active: null, inactive: null })
    expect(
      parseDmEvent(
        'dm_device_resume',
        eventText(`${v}name=x,uuid=;device_resume=no_data;current_device_capacity=0;`),
      ),
    ).toMatchObject({ activeTableHash: null })
    expect(
      parseDmEvent(
        'dm_device_rename',
        eventText(`${v}device_rename=no_data;new_name=y,new_uuid=;current_device_capacity=0;`),
      ),
    ).toMatchObject({ device: null, newName: 'y' })
    // Early dm-ima documentation shows the table hash without an algorithm: it is sha256.
    expect(
      parseDmEvent(
        'dm_device_resume',
        eventText(`${v}${meta}active_table_hash=${'AB'.repeat(32)};current_device_capacity=8;`),
      ),
    ).toMatchObject({ activeTableHash: `sha256:${'ab'.repeat(32)}` })
    const multi = parseDmEvent(
      'dm_table_load',
      eventText(
        `${v}${meta.replace('num_targets=1', 'num_targets=2')}` +
          'target_index=0,target_begin=0,target_len=2,target_name=linear,target_version=1.4.0,device_name=7:0,start=512;' +
          'target_index=1,target_begin=2,target_len=2,target_name=linear,target_version=1.4.0,device_name=7:0,start=512;',
      ),
    )
    expect(multi.type === 'dm_table_load' && multi.targets.map((t) => t.begin)).toEqual([0, 2])
  })

  it('rejects truncated, padded, incomplete, oversized and non-text buffers with DmEventParseError', () => {
    for (const { entry } of vectors.values()) {
      const buffer = entry.buffer as Buffer
      const name = entry.name as DmEventName
      // Every proper prefix that ends inside a section is incomplete.
      for (let cut = 0; cut < buffer.length; cut++) {
        if (buffer[cut - 1] === 0x3b || buffer[cut - 1] === 0) continue
        expect(parseErrorOf(() => parseDmEvent(name, buffer.subarray(0, cut))).code).toBe(
          'ERR_DM_EVENT_PARSE',
        )
      }
    }
    const load = (vector('table_load_linear').entry.buffer as Buffer).toString('latin1')
    const bad: [DmEventName, string, RegExp][] = [
      ['dm_table_load', load.replace('name=identity', 'name=iden\0tity'), /control character/],
      ['dm_table_load', load.replace('major=253,', ''), /expected name,uuid,major/],
      ['dm_table_load', load.replace('target_len=4268032', 'target_len=-1'), /target_len/],
      ['dm_table_load', load.replace('major=253', 'major=99999999999999999'), /major/],
      ['dm_table_load', load.replace('start=0;', 'start=0,start=1;'), /duplicate target key start/],
      ['dm_table_load', load.replace('dm_version=4.45.0', 'dm_version=4.x'), /dm_version/],
      ['dm_table_load', load.replace(/target_index.*$/, ''), /missing target/],
      ['dm_table_load', load.replace('identity', 'a\\b'), /invalid escape/],
      ['dm_table_load', `${load}extra=1;`, /expected target_index/],
      ['dm_device_resume', load, /active_table_hash/],
      [
        'dm_device_resume',
        'dm_version=4.45.0;name=x,uuid=;current_device_capacity=1;',
        /device_resume=no_data/,
      ],
      ['dm_device_remove', 'dm_version=4.45.0;remove_all=n;current_device_capacity=1;', /name,uuid/],
      ['dm_table_clear', 'dm_version=4.45.0;', /missing device metadata/],
      ['dm_device_rename', 'dm_version=4.45.0;;', /expected key=value/],
      ['dm_target_update', 'no equals sign', /expected key=value/],
    ]
    for (const [name, text, message] of bad) {
      expect(parseErrorOf(() => parseDmEvent(name, eventText(text))).message, text).toMatch(message)
    }
    expect(
      parseErrorOf(() => parseDmEvent('dm_table_load', Buffer.from([0x64, 0xff, 0xfe]))).message,
    ).toMatch(/UTF-8/)
    const huge = Buffer.alloc(10 * 1024 * 1024, 0x61)
    const start = performance.now()
    expect(parseErrorOf(() => parseDmEvent('dm_table_load', huge)).message).toMatch(/exceeds/)
    expect(performance.now() - start).toBeLessThan(100)
    expect(parseErrorOf(() => parseDmEvent('dm_bogus' as DmEventName, Buffer.alloc(0))).message).toMatch(
      /not a device-mapper event/,
    )
  })

  it('fuzz: arbitrary and mutated buffers raise nothing but DmEventParseError', () => {
    const buffers = [...vectors.values()].map(
      ({ entry }) => [entry.name as DmEventName, entry.buffer as Buffer] as const,
    )
    const mutated = fc
      .tuple(
        fc.constantFrom(...buffers),
        fc.array(fc.tuple(fc.nat(), fc.constantFrom(0, 0x2c, 0x3b, 0x3d, 0x5c, 0x30, 0x41, 0x0a, 0xc3)), {
          maxLength: 6,
        }),
        fc.nat(),
      )
      .map(([[name, buffer], edits, cut]) => {
        const b = Buffer.from(buffer)
        for (const [at, byte] of edits) b[at % b.length] = byte
        return [name, b.subarray(0, b.length - (cut % 8))] as const
      })
    const anyBytes = fc.tuple(fc.constantFrom(...DM_EVENT_NAMES), fc.uint8Array({ maxLength: 300 }))
    const textish = fc.tuple(
      fc.constantFrom(...DM_EVENT_NAMES),
      fc
        .array(
          fc.constantFrom(
            'dm_version=4.45.0;',
            'name=a,uuid=b,',
            'major=1,',
            ';',
            ',',
            '=',
            '\\',
            '\0',
            'x=y',
          ),
        )
        .map((parts) => Buffer.from(parts.join(''), 'latin1')),
    )
    const validator = new DmValidator(verityPolicy)
    fc.assert(
      fc.property(fc.oneof(mutated, anyBytes, textish), ([name, buffer]) => {
        try {
          parseDmEvent(name, buffer)
        } catch (err) {
          if (!(err instanceof DmEventParseError)) throw err
        }
        // The validator turns every bad buffer into events and never throws.
        const events: FailureEvent[] = []
        validator.validate({ name, digestAlg: 'sha256', digest: Buffer.alloc(32), buffer }, events)
        expect(events.length).toBeGreaterThan(0) // the zero digest never matches
      }),
      { numRuns: 1500 },
    )
  })
})

describe('dm_policy schema', () => {
  const valid = () => structuredClone(verityPolicyJson) as LoosePolicy

  function policyField(mutate: (p: ReturnType<typeof valid>) => void): string {
    const p = valid()
    mutate(p)
    try {
      parseDmPolicy(p)
    } catch (err) {
      if (err instanceof RuntimePolicyError) return err.field
      throw err
    }
    throw new Error('policy was accepted')
  }

  it('accepts both upstream example policies, also inside a runtime policy', () => {
    expect(verityPolicy.matchOn).toBe('uuid')
    expect(linearPolicy.rules.map((r) => r.name)).toEqual(['example'])
    const runtime = {
      ...emptyRuntimePolicy(),
      ima: { ignored_keyrings: [], log_hash_alg: 'sha1', dm_policy: linearPolicyJson },
    }
    expect(parseRuntimePolicy(JSON.stringify(runtime)).ima.dm_policy?.match_on).toBe('name')
  })

  it.each<[string, (p: ReturnType<typeof valid>) => void, string]>([
    ['version', (p) => (p.version = 2), 'ima.dm_policy.version'],
    ['match_on', (p) => (p.match_on = 'major'), 'ima.dm_policy.match_on'],
    ['rules', (p) => (p.rules = [] as never), 'ima.dm_policy.rules'],
    ['missing member', (p) => delete p.rules.example.allow_clear, 'ima.dm_policy.rules["example"]'],
    ['unknown member (typo)', (p) => (p.rules.example.allow_clr = true), 'ima.dm_policy.rules["example"]'],
    ['bool', (p) => (p.rules.example.required = 'yes'), 'ima.dm_policy.rules["example"].required'],
    [
      'rename',
      (p) => (p.rules.example.device_rename.valid_name = []),
      'ima.dm_policy.rules["example"].device_rename.valid_name',
    ],
    [
      'removal',
      (p) => (p.rules.example.device_remove = { allow_removal: 0 }),
      'ima.dm_policy.rules["example"].device_remove.allow_removal',
    ],
    [
      'regex',
      (p) => (p.rules.example.table_load.name = '(t)\\1'),
      'ima.dm_policy.rules["example"].table_load.name',
    ],
    [
      'selector is not a regex',
      (p) => (p.rules.example.table_load.uuid = null),
      'ima.dm_policy.rules["example"].table_load.uuid',
    ],
    [
      'fraction',
      (p) => (p.rules.example.table_load.major = 253.5),
      'ima.dm_policy.rules["example"].table_load.major',
    ],
    [
      'targets count',
      (p) => p.rules.example.table_load.targets.push({}),
      'ima.dm_policy.rules["example"].table_load.targets',
    ],
    [
      'target attribute',
      (p) => (p.rules.example.table_load.targets[0].salt = { x: 1 }),
      'ima.dm_policy.rules["example"].table_load.targets[0].salt',
    ],
    [
      'target attribute name',
      (p) => (p.rules.example.table_load.targets[0]['Bad-Key'] = 1),
      'ima.dm_policy.rules["example"].table_load.targets[0]["Bad-Key"]',
    ],
    ['integer rule name', (p) => (p.rules = { '7': p.rules.example }), 'ima.dm_policy.rules["7"]'],
  ])('rejects a bad %s naming the field', (_what, mutate, field) => {
    expect(policyField(mutate)).toBe(field)
  })

  it('is validated on runtime-policy upload', () => {
    const runtime = emptyRuntimePolicy() as unknown as { ima: Record<string, unknown> }
    runtime.ima.dm_policy = { version: 1, match_on: 'name' }
    expect(() => parseRuntimePolicy(runtime)).toThrow(/ima\.dm_policy: missing required member\(s\) rules/)
  })
})

describe('dm attribute matching', () => {
  it('follows upstream: null, booleans as words, integers, full-match regexes', () => {
    for (const v of [null, false, true, 'test', 123]) expect(matchDmAttribute(v, null)).toBe(true)
    for (const e of [false, true, 'test', 123]) expect(matchDmAttribute(null, e)).toBe(false)
    for (const e of [false, true, 'test', 123]) expect(matchDmAttribute(e, e)).toBe(true)
    expect(matchDmAttribute(1, 2)).toBe(false)
    expect(matchDmAttribute('test', 'testing')).toBe(false)
    for (const v of [true, 'yes', '1', 'y', 'ON', 1]) {
      expect(matchDmAttribute(v, true)).toBe(true)
      expect(matchDmAttribute(v, false)).toBe(false)
    }
    for (const v of [false, 'no', '0', 'n', 'Off', 0]) {
      expect(matchDmAttribute(v, false)).toBe(true)
      expect(matchDmAttribute(v, true)).toBe(false)
    }
    expect(matchDmAttribute('maybe', true)).toBe(false)
    expect(matchDmAttribute('maybe', false)).toBe(false)
    const regex = 'a|b|cc+'
    for (const v of ['a', 'b', 'cc', 'ccc']) expect(matchDmAttribute(v, regex)).toBe(true)
    for (const v of ['c', 'ab', 'acc', '']) expect(matchDmAttribute(v, regex)).toBe(false)
    expect(matchDmAttribute(10, '10|20')).toBe(true)
    expect(matchDmAttribute('10', '10|20')).toBe(true)
    expect(matchDmAttribute(30, '10|20')).toBe(false)
    expect(matchDmAttribute('x\n', 'x')).toBe(false) // fullmatch: no trailing-newline leniency
    expect(matchDmAttribute(' 42 ', 42)).toBe(true) // Python int() strips spaces
    expect(matchDmAttribute('4.2', 4)).toBe(false)
    expect(matchDmAttribute('', '')).toBe(true)
    expect(matchDmAttribute('x', '')).toBe(false)
  })
})

describe('dm state machine (verdicts of upstream test_ima_dm.py)', () => {
  it('verity: load, resume, then remove/double load/target update/clear from the same state', () => {
    const validator = new DmValidator(verityPolicy)
    expect(check(validator, 'table_load_verity')).toEqual([])
    // The rule requires a resume: until then the device is not in a valid state.
    expect(dmPendingFailures(verityPolicy, validator.state()).map((e) => e.eventId)).toEqual([
      'ima.validation.dm.device_invalid_state',
      'ima.validation.dm.required_policy_not_in_use',
    ])
    expect(check(validator, 'device_resume')).toEqual([])
    expect(dmPendingFailures(verityPolicy, validator.state())).toEqual([])
    const valid = validator.state()

    expect(check(new DmValidator(verityPolicy, valid), 'device_remove')).toEqual([
      'ima.validation.dm.dm_device_remove.device_removed',
    ])
    expect(check(new DmValidator(verityPolicy, valid), 'table_load_verity')).toEqual([
      'ima.validation.dm.dm_table_load.multiple_table_loads',
    ])
    expect(check(new DmValidator(verityPolicy, valid), 'target_update_verity')).toEqual([
      'ima.validation.dm.dm_target_update.target_data_mismatch',
      'ima.validation.dm.dm_target_update.target_data_invalid',
    ])
    expect(check(new DmValidator(verityPolicy, valid), 'table_clear')).toEqual([
      'ima.validation.dm.dm_table_clear.table_cleared',
    ])
    expect(check(new DmValidator(verityPolicy, valid), 'device_resume')).toEqual([
      'ima.validation.dm.dm_device_resume.already_active',
    ])
  })

  it('events before a table load', () => {
    const validator = new DmValidator(verityPolicy)
    expect(check(validator, 'device_resume')).toEqual([
      'ima.validation.dm.dm_device_resume.resume_before_table_load',
    ])
    expect(check(validator, 'device_remove')).toEqual([
      'ima.validation.dm.dm_device_remove.remove_before_table_load',
    ])
    expect(check(validator, 'table_clear')).toEqual([
      'ima.validation.dm.dm_table_clear.clear_before_table_load',
    ])
    expect(check(validator, 'target_update_verity')).toEqual([
      'ima.validation.dm.dm_target_update.update_before_table_load',
    ])
  })

  it('linear: rename moves the device to its new name; a uuid outside valid_uuid fails', () => {
    const validator = new DmValidator(linearPolicy)
    expect(check(validator, 'linear_table_load')).toEqual([])
    expect(check(validator, 'linear_device_resume')).toEqual([])
    expect(validator.state().devices.map((d) => d.key)).toEqual(['test'])
    expect(check(validator, 'linear_rename_name')).toEqual([])
    expect(validator.state().devices.map((d) => d.key)).toEqual(['test2'])
    expect(check(validator, 'linear_rename_uuid')).toEqual([
      'ima.validation.dm.dm_device_rename.new_uuid_invalid',
    ])
    expect(validator.state().devices[0]?.valid).toBe(false)
  })

  it('table loads: no matching rule, metadata and target mismatches, bad digest', () => {
    // The verity policy selects on uuid CRYPT-VERITY-.*; the other target types do not match it.
    for (const name of [
      'table_load_linear',
      'table_load_snapshot',
      'table_load_crypt',
      'table_load_mirror',
    ]) {
      expect(check(new DmValidator(verityPolicy), name)).toEqual([
        'ima.validation.dm.dm_table_load.no_matching_policy',
      ])
    }
    const json = structuredClone(verityPolicyJson) as LoosePolicy
    json.rules.example.table_load.minor = 1
    expect(check(new DmValidator(compileDmPolicy(parseDmPolicy(json))), 'table_load_verity')).toEqual([
      'ima.validation.dm.dm_table_load.invalid_entry',
    ])
    const targets = structuredClone(verityPolicyJson) as LoosePolicy
    targets.rules.example.table_load.targets[0].salt = '0+'
    targets.rules.example.table_load.targets[0].fec_roots = 2
    const events: FailureEvent[] = []
    const { entry } = vector('table_load_verity')
    const validator = new DmValidator(compileDmPolicy(parseDmPolicy(targets)))
    validator.validate(
      { name: entry.name, digestAlg: 'sha256', digest: entry.digest, buffer: entry.buffer as Buffer },
      events,
    )
    expect(events.map((e) => [e.eventId, e.context.context])).toEqual([
      ['ima.validation.dm.dm_table_load.target_data_mismatch', 'salt'],
      [
        'ima.validation.dm.dm_table_load.target_attribute_not_found',
        'Key fec_roots not found on target verity',
      ],
      ['ima.validation.dm.dm_table_load.target_data_invalid', undefined],
    ])
    // Target failures are reported but the device is still recorded, as upstream does.
    expect(validator.state().devices).toHaveLength(1)
    const tampered: FailureEvent[] = []
    new DmValidator(verityPolicy).validate(
      { name: entry.name, digestAlg: 'sha256', digest: Buffer.alloc(32, 1), buffer: entry.buffer as Buffer },
      tampered,
    )
    expect(tampered.map((e) => e.eventId)).toEqual(['ima.validation.dm.invalid_data'])
  })

  it('the whole vector file in order under each example policy', () => {
    const run = (policy: typeof verityPolicy) => {
      const validator = new DmValidator(policy)
      return vectorNames.map((name) => [
        name,
        check(validator, name).map((id) => id.replace('ima.validation.dm.', '')),
      ])
    }
    expect(Object.fromEntries(run(verityPolicy))).toEqual({
      table_load_verity: [],
      table_load_linear: ['dm_table_load.no_matching_policy'],
      table_load_snapshot: ['dm_table_load.no_matching_policy'],
      table_load_integrity: ['dm_table_load.no_matching_policy'],
      table_load_crypt: ['dm_table_load.no_matching_policy'],
      table_load_cache: ['dm_table_load.no_matching_policy'],
      table_load_mirror: ['dm_table_load.no_matching_policy'],
      device_resume: [],
      device_remove: ['dm_device_remove.device_removed'],
      target_update_verity: ['dm_target_update.target_data_mismatch', 'dm_target_update.target_data_invalid'],
      table_clear: ['dm_table_clear.table_cleared'],
      linear_table_load: ['dm_table_load.no_matching_policy'],
      linear_device_resume: ['dm_device_resume.resume_before_table_load'],
      linear_rename_name: ['dm_device_rename.rename_before_table_load'],
      linear_rename_uuid: ['dm_device_rename.rename_before_table_load'],
    })
    // match_on name: verity's device is also called "test", so the linear load meets an existing device.
    expect(Object.fromEntries(run(linearPolicy))).toEqual({
      table_load_verity: ['dm_table_load.invalid_entry'],
      table_load_linear: ['dm_table_load.no_matching_policy'],
      table_load_snapshot: ['dm_table_load.no_matching_policy'],
      table_load_integrity: ['dm_table_load.no_matching_policy'],
      table_load_crypt: ['dm_table_load.invalid_entry'],
      table_load_cache: ['dm_table_load.no_matching_policy'],
      table_load_mirror: ['dm_table_load.no_matching_policy'],
      device_resume: ['dm_device_resume.resume_before_table_load'],
      device_remove: ['dm_device_remove.remove_before_table_load'],
      target_update_verity: ['dm_target_update.update_before_table_load'],
      table_clear: ['dm_table_clear.clear_before_table_load'],
      linear_table_load: [],
      linear_device_resume: [],
      linear_rename_name: [],
      linear_rename_uuid: ['dm_device_rename.new_uuid_invalid'],
    })
  })

  it('state round-trips through JSON and carries on; a malformed stored state is refused', () => {
    const first = new DmValidator(linearPolicy)
    expect(check(first, 'linear_table_load')).toEqual([])
    const stored: DmState = JSON.parse(JSON.stringify(first.state()))
    expect(stored).toEqual({
      devices: [
        {
          key: 'test',
          rule: 'example',
          active: false,
          valid: false,
          tableHash: 'sha256:cb0d66bf4c79cb9a85fffaa5f47729332a3a5a29fd0dc317a878c8786c5f4067',
        },
      ],
    })
    const second = new DmValidator(linearPolicy, stored)
    expect(check(second, 'linear_device_resume')).toEqual([])
    expect(stored.devices[0]?.active).toBe(false) // the stored copy is never modified
    const third = new DmValidator(linearPolicy, JSON.parse(JSON.stringify(second.state())))
    expect(check(third, 'linear_device_resume')).toEqual([
      'ima.validation.dm.dm_device_resume.already_active',
    ])
    expect(() => new DmValidator(linearPolicy, { devices: [{ key: 1 }] } as never)).toThrow(DmStateError)
    expect(() => new DmValidator(linearPolicy, {} as never)).toThrow(DmStateError)
    // A device whose rule disappeared from an updated policy is reported, not a crash.
    const renamed = structuredClone(linearPolicyJson) as LoosePolicy
    renamed.rules = { other: renamed.rules.example }
    expect(
      check(new DmValidator(compileDmPolicy(parseDmPolicy(renamed)), stored), 'linear_device_resume'),
    ).toEqual(['ima.validation.dm.dm_device_resume.no_matching_policy'])
  })
})

describe('dm_policy in incremental IMA verification', () => {
  const runtimeWith = (dmPolicy: unknown): CompiledRuntimePolicy =>
    compileRuntimePolicy(
      parseRuntimePolicy({
        ...emptyRuntimePolicy(),
        ima: { ignored_keyrings: [], log_hash_alg: 'sha1', dm_policy: dmPolicy },
      }),
    )
  const linearRuntime = runtimeWith(linearPolicyJson)
  const lines = (...names: string[]) => names.map((n) => vector(n).line)
  const pcrAfter = (list: string[]) =>
    replayImaEntries(
      list.map((l) => parseImaLine(l)),
      'sha256',
    ).toString('hex')
  const textOf = (list: string[]) => list.map((l) => `${l}\n`).join('')
  const ids = (r: ReturnType<typeof verifyImaIncrement>) =>
    r.verdict.ok ? [] : r.verdict.events.map((e) => e.eventId)

  /** One quote: `list` is what the agent sends, the quote was taken after its first `quotedAfter` lines. */
  function attest(
    state: ImaReplayState | null,
    firstEntry: number,
    list: string[],
    quotedAfter = list.length,
  ) {
    const replayedBefore = firstEntry === 0 ? [] : history.slice(0, firstEntry)
    return verifyImaIncrement({
      listText: textOf(list),
      firstEntry,
      // Stored as the verifier stores it: JSON text.
      state: state === null ? null : JSON.parse(JSON.stringify(state)),
      quotedPcr10: { hashAlg: 'sha256', value: pcrAfter([...replayedBefore, ...list.slice(0, quotedAfter)]) },
      policy: linearRuntime,
    })
  }
  const history = lines(
    'linear_table_load',
    'linear_device_resume',
    'linear_rename_name',
    'linear_rename_uuid',
  )

  it('gives the reference verdicts without a policy (upstream runs in the reference json)', () => {
    const ref = fixtureJson<{
      keylime_reference: {
        runs: {
          pcr_bank: 'sha1' | 'sha256'
          pcrval_given: string
          passed: boolean
          next_ima_ml_entry: number
        }[]
      }
    }>('ima/keylime-testsuite-dm-events.ascii.reference.json')
    expect(ref.keylime_reference.runs.length).toBeGreaterThan(0)
    for (const run of ref.keylime_reference.runs) {
      const r = verifyImaIncrement({
        listText: textOf(vectorLines),
        firstEntry: 0,
        state: null,
        quotedPcr10: { hashAlg: run.pcr_bank, value: run.pcrval_given },
        policy: null,
      })
      expect(r.verdict.ok).toBe(run.passed)
      expect(r.state.nextEntry).toBe(run.next_ima_ml_entry)
    }
  })

  it('checks the vector file against each example policy; without dm_policy dm entries need ima-buf digests', () => {
    const run = (policy: CompiledRuntimePolicy) =>
      verifyImaIncrement({
        listText: textOf(vectorLines),
        firstEntry: 0,
        state: null,
        quotedPcr10: { hashAlg: 'sha256', value: pcrAfter(vectorLines) },
        policy,
      })
    const verity = run(runtimeWith(verityPolicyJson))
    expect(ids(verity)).toEqual([
      ...Array(6).fill('ima.validation.dm.dm_table_load.no_matching_policy'),
      'ima.validation.dm.dm_device_remove.device_removed',
      'ima.validation.dm.dm_target_update.target_data_mismatch',
      'ima.validation.dm.dm_target_update.target_data_invalid',
      'ima.validation.dm.dm_table_clear.table_cleared',
      'ima.validation.dm.dm_table_load.no_matching_policy',
      'ima.validation.dm.dm_device_resume.resume_before_table_load',
      'ima.validation.dm.dm_device_rename.rename_before_table_load',
      'ima.validation.dm.dm_device_rename.rename_before_table_load',
    ])
    expect(verity.state).toEqual({ version: 1, nextEntry: 0, pcr10: {}, learnedKeyrings: {}, progress: null })
    const plain = run(compileRuntimePolicy(emptyRuntimePolicy()))
    expect(ids(plain)).toEqual(Array(15).fill('ima.validation.ima-ng.not_in_allowlist'))
  })

  it('carries device states across quotes (stored as JSON) and from a reboot starts them over', () => {
    const first = attest(null, 0, history.slice(0, 1))
    expect(ids(first)).toEqual([])
    expect(first.state.dm?.devices).toMatchObject([{ key: 'test', active: false, valid: false }])
    const second = attest(first.state, 1, history.slice(1, 3))
    expect(ids(second)).toEqual([])
    expect(second.state.nextEntry).toBe(3)
    expect(second.state.dm?.devices).toMatchObject([{ key: 'test2', active: true, valid: true }])
    const third = attest(second.state, 3, history.slice(3))
    expect(ids(third)).toEqual(['ima.validation.dm.dm_device_rename.new_uuid_invalid'])
    // Any failure resets the whole state, device states included.
    expect(third.state.dm).toBeUndefined()
    expect(third.state.nextEntry).toBe(0)
    // A list from entry 0 (reboot) ignores the stored devices: the same table load is not a second load.
    const rebooted = attest(second.state, 0, history.slice(0, 2))
    expect(ids(rebooted)).toEqual([])
    expect(rebooted.state.dm?.devices).toMatchObject([{ key: 'test', active: true }])
  })

  it('stores the device states of the matching line, so lines after it count once when sent again', () => {
    // The quote was taken after the load; the resume was logged after the quote and is sent again next time.
    const first = attest(null, 0, history.slice(0, 2), 1)
    expect(ids(first)).toEqual([])
    expect(first.state.nextEntry).toBe(1)
    expect(first.state.dm?.devices).toMatchObject([{ key: 'test', active: false }])
    const second = attest(first.state, 1, history.slice(1, 3))
    expect(ids(second)).toEqual([]) // not already_active
    expect(second.state.dm?.devices).toMatchObject([{ key: 'test2', active: true }])
    // A table load repeated in a later quote is still a second load (the device kept its name this time).
    const repeated = attest(first.state, 1, [history[0] as string])
    expect(ids(repeated)).toEqual(['ima.validation.dm.dm_table_load.multiple_table_loads'])
  })

  it('a malformed stored dm state fails the quote and resets instead of throwing', () => {
    const first = attest(null, 0, history.slice(0, 1))
    const broken = { ...first.state, dm: { devices: 'nope' } } as unknown as ImaReplayState
    const r = attest(broken, 1, history.slice(1, 2))
    // Validation goes on from an empty state, so the resume also has no table load to follow.
    expect(ids(r)).toEqual([
      'ima.validation.dm.invalid_state',
      'ima.validation.dm.dm_device_resume.resume_before_table_load',
    ])
    expect(r.state.nextEntry).toBe(0)
  })
})
