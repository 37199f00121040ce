import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  ActivateCredential,
  akTemplate,
  authValue,
  Certify,
  ContextLoad,
  ContextSave,
  Create,
  CreatePrimary,
  DeviceTransport,
  decodeResponseCode,
  GetCapability,
  GetRandom,
  Load,
  NvRead,
  NvReadPublic,
  openTransport,
  PcrRead,
  PolicySecret,
  Quote,
  ReadPublic,
  StartAuthSession,
  type SwtpmTransport,
  Tpm,
  type TpmCommand,
  TpmFormatError,
  TpmRc,
  TpmResponseError,
  type TpmTransport,
  TpmUsageError,
} from '../../../src/tpm/index.ts'

describe('response codes', () => {
  it('decodes format-one codes with handle, session and parameter indices', () => {
    expect(decodeResponseCode(0x184)).toMatchObject({ name: 'TPM_RC_VALUE', kind: 'handle', index: 1 })
    expect(decodeResponseCode(0x9a2)).toMatchObject({ name: 'TPM_RC_BAD_AUTH', kind: 'session', index: 1 })
    expect(decodeResponseCode(0x2c4)).toMatchObject({ name: 'TPM_RC_VALUE', kind: 'parameter', index: 2 })
    expect(decodeResponseCode(0x08b)).toMatchObject({ name: 'TPM_RC_HANDLE', kind: 'none', index: 0 })
  })
  it('decodes format-zero errors and warnings', () => {
    expect(decodeResponseCode(0x100)).toMatchObject({ name: 'TPM_RC_INITIALIZE', warning: false })
    expect(decodeResponseCode(0x922)).toMatchObject({ name: 'TPM_RC_RETRY', warning: true })
    expect(decodeResponseCode(0x902)).toMatchObject({ name: 'TPM_RC_OBJECT_MEMORY', warning: true })
    expect(decodeResponseCode(0x910)).toMatchObject({ name: 'TPM_RC_REFERENCE_H0' })
    expect(decodeResponseCode(0x000b0101).layer).toBe(0x0b)
    expect(decodeResponseCode(0x1ff).name).toMatch(/UNKNOWN/)
  })
  it('TpmResponseError exposes a readable message and a base code', () => {
    const e = new TpmResponseError('TPM2_Quote', 0x9a2)
    expect(e.message).toBe(
      'TPM2_Quote failed: TPM_RC_BAD_AUTH (session 1): authorization failure without DA implications [rc 0x9a2]',
    )
    expect(e.baseRc).toBe(TpmRc.BadAuth)
    expect(e.code).toBe('ERR_TPM_RESPONSE')
  })
  it('never throws for any 32-bit code', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 0xffffffff }),
        (rc) => typeof decodeResponseCode(rc).name === 'string',
      ),
    )
  })
})

describe('transport specs', () => {
  it('parses device paths and swtpm TCP/Unix specs', () => {
    expect(openTransport('/dev/tpmrm0')).toBeInstanceOf(DeviceTransport)
    expect((openTransport('device:/dev/tpm0') as DeviceTransport).path).toBe('/dev/tpm0')
    const tcp = openTransport('swtpm:host=10.0.0.1,port=2321') as SwtpmTransport
    expect(tcp.data).toEqual({ host: '10.0.0.1', port: 2321 })
    expect(tcp.control).toEqual({ host: '10.0.0.1', port: 2322 })
    const unix = openTransport('swtpm:path=/run/s.sock,ctrl=/run/s.ctrl') as SwtpmTransport
    expect(unix.data).toEqual({ path: '/run/s.sock' })
    expect(unix.control).toEqual({ path: '/run/s.ctrl' })
  })
  it('rejects unknown or malformed specs', () => {
    expect(() => openTransport('mssim:port=1')).toThrow(TpmUsageError)
    expect(() => openTransport('swtpm:port=99999')).toThrow(/bad port/)
    expect(() => openTransport('swtpm:host')).toThrow(/malformed/)
  })
  it('passwords accept the hex: prefix', () => {
    expect(authValue('hex:00ff')).toEqual(Uint8Array.of(0, 0xff))
    expect(authValue('abc')).toEqual(new TextEncoder().encode('abc'))
    expect(() => authValue('hex:0')).toThrow(TpmUsageError)
  })
})

/** A transport that answers every command with canned bytes, to drive the engine's response parsing. */
class CannedTransport implements TpmTransport {
  readonly description = 'canned'
  sent: Uint8Array[] = []
  constructor(private readonly reply: (cmd: Uint8Array) => Uint8Array) {}
  async send(cmd: Uint8Array): Promise<Uint8Array> {
    this.sent.push(cmd)
    return this.reply(cmd)
  }
  async close(): Promise<void> {}
}

function response(tag: number, rc: number, body: Uint8Array): Uint8Array {
  const b = Buffer.alloc(10 + body.length)
  b.writeUInt16BE(tag, 0)
  b.writeUInt32BE(b.length, 2)
  b.writeUInt32BE(rc, 6)
  b.set(body, 10)
  return new Uint8Array(b)
}

