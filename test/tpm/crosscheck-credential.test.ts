/**
 * Cross-check with tpm2-tools on a real swtpm: an EK/AK created by tpm2_createek/tpm2_createak, our MakeCredential
 * (Keylime 0xBADCC0DE blob == tpm2-tools' credential file) activated by tpm2_activatecredential, and our Names / PEMs
 * equal to what tpm2-tools reports.
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  CredentialError,
  decodeKeylimeCredentialBlob,
  encodeKeylimeCredentialBlob,
  makeCredential,
} from '../../src/crypto/make-credential.ts'
import { assertRestrictedSigningKey, objectName, publicKeyPemOf } from '../../src/crypto/tpm-public.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

const run = promisify(execFile)

let dir: string
let swtpm: SwtpmInstance | undefined
let tcti: string

async function tpm2(tool: string, ...args: string[]): Promise<string> {
  const { stdout } = await run(`tpm2_${tool}`, args, {
    cwd: dir,
    env: { ...process.env, TPM2TOOLS_TCTI: tcti },
  })
  return stdout
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kl-crosscheck-'))
  swtpm = await startSwtpm()
  tcti = swtpm.tcti
})

afterAll(async () => {
  await swtpm?.stop()
  if (dir) rmSync(dir, { recursive: true, force: true })
})

async function activate(prefix: string, blobB64: string): Promise<Buffer> {
  writeFileSync(join(dir, `${prefix}cred.bin`), Buffer.from(blobB64, 'base64'))
  await tpm2('flushcontext', '-t')
  await tpm2('startauthsession', '--policy-session', '-S', 'session.ctx')
  try {
    await tpm2('policysecret', '-S', 'session.ctx', '-c', 'e')
    await tpm2(
      'activatecredential',
      ...[
        '-c',
        `${prefix}ak.ctx`,
        '-C',
        `${prefix}ek.ctx`,
        '-i',
        `${prefix}cred.bin`,
        '-o',
        `${prefix}secret.out`,
      ],
      ...['-P', 'session:session.ctx'],
    )
  } finally {
    await tpm2('flushcontext', 'session.ctx')
  }
  return readFileSync(join(dir, `${prefix}secret.out`))
}

const alnum = (n: number) =>
  Array.from(
    randomBytes(n),
    (b) => 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'[b % 62],
  ).join('')

describe.each([
  ['rsa', 'rsa', 'rsassa'],
  ['ecc', 'ecc', 'ecdsa'],
] as const)('MakeCredential vs tpm2_activatecredential (%s EK)', (prefix, alg, scheme) => {
  let ekPub: Uint8Array
  let akPub: Uint8Array

  beforeAll(async () => {
    await tpm2('flushcontext', '-t')
    await tpm2('createek', '-c', `${prefix}ek.ctx`, '-G', alg, '-u', `${prefix}ek.pub`)
    await tpm2(
      'createak',
      ...['-C', `${prefix}ek.ctx`, '-c', `${prefix}ak.ctx`, '-G', alg, '-g', 'sha256', '-s', scheme],
      ...['-u', `${prefix}ak.pub`, '-n', `${prefix}ak.name`],
    )
    await tpm2('flushcontext', '-t')
    ekPub = new Uint8Array(readFileSync(join(dir, `${prefix}ek.pub`)))
    akPub = new Uint8Array(readFileSync(join(dir, `${prefix}ak.pub`)))
  })

  it('computes the same AK Name and EK PEM as tpm2-tools', async () => {
    const akName = readFileSync(join(dir, `${prefix}ak.name`))
    expect(Buffer.from(objectName(akPub)).toString('hex')).toBe(akName.toString('hex'))
    await tpm2('readpublic', '-c', `${prefix}ek.ctx`, '-f', 'pem', '-o', `${prefix}ek.pem`)
    await tpm2('flushcontext', '-t')
    expect(publicKeyPemOf(ekPub).trim()).toBe(readFileSync(join(dir, `${prefix}ek.pem`), 'utf8').trim())
    expect(assertRestrictedSigningKey(akPub).parameters.kind).toBe(alg)
    expect(() => assertRestrictedSigningKey(ekPub)).toThrow(/attestation key/)
  })

  it('produces a blob the TPM activates to the original secret', async () => {
    const challenge = alnum(32)
    const cred = makeCredential({
      ekPublic: ekPub,
      akName: objectName(akPub),
      secret: Buffer.from(challenge),
    })
    const blob = encodeKeylimeCredentialBlob(cred)
    expect(decodeKeylimeCredentialBlob(blob)).toEqual(cred)
    const recovered = await activate(prefix, blob)
    expect(recovered.toString('latin1')).toBe(challenge)
  })

  it('binds the AK Name: a credential made for another name is refused by the TPM', async () => {
    const otherName = objectName(ekPub)
    const blob = encodeKeylimeCredentialBlob(
      makeCredential({ ekPublic: ekPub, akName: otherName, secret: Buffer.from(alnum(32)) }),
    )
    await expect(activate(prefix, blob)).rejects.toThrow(/activatecredential/)
  })

  it('refuses an AK public area as the EK (not a decryption key)', () => {
    expect(() =>
      makeCredential({ ekPublic: akPub, akName: objectName(akPub), secret: new Uint8Array(32) }),
    ).toThrow(CredentialError)
  })
})
