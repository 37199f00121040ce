import { afterAll, describe, expect, it } from 'vitest'
import {
  Certify,
  decodeTpmsAttest,
  GetRandom,
  keylime,
  Shutdown,
  Startup,
  SwtpmTransport,
  Tpm,
  TpmAlg,
  type TpmResponseError,
  TpmSt,
  TpmSu,
  TpmTransportError,
} from '../../src/tpm/index.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

const instances: SwtpmInstance[] = []
afterAll(async () => {
  for (const sw of instances) await sw.stop()
})

describe('swtpm over Unix sockets with the control channel', () => {
  it('powers on via CMD_INIT, starts up, runs commands, certifies an AK and shuts down', async () => {
    const sw = await startSwtpm({ socket: 'unix', startup: false })
    instances.push(sw)
    expect(sw.transport).toMatch(/^swtpm:path=.*swtpm\.sock,ctrl=.*swtpm\.ctrl$/)
    const transport = new SwtpmTransport(
      { path: `${sw.stateDir}/swtpm.sock` },
      { path: `${sw.stateDir}/swtpm.ctrl` },
    )
    const tpm = new Tpm(transport)
    // Powered off: the TPM refuses commands until _TPM_Init and Startup.
    await transport.powerOn()
    const early = await tpm.run(GetRandom, { bytesRequested: 4 }).catch((e: unknown) => e)
    expect((early as TpmResponseError).rcName).toBe('TPM_RC_INITIALIZE')
    await tpm.run(Startup, { startupType: TpmSu.Clear })
    expect((await tpm.run(GetRandom, { bytesRequested: 16 })).randomBytes).toHaveLength(16)

    const ek = await keylime.createEk(tpm, 'rsa')
    const ak = await keylime.createAk(tpm, ek.handle, { hashAlg: 'sha256', signAlg: 'ecdsa' })
    // TPM2_Certify: the AK certifies itself (object = signer = AK), qualifying data echoed in extraData.
    const c = await tpm.run(Certify, {
      objectHandle: ak.handle,
      signHandle: ak.handle,
      qualifyingData: Uint8Array.of(9, 8, 7),
      inScheme: { scheme: TpmAlg.Ecdsa, hashAlg: TpmAlg.Sha256 },
    })
    const attest = decodeTpmsAttest(c.attest.raw)
    expect(attest.type).toBe(TpmSt.AttestCertify)
    expect(attest.extraData).toEqual(Uint8Array.of(9, 8, 7))
    expect(attest.attested.kind === 'certify' && attest.attested.name).toEqual(ak.name)

    await keylime.flushContext(tpm, ak.handle)
    await keylime.flushContext(tpm, ek.handle)
    await tpm.run(Shutdown, { shutdownType: TpmSu.Clear })
    await tpm.close()
    await expect(tpm.run(GetRandom, { bytesRequested: 1 })).rejects.toThrow(/closed/)
  })

  it('a refused connection is a TpmTransportError', async () => {
    const tpm = await Tpm.open('swtpm:path=/nonexistent/keylime.sock')
    await expect(tpm.run(GetRandom, { bytesRequested: 1 })).rejects.toBeInstanceOf(TpmTransportError)
    const dev = await Tpm.open('device:/nonexistent/tpmrm0')
    await expect(dev.run(GetRandom, { bytesRequested: 1 })).rejects.toThrow(/cannot open TPM device/)
  })

  it('reconnects after swtpm drops the connection (TCP)', async () => {
    const sw = await startSwtpm()
    instances.push(sw)
    const tpm = await Tpm.open(sw.transport)
    await tpm.run(GetRandom, { bytesRequested: 2 })
    await tpm.transport.close()
    expect((await tpm.run(GetRandom, { bytesRequested: 3 })).randomBytes).toHaveLength(3)
    await tpm.close()
  })
})