describe('command engine', () => {
  it('marshals a command with a password session exactly', async () => {
    const pcrRead = new Tpm(new CannedTransport(() => response(0x8001, 0x101, new Uint8Array(0))))
    await expect(pcrRead.run(PcrRead, { pcrSelectionIn: [] })).rejects.toThrow(/TPM_RC_FAILURE/)
    // NV_Read: 2 handles, 1 password session, then size and offset.
    const nv = new CannedTransport(() =>
      response(0x8002, 0, Uint8Array.of(0, 0, 0, 4, 0, 2, 0xaa, 0xbb, 0, 0, 1, 0, 0)),
    )
    const got = await new Tpm(nv).run(NvRead, {
      authHandle: 0x01c00002,
      nvIndex: 0x01c00002,
      size: 2,
      offset: 0,
    })
    expect(got.data).toEqual(Uint8Array.of(0xaa, 0xbb))
    expect(Buffer.from(nv.sent[0] as Uint8Array).toString('hex')).toBe(
      '8002' +
        '00000023' +
        '0000014e' +
        '01c00002' +
        '01c00002' +
        '00000009' +
        '40000009' +
        '0000' +
        '00' +
        '0000' +
        '0002' +
        '0000',
    )
  })

  it('runs queued commands one at a time in call order', async () => {
    let inFlight = 0
    let maxInFlight = 0
    const order: number[] = []
    const t: TpmTransport = {
      description: 'slow',
      async send(cmd) {
        inFlight++
        maxInFlight = Math.max(maxInFlight, inFlight)
        order.push(cmd[cmd.length - 1] ?? -1)
        await new Promise((r) => setTimeout(r, 1))
        inFlight--
        return response(0x8001, 0, Uint8Array.of(0, 1, 7))
      },
      async close() {},
    }
    const tpm = new Tpm(t)
    await Promise.all(Array.from({ length: 20 }, (_, i) => tpm.run(GetRandom, { bytesRequested: i })))
    expect(maxInFlight).toBe(1)
    expect(order).toEqual(Array.from({ length: 20 }, (_, i) => i))
  })

  it('retries TPM_RC_RETRY warnings and then succeeds', async () => {
    let calls = 0
    const tpm = new Tpm(
      new CannedTransport(() =>
        ++calls < 3
          ? response(0x8001, 0x922, new Uint8Array(0))
          : response(0x8001, 0, Uint8Array.of(0, 1, 9)),
      ),
    )
    expect((await tpm.run(GetRandom, { bytesRequested: 1 })).randomBytes).toEqual(Uint8Array.of(9))
    expect(calls).toBe(3)
  })

  it('fuzz: malformed responses to every command give only TpmFormatError', async () => {
    const commands: [TpmCommand<never, unknown>, unknown, number][] = [
      [GetCapability as never, { capability: 5, property: 0, propertyCount: 1 }, 0x8001],
      [PcrRead as never, { pcrSelectionIn: [] }, 0x8001],
      [ReadPublic as never, { objectHandle: 0x80000000 }, 0x8001],
      [
        CreatePrimary as never,
        {
          primaryHandle: 0x4000000b,
          inSensitive: { userAuth: new Uint8Array(0), data: new Uint8Array(0) },
          inPublic: akTemplate('rsassa'),
          outsideInfo: new Uint8Array(0),
          creationPcr: [],
        },
        0x8002,
      ],
      [Create as never, undefined, 0x8002],
      [
        Load as never,
        { parentHandle: 0x80000000, inPrivate: new Uint8Array(2), inPublic: new Uint8Array(2) },
        0x8002,
      ],
      [
        Quote as never,
        {
          signHandle: 0x80000000,
          qualifyingData: new Uint8Array(0),
          inScheme: { scheme: 0x10, hashAlg: 0x10 },
          pcrSelect: [],
        },
        0x8002,
      ],
      [
        Certify as never,
        {
          objectHandle: 1,
          signHandle: 2,
          qualifyingData: new Uint8Array(0),
          inScheme: { scheme: 0x10, hashAlg: 0x10 },
        },
        0x8002,
      ],
      [
        ActivateCredential as never,
        { activateHandle: 1, keyHandle: 2, credentialBlob: new Uint8Array(2), secret: new Uint8Array(2) },
        0x8002,
      ],
      [NvReadPublic as never, { nvIndex: 0x01c00002 }, 0x8001],
      [
        StartAuthSession as never,
        {
          tpmKey: 0x40000007,
          bind: 0x40000007,
          nonceCaller: new Uint8Array(16),
          encryptedSalt: new Uint8Array(0),
          sessionType: 1,
          symmetric: { algorithm: 0x10, keyBits: 0, mode: 0x10 },
          authHash: 0x0b,
        },
        0x8001,
      ],
      [
        PolicySecret as never,
        {
          authHandle: 0x4000000b,
          policySession: 0x03000000,
          nonceTpm: new Uint8Array(0),
          cpHashA: new Uint8Array(0),
          policyRef: new Uint8Array(0),
          expiration: 0,
        },
        0x8002,
      ],
      [ContextSave as never, { saveHandle: 0x80000000 }, 0x8001],
      [
        ContextLoad as never,
        {
          context: {
            sequence: 1n,
            savedHandle: 0x80000000,
            hierarchy: 0x40000001,
            contextBlob: new Uint8Array(4),
          },
        },
        0x8001,
      ],
    ]
    for (const [command, params, tag] of commands) {
      if (params === undefined) continue
      await fc.assert(
        fc.asyncProperty(fc.uint8Array({ maxLength: 300 }), async (body) => {
          const tpm = new Tpm(new CannedTransport(() => response(tag, 0, body)))
          try {
            await tpm.run(command, params as never)
          } catch (err) {
            if (!(err instanceof TpmFormatError)) throw err
          }
        }),
        { numRuns: 150 },
      )
    }
  })
})
