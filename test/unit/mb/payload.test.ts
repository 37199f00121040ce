import { describe, expect, it } from 'vitest'
import { guidAt, swappedGuid } from '../../../src/evidence/mb/guid.ts'
import { devicePathToText, eventDetail, parseEventLog } from '../../../src/evidence/mb/index.ts'
import { fixture } from '../../helpers/fixture.ts'

const hex = (s: string) => Buffer.from(s, 'hex')

describe('GUIDs', () => {
  it('prints the first three fields little-endian', () => {
    expect(guidAt(hex('61dfe48bca93d211aa0d00e098032b8c'), 0)).toBe('8be4df61-93ca-11d2-aa0d-00e098032b8c')
  })
  it('converts between the two spellings', () => {
    expect(swappedGuid('8be4df61-93ca-11d2-aa0d-00e098032b8c')).toBe('61dfe48b-ca93-d211-aa0d-00e098032b8c')
    expect(swappedGuid(swappedGuid('d719b2cb-3d3a-4596-a3bc-dad00e67656f'))).toBe(
      'd719b2cb-3d3a-4596-a3bc-dad00e67656f',
    )
  })
})

describe('device paths', () => {
  it('renders PCI, hard drive and file nodes like libefivar', () => {
    // from tpm2-tools-bootorder.bin (a Boot#### option)
    const path = hex(
      '02010c00d041030a00000000010106000003030208000100000004012a000f0000000028000000000000005003000000000040f7a66eef256942838d1a6f21ebf27f0202040434005c004500460049005c0042004f004f0054005c0042004f004f0054005800360034002e0045004600490000007fff0400',
    )
    expect(devicePathToText(path)).toBe(
      'PciRoot(0x0)/Pci(0x3,0x0)/SCSI(1,0)/HD(15,GPT,6ea6f740-25ef-4269-838d-1a6f21ebf27f,0x2800,0x35000)/File(\\EFI\\BOOT\\BOOTX64.EFI)',
    )
  })
  it('renders firmware-volume files and never throws on garbage', () => {
    const fv = hex('04071400c9bdb87cebf8344faaea3ee4af6516a10406140021aa2c4614760345836e8ab6f46623317fff0400')
    expect(devicePathToText(fv)).toBe(
      'FvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)',
    )
    expect(devicePathToText(hex('0401ff00'))).toBe('<malformed>')
    expect(devicePathToText(hex('0a0b0800deadbeef7fff0400'))).toBe('Path(10,11,deadbeef)')
  })
})

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
