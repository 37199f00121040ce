import { execFile } from 'node:child_process'
import { createHash, createPublicKey, verify, X509Certificate } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  ContextLoad,
  ContextSave,
  decodeTpm2bPublic,
  decodeTpmsAttest,
  decodeTpmtSignature,
  EK_POLICY_SHA256,
  EvictControl,
  GetRandom,
  keylime,
  NvRead,
  PasswordSession,
  PolicyGetDigest,
  PolicyRestart,
  PolicySecret,
  Quote,
  ReadPublic,
  startHmacSession,
  startPolicySession,
  Tpm,
  TpmAlg,
  TpmResponseError,
  TpmRh,
} from '../../src/tpm/index.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

const exec = promisify(execFile)
let sw: SwtpmInstance
let tpm: Tpm
let work: string

async function tools(cmd: string, args: string[]): Promise<string> {
  // swtpm serves one client at a time: release our connection while tpm2-tools talks to it.
  await tpm.close()
  try {
    const { stdout } = await exec(cmd, ['-T', sw.tcti, ...args], { timeout: 60_000 })
    return stdout
  } finally {
    tpm = await Tpm.open(sw.transport)
  }
}

function name(tpm2bPublic: Uint8Array): Buffer {
  return Buffer.concat([
    Buffer.from('000b', 'hex'),
    createHash('sha256').update(tpm2bPublic.subarray(2)).digest(),
  ])
}

function akKey(publicArea: Uint8Array) {
  const pub = decodeTpm2bPublic(publicArea)
  if (pub.unique.kind === 'rsa') {
    return createPublicKey({
      key: { kty: 'RSA', n: Buffer.from(pub.unique.n).toString('base64url'), e: 'AQAB' },
      format: 'jwk',
    })
  }
  if (pub.unique.kind === 'ecc') {
    return createPublicKey({
      key: {
        kty: 'EC',
        crv: 'P-256',
        x: Buffer.from(pub.unique.x).toString('base64url'),
        y: Buffer.from(pub.unique.y).toString('base64url'),
      },
      format: 'jwk',
    })
  }
  throw new Error('unexpected key type')
}

function verifyQuoteSignature(publicArea: Uint8Array, attest: Uint8Array, signature: Uint8Array): boolean {
  const sig = decodeTpmtSignature(signature)
  const key = akKey(publicArea)
  if ('sig' in sig) return verify('sha256', attest, key, sig.sig)
  if ('r' in sig)
    return verify('sha256', attest, { key, dsaEncoding: 'ieee-p1363' }, Buffer.concat([sig.r, sig.s]))
  return false
}

beforeAll(async () => {
  sw = await startSwtpm()
  tpm = await Tpm.open(sw.transport)
  work = await mkdtemp(join(tmpdir(), 'keylime-tpm-test-'))
})

afterAll(async () => {
  await tpm?.close()
  await sw?.stop()
  if (work) await rm(work, { recursive: true, force: true })
})

