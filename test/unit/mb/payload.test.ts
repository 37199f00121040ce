import { describe, expect, it } from 'vitest'
import { guidAt, swappedGuid } from '../../../src/evidence/mb/guid.ts'
import { devicePathToText } from '../../../src/evidence/mb/index.ts'

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
