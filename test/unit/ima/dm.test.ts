/** Device-mapper IMA events in kernel forms written here, and attribute matching (the upstream vectors and example policies run in `npm run test:corpus`). */
import { describe, expect, it } from 'vitest'
import { DmEventParseError, matchDmAttribute, parseDmEvent } from '../../../src/evidence/ima/index.ts'

function eventText(text: string): Buffer {
  return Buffer.from(text, 'latin1')
}

const _parseErrorOf = (fn: () => unknown): DmEventParseError => {
  try {
    fn()
  } catch (err) {
    if (err instanceof DmEventParseError) return err
    throw err
  }
  throw new Error('expected a DmEventParseError')
}

describe('dm event buffers', () => {
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
