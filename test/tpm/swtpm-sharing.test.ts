import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { pcrExtend, pcrRead } from '../../src/tpm/keylime-client.ts'
import { Tpm } from '../../src/tpm/tpm.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

describe('swtpm transport shares the TPM between clients', () => {
  let sw: SwtpmInstance
  beforeAll(async () => {
    sw = await startSwtpm()
  })
  afterAll(async () => {
    await sw?.stop()
  })

  it('lets a second client run commands while the first stays open, and both see the same PCRs', async () => {
    const first = await Tpm.open(sw.transport)
    const second = await Tpm.open(sw.transport)
    try {
      const before = (await pcrRead(first, 'sha256', [15])).get(15)
      await pcrExtend(second, 15, { sha256: Buffer.alloc(32, 0xab) })
      const after = (await pcrRead(first, 'sha256', [15])).get(15)
      expect(Buffer.from(before as Uint8Array).equals(Buffer.alloc(32))).toBe(true)
      expect(Buffer.from(after as Uint8Array).equals(Buffer.alloc(32))).toBe(false)
      expect((await pcrRead(second, 'sha256', [15])).get(15)).toEqual(after)
    } finally {
      await first.close()
      await second.close()
    }
  })
})
