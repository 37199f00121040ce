import { describe, expect, it } from 'vitest'
import { eventDetail, parseEventLog } from '../../../src/evidence/mb/index.ts'
import { fixture } from '../fixture.ts'

const _hex = (s: string) => Buffer.from(s, 'hex')

describe('event detail', () => {
  it('decodes the events of a real log into the tpm2_eventlog shape', () => {
    const log = parseEventLog(fixture('eventlogs/keylime-tests-ovmf-secureboot.bin'))
    const byType = (t: string) =>
      log.events.filter((e) => e.typeName === t).map((e) => eventDetail(log, e).Event)
    expect(byType('EV_EFI_VARIABLE_DRIVER_CONFIG')[0]).toMatchObject({
      VariableName: '8be4df61-93ca-11d2-aa0d-00e098032b8c',
      UnicodeName: 'SecureBoot',
      VariableData: { Enabled: 'Yes' },
    })
    expect(byType('EV_EFI_VARIABLE_BOOT')[0]).toMatchObject({
      UnicodeName: 'BootOrder',
      VariableData: ['Boot0002', 'Boot0001', 'Boot0000'],
    })
    expect(byType('EV_EFI_BOOT_SERVICES_APPLICATION')[0]).toMatchObject({
      DevicePath: expect.stringMatching(
        /^PciRoot\(0x0\)\/Pci\(0x1,0x3\)\/Pci\(0x0,0x0\)\/HD\(1,GPT,.*\/File\(\\EFI\\fedora\\shimx64\.efi\)$/,
      ),
    })
    const gpt = byType('EV_EFI_GPT_EVENT')[0] as {
      Header: { Signature: string }
      Partitions: { PartitionName: string }[]
    }
    expect(gpt.Header.Signature).toBe('EFI PART')
    expect(gpt.Partitions[0]?.PartitionName).toBe('EFI System Partition')
    const pk = byType('EV_EFI_VARIABLE_DRIVER_CONFIG')[1] as {
      VariableData: { SignatureType: string; Keys: unknown[] }[]
    }
    expect(pk.VariableData[0]?.SignatureType).toBe('a5c059a1-94e4-4aa7-87b5-ab155c2bf072')
    expect(pk.VariableData[0]?.Keys).toHaveLength(1)
    expect(byType('EV_EFI_PLATFORM_FIRMWARE_BLOB')[0]).toEqual({ BlobBase: 8519680n, BlobLength: 917504n })
  })

  it('decodes handoff tables and ASCII labels (ThinkPad log)', () => {
    const log = parseEventLog(fixture('eventlogs/keylime-thinkpad-n40et41w.bin'))
    const get = (t: string) =>
      log.events.filter((e) => e.typeName === t).map((e) => eventDetail(log, e).Event)
    expect(get('EV_EFI_HANDOFF_TABLES')[0]).toEqual({
      NumberOfTables: 1n,
      Tables: [{ VendorGuid: 'f2fd1544-9794-4a2c-992e-e5bbcf20e394', VendorTable: 0x8fcb0000n }],
    })
    expect(get('EV_S_CRTM_CONTENTS')[0]).toBe('Boot Guard Measured S-CRTM')
  })
})
