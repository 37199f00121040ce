/**
 * The registrar as it runs in production (startRegistrar: tls_dir = generate, SQLite file, HTTP + HTTPS
 * listeners) against a real TPM (swtpm): EK + EK certificate + AK from the TPM, registration over HTTP with
 * RegistrarClient, TPM2_ActivateCredential on the returned blob, activation, then admin routes over mTLS.
 */
import { createHmac } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { PeerError } from '../../src/api/client.ts'
import { RegistrarClient } from '../../src/api/registrar/client.ts'
import { createLogger } from '../../src/common/log.ts'
import { loadRegistrarConfig } from '../../src/config/registrar.ts'
import { decodeKeylimeCredentialBlob } from '../../src/crypto/make-credential.ts'
import { type RunningRegistrar, startRegistrar } from '../../src/registrar/server.ts'
import { Tpm } from '../../src/tpm/index.ts'
import {
  activateCredential,
  createAk,
  createEk,
  flushContext,
  readEkCertificate,
} from '../../src/tpm/keylime-client.ts'
import { makeTestPki } from '../api/registrar/tls-material.ts'
import { type SwtpmInstance, startSwtpm } from '../helpers/swtpm.ts'

describe('registrar end to end with swtpm', () => {
  let swtpm: SwtpmInstance
  let tpm: Tpm
  let registrar: RunningRegistrar
  let workDir: string
  beforeAll(async () => {
    workDir = mkdtempSync(join(tmpdir(), 'kl-reg-e2e-'))
    swtpm = await startSwtpm()
    tpm = await Tpm.open(swtpm.transport)
    const env = { KEYLIME_DIR: workDir }
    const { config } = loadRegistrarConfig({
      configDirs: [],
      env,
      flags: { tls_dir: 'generate', port: 0, tls_port: 0, database_url: 'sqlite' },
    })
    registrar = await startRegistrar(config, createLogger('registrar-e2e', 'silent'), { env })
  }, 60000)
  afterAll(async () => {
    await registrar?.close()
    await tpm?.close()
    await swtpm?.stop()
    rmSync(workDir, { recursive: true, force: true })
  })

  it('registers, activates with TPM2_ActivateCredential, and serves the identity to an mTLS admin', async () => {
    const ek = await createEk(tpm, 'rsa')
    const ekCert = await readEkCertificate(tpm, 'rsa')
    expect(ekCert).not.toBeNull()
    const ak = await createAk(tpm, ek.handle, { hashAlg: 'sha256', signAlg: 'rsassa' })
    const uuid = 'd432fbb3-d2f1-4a97-9ef7-75bd81c00000'
    const agentSide = new RegistrarClient({ baseUrl: `http://127.0.0.1:${registrar.httpPort}` })
    try {
      expect((await agentSide.getVersion()).current_version).toBe('2.6')
      const { blob } = await agentSide.register(uuid, {
        aik_tpm: Buffer.from(ak.publicArea).toString('base64'),
        ek_tpm: Buffer.from(ek.publicArea).toString('base64'),
        ekcert: Buffer.from(ekCert as Uint8Array).toString('base64'),
        mtls_cert: 'disabled',
        ip: '127.0.0.1',
        port: 9002,
      })
      const { credentialBlob, encryptedSecret } = decodeKeylimeCredentialBlob(blob)
      const secret = await activateCredential(tpm, {
        akHandle: ak.handle,
        ekHandle: ek.handle,
        credentialBlob,
        encryptedSecret,
      })
      expect(Buffer.from(secret).toString('ascii')).toMatch(/^[A-Za-z0-9]{32}$/)
      const challengeB64 = Buffer.from(secret).toString('base64')
      const tag = createHmac('sha384', Buffer.from(challengeB64, 'ascii')).update(uuid).digest('hex')
      await agentSide.activate(uuid, tag)
      // admin routes are not served over plain HTTP
      const overHttp = await agentSide.list().catch((e: unknown) => e)
      expect(overHttp).toBeInstanceOf(PeerError)
      expect((overHttp as PeerError).status).toBe(400)
    } finally {
      await agentSide.close()
      await flushContext(tpm, ak.handle)
      await flushContext(tpm, ek.handle)
    }

    const caDir = join(workDir, 'reg_ca')
    const read = (f: string) => readFileSync(join(caDir, f), 'utf8')
    const tenant = new RegistrarClient({
      baseUrl: `https://127.0.0.1:${registrar.tlsPort}`,
      tls: { ca: read('cacert.crt'), cert: read('client-cert.crt'), key: read('client-private.pem') },
    })
    try {
      expect(await tenant.list()).toEqual([uuid])
      const shown = await tenant.show(uuid)
      expect(shown).toMatchObject({
        agent_id: uuid,
        ip: '127.0.0.1',
        port: 9002,
        regcount: 1,
        mtls_cert: 'disabled',
      })
      expect(Buffer.from(shown.ekcert ?? '', 'base64')).toEqual(Buffer.from(ekCert as Uint8Array))
      expect(shown.aik_tpm).toBe(Buffer.from(ak.publicArea).toString('base64'))
    } finally {
      await tenant.close()
    }

    const foreign = makeTestPki()
    const outsider = new RegistrarClient({
      baseUrl: `https://127.0.0.1:${registrar.tlsPort}`,
      tls: { ca: read('cacert.crt'), cert: foreign.clientCert, key: foreign.clientKey },
    })
    const anonymous = new RegistrarClient({
      baseUrl: `https://127.0.0.1:${registrar.tlsPort}`,
      tls: { ca: read('cacert.crt') },
    })
    try {
      expect(await outsider.delete(uuid).catch((e: PeerError) => e.status)).toBe(403)
      expect(await anonymous.show(uuid).catch((e: PeerError) => e.status)).toBe(401)
    } finally {
      await outsider.close()
      await anonymous.close()
    }
  }, 60000)

  it('registers and activates an ECC P-256 EK with an ECDSA AK (KDFe seed)', async () => {
    const ek = await createEk(tpm, 'ecc')
    const ak = await createAk(tpm, ek.handle, { hashAlg: 'sha256', signAlg: 'ecdsa' })
    const uuid = 'ecc-agent'
    const agentSide = new RegistrarClient({
      baseUrl: `http://127.0.0.1:${registrar.httpPort}`,
      apiVersion: '2.2',
    })
    try {
      const { blob } = await agentSide.register(uuid, {
        aik_tpm: Buffer.from(ak.publicArea).toString('base64'),
        ek_tpm: Buffer.from(ek.publicArea).toString('base64'),
      })
      const secret = await activateCredential(tpm, {
        akHandle: ak.handle,
        ekHandle: ek.handle,
        ...decodeKeylimeCredentialBlob(blob),
      })
      const tag = createHmac('sha384', Buffer.from(Buffer.from(secret).toString('base64'), 'ascii'))
        .update(uuid)
        .digest('hex')
      await agentSide.activate(uuid, tag)
      // the same blob cannot be redeemed by a different AK under the same EK
      const other = await createAk(tpm, ek.handle, { hashAlg: 'sha256', signAlg: 'ecdsa' })
      await expect(
        activateCredential(tpm, {
          akHandle: other.handle,
          ekHandle: ek.handle,
          ...decodeKeylimeCredentialBlob(blob),
        }),
      ).rejects.toThrow()
      await flushContext(tpm, other.handle)
    } finally {
      await agentSide.close()
      await flushContext(tpm, ak.handle)
      await flushContext(tpm, ek.handle)
    }
  }, 60000)
})