describe('keylime client against swtpm', () => {
  it('reports TPM information', async () => {
    const info = await keylime.getTpmInfo(tpm)
    expect(info.manufacturer).toBe('IBM')
    expect(info.pcrBanks.map((b) => b.hashAlg)).toEqual(['sha1', 'sha256'])
    expect(info.algorithms).toContain('rsa')
    expect(info.algorithms).toContain('ecc')
    expect(info.nvBufferMax).toBeGreaterThan(0)
  })

  it.each(['rsa', 'ecc'] as const)(
    '%s EK has the same public area and Name as tpm2_createek',
    async (alg) => {
      const ek = await keylime.createEk(tpm, alg)
      expect(Buffer.from(ek.name)).toEqual(name(ek.publicArea))
      const pub = decodeTpm2bPublic(ek.publicArea)
      expect(pub.authPolicy).toEqual(EK_POLICY_SHA256)
      await keylime.flushContext(tpm, ek.handle)
      const out = join(work, `ek-${alg}.pub`)
      await tools('tpm2_createek', ['-G', alg, '-c', join(work, `ek-${alg}.ctx`), '-u', out])
      const theirs = await readFile(out)
      expect(Buffer.from(ek.publicArea)).toEqual(theirs)
      expect(name(theirs)).toEqual(Buffer.from(ek.name))
      await tools('tpm2_flushcontext', ['-t'])
    },
  )

  it('reads the RSA EK certificate exactly as tpm2_nvread does; the missing ECC index gives null', async () => {
    const cert = await keylime.readEkCertificate(tpm, 'rsa')
    expect(cert).not.toBeNull()
    expect(cert?.[0]).toBe(0x30)
    const out = join(work, 'ekcert.der')
    await tools('tpm2_nvread', ['0x01c00002', '-C', '0x01c00002', '-o', out])
    const theirs = await readFile(out)
    expect(Buffer.from(cert as Uint8Array)).toEqual(theirs.subarray(0, cert?.length))
    const ek = await keylime.createEk(tpm, 'rsa')
    // The certificate certifies exactly the key of the EK we create.
    const certKey = new X509Certificate(Buffer.from(cert as Uint8Array)).publicKey.export({ format: 'jwk' })
    const pub = decodeTpm2bPublic(ek.publicArea)
    expect(pub.unique.kind === 'rsa' && Buffer.from(pub.unique.n).toString('base64url')).toBe(certKey.n)
    await keylime.flushContext(tpm, ek.handle)
    expect(await keylime.readEkCertificate(tpm, 'ecc')).toBeNull()
  })

  it.each([
    ['rsa', 'rsassa'],
    ['ecc', 'ecdsa'],
  ] as const)(
    '%s EK + %s AK: create, reload, quote with verifying signature and PCR values',
    async (encAlg, signAlg) => {
      const ek = await keylime.createEk(tpm, encAlg)
      const ak = await keylime.createAk(tpm, ek.handle, { hashAlg: 'sha256', signAlg })
      expect(Buffer.from(ak.name)).toEqual(name(ak.publicArea))
      await keylime.flushContext(tpm, ak.handle)
      const loaded = await keylime.loadAk(tpm, ek.handle, ak.publicArea, ak.privateArea)
      expect(loaded.name).toEqual(ak.name)
      const nonce = new TextEncoder().encode('0123456789abcdefghij')
      const q = await keylime.quote(tpm, loaded.handle, {
        nonce,
        hashAlg: 'sha256',
        pcrs: [0, 1, 2, 10, 16],
        signAlg,
      })
      const attest = decodeTpmsAttest(q.attest)
      expect(attest.extraData).toEqual(nonce)
      expect(attest.qualifiedSigner.length).toBe(34)
      expect([...q.pcrValues.keys()]).toEqual([0, 1, 2, 10, 16])
      expect(verifyQuoteSignature(ak.publicArea, q.attest, q.signature)).toBe(true)
      const tampered = q.attest.slice()
      tampered[tampered.length - 1] = (tampered.at(-1) ?? 0) ^ 1
      expect(verifyQuoteSignature(ak.publicArea, tampered, q.signature)).toBe(false)
      await keylime.flushContext(tpm, loaded.handle)
      await keylime.flushContext(tpm, ek.handle)
    },
  )

  it('activates a credential made by tpm2_makecredential', async () => {
    const ek = await keylime.createEk(tpm, 'rsa')
    const ak = await keylime.createAk(tpm, ek.handle, { hashAlg: 'sha256', signAlg: 'rsassa' })
    const secret = Buffer.from('a 32-byte challenge for the AK!!')
    await writeFile(join(work, 'ek.pub'), ek.publicArea)
    await writeFile(join(work, 'secret'), secret)
    await exec('tpm2_makecredential', [
      '-T',
      'none',
      '-u',
      join(work, 'ek.pub'),
      '-s',
      join(work, 'secret'),
      '-n',
      Buffer.from(ak.name).toString('hex'),
      '-o',
      join(work, 'cred.out'),
    ])
    const file = await readFile(join(work, 'cred.out'))
    expect(file.readUInt32BE(0)).toBe(0xbadcc0de)
    const blobLen = file.readUInt16BE(8)
    const credentialBlob = file.subarray(8, 10 + blobLen)
    const encryptedSecret = file.subarray(10 + blobLen)
    const got = await keylime.activateCredential(tpm, {
      akHandle: ak.handle,
      ekHandle: ek.handle,
      credentialBlob,
      encryptedSecret,
    })
    expect(Buffer.from(got)).toEqual(secret)
    // A credential bound to another Name fails inside the TPM.
    const countsBefore = await keylime.getHandleCounts(tpm)
    const corrupted = Buffer.from(credentialBlob)
    corrupted[5] = (corrupted[5] ?? 0) ^ 0xff
    await expect(
      keylime.activateCredential(tpm, {
        akHandle: ak.handle,
        ekHandle: ek.handle,
        credentialBlob: corrupted,
        encryptedSecret,
      }),
    ).rejects.toBeInstanceOf(TpmResponseError)
    // The failed command's EK policy session was flushed, not leaked.
    expect(await keylime.getHandleCounts(tpm)).toEqual(countsBefore)
    await keylime.flushContext(tpm, ak.handle)
    await keylime.flushContext(tpm, ek.handle)
  })

  it('reads more than 8 PCRs, extends and resets', async () => {
    const all = await keylime.pcrRead(
      tpm,
      'sha256',
      Array.from({ length: 24 }, (_, i) => i),
    )
    expect(all.size).toBe(24)
    const digest = createHash('sha256').update('measurement').digest()
    const sha1 = createHash('sha1').update('measurement').digest()
    const before = (await keylime.pcrRead(tpm, 'sha256', [16])).get(16) as Uint8Array
    await keylime.pcrExtend(tpm, 16, { sha256: digest, sha1 })
    const after = (await keylime.pcrRead(tpm, 'sha256', [16])).get(16)
    expect(Buffer.from(after as Uint8Array)).toEqual(
      createHash('sha256').update(before).update(digest).digest(),
    )
    await keylime.pcrReset(tpm, 16)
    expect((await keylime.pcrRead(tpm, 'sha256', [16])).get(16)).toEqual(new Uint8Array(32))
    await expect(keylime.pcrReset(tpm, 0)).rejects.toThrow(/TPM2_PCR_Reset failed: TPM_RC_LOCALITY/)
  })

  it('decodes response codes with the failing handle', async () => {
    const err = await tpm.run(ReadPublic, { objectHandle: 0x80ffffff }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(TpmResponseError)
    expect((err as TpmResponseError).kind).toBe('handle')
    expect((err as TpmResponseError).index).toBe(1)
    expect((err as TpmResponseError).message).toMatch(/TPM2_ReadPublic failed: TPM_RC_VALUE \(handle 1\)/)
    const bad = await keylime
      .createEk(tpm, 'rsa', { endorsementPassword: 'hex:00ff' })
      .catch((e: unknown) => e)
    expect((bad as TpmResponseError).rcName).toBe('TPM_RC_BAD_AUTH')
    expect((bad as TpmResponseError).kind).toBe('session')
  })

  it('context save/load, evict control and HMAC sessions', async () => {
    const ek = await keylime.createEk(tpm, 'ecc')
    const { context } = await tpm.run(ContextSave, { saveHandle: ek.handle })
    await keylime.flushContext(tpm, ek.handle)
    const { loadedHandle } = await tpm.run(ContextLoad, { context })
    expect((await keylime.readPublic(tpm, loadedHandle)).name).toEqual(ek.name)
    const persistent = 0x81010099
    await tpm.run(EvictControl, {
      auth: TpmRh.Owner,
      objectHandle: loadedHandle,
      persistentHandle: persistent,
    })
    expect((await keylime.readPublic(tpm, persistent)).name).toEqual(ek.name)
    await tpm.run(EvictControl, { auth: TpmRh.Owner, objectHandle: persistent, persistentHandle: persistent })
    await keylime.flushContext(tpm, loadedHandle)
    // An HMAC session authorises the AK's quote; the engine checks the TPM's response HMAC.
    const ek2 = await keylime.createEk(tpm, 'rsa')
    const ak = await keylime.createAk(tpm, ek2.handle, { hashAlg: 'sha256', signAlg: 'rsassa' })
    const sessionsBefore = (await keylime.getHandleCounts(tpm)).sessions
    const hmac = await startHmacSession(tpm)
    expect((await keylime.getHandleCounts(tpm)).sessions).toBe(sessionsBefore + 1)
    const q = await tpm.run(
      Quote,
      {
        signHandle: ak.handle,
        qualifyingData: Uint8Array.of(1, 2, 3),
        inScheme: { scheme: TpmAlg.RsaSsa, hashAlg: TpmAlg.Sha256 },
        pcrSelect: [],
      },
      [hmac],
    )
    expect(q.attest.extraData).toEqual(Uint8Array.of(1, 2, 3))
    // The same session authorises NV_Read of the EK certificate index: cpHash covers the NV index's Name.
    const head = await tpm.run(NvRead, { authHandle: 0x01c00002, nvIndex: 0x01c00002, size: 16, offset: 0 }, [
      hmac,
    ])
    expect(Buffer.from(head.data)).toEqual(
      Buffer.from((await keylime.readEkCertificate(tpm, 'rsa'))?.subarray(0, 16) ?? []),
    )
    await keylime.flushContext(tpm, hmac.handle)
    // The EK policy computed by the TPM equals the template's policy digest.
    const policy = await startPolicySession(tpm)
    await tpm.run(
      PolicySecret,
      {
        authHandle: TpmRh.Endorsement,
        policySession: policy.handle,
        nonceTpm: new Uint8Array(0),
        cpHashA: new Uint8Array(0),
        policyRef: new Uint8Array(0),
        expiration: 0,
      },
      [new PasswordSession()],
    )
    expect((await tpm.run(PolicyGetDigest, { policySession: policy.handle })).policyDigest).toEqual(
      EK_POLICY_SHA256,
    )
    await tpm.run(PolicyRestart, { sessionHandle: policy.handle })
    expect((await tpm.run(PolicyGetDigest, { policySession: policy.handle })).policyDigest).toEqual(
      new Uint8Array(32),
    )
    await keylime.flushContext(tpm, policy.handle)
    await keylime.flushContext(tpm, ak.handle)
    await keylime.flushContext(tpm, ek2.handle)
  })

  it('quote re-reads when a PCR changes between TPM2_Quote and PCR_Read', async () => {
    const ek = await keylime.createEk(tpm, 'ecc')
    const ak = await keylime.createAk(tpm, ek.handle, { hashAlg: 'sha256', signAlg: 'ecdsa' })
    const before = tpm.commandCount
    // Queued right behind the first TPM2_Quote, so the first PCR_Read already sees the extended PCR 16.
    const quoting = keylime.quote(tpm, ak.handle, {
      nonce: Uint8Array.of(1),
      hashAlg: 'sha256',
      pcrs: [16],
      signAlg: 'ecdsa',
    })
    const extending = keylime.pcrExtend(tpm, 16, { sha256: new Uint8Array(32).fill(1) })
    const [q] = await Promise.all([quoting, extending])
    expect(tpm.commandCount - before).toBe(5) // quote, extend, read (mismatch), quote, read
    const attest = decodeTpmsAttest(q.attest)
    const digest = createHash('sha256')
      .update(q.pcrValues.get(16) as Uint8Array)
      .digest()
    expect(attest.attested.kind === 'quote' && Buffer.from(attest.attested.pcrDigest)).toEqual(digest)
    await keylime.pcrReset(tpm, 16)
    await keylime.flushContext(tpm, ak.handle)
    await keylime.flushContext(tpm, ek.handle)
  })

  it('serialises concurrent calls', async () => {
    const results = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        i % 2
          ? tpm.run(GetRandom, { bytesRequested: 8 })
          : keylime.pcrRead(tpm, 'sha1', [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
      ),
    )
    expect(results).toHaveLength(40)
    for (const [i, r] of results.entries()) {
      if (i % 2) expect((r as { randomBytes: Uint8Array }).randomBytes.length).toBe(8)
      else expect((r as Map<number, Uint8Array>).size).toBe(10)
    }
  })

  it('2,000 quotes in a row leave loaded object and session counts unchanged', async () => {
    const ek = await keylime.createEk(tpm, 'ecc')
    const ak = await keylime.createAk(tpm, ek.handle, { hashAlg: 'sha256', signAlg: 'ecdsa' })
    const before = await keylime.getHandleCounts(tpm)
    const started = performance.now()
    for (let i = 0; i < 2000; i++) {
      const nonce = new TextEncoder().encode(`nonce-${i}`)
      const q = await keylime.quote(tpm, ak.handle, {
        nonce,
        hashAlg: 'sha256',
        pcrs: [10, 16],
        signAlg: 'ecdsa',
      })
      if (i % 500 === 0) expect(decodeTpmsAttest(q.attest).extraData).toEqual(nonce)
    }
    const elapsed = performance.now() - started
    expect(await keylime.getHandleCounts(tpm)).toEqual(before)
    console.log(
      `2000 quotes + PCR reads: ${Math.round(elapsed)} ms (${Math.round(2000 / (elapsed / 1000))}/s)`,
    )
    await keylime.flushContext(tpm, ak.handle)
    await keylime.flushContext(tpm, ek.handle)
    expect(await keylime.getHandleCounts(tpm)).toEqual({
      transient: before.transient - 2,
      sessions: before.sessions,
    })
  }, 90_000)
})
