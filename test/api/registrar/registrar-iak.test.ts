import { createHash, generateKeyPairSync, sign } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import type { Kysely } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseCertificateTolerant } from '../../../src/crypto/ek-trust.ts'
import { objectName } from '../../../src/crypto/tpm-public.ts'
import { openDatabase } from '../../../src/db/database.ts'
import { type RegistrarDatabase, RegistrarRepository } from '../../../src/db/registrar-repository.ts'
import { buildRegistrarApp } from '../../../src/registrar/app.ts'
import { RegistrarService } from '../../../src/registrar/registrar-service.ts'
import {
  akTemplate,
  encodeTpm2bPublic,
  encodeTpmsAttest,
  encodeTpmtSignature,
  TPM_GENERATED_VALUE,
  TpmAlg,
  TpmSt,
} from '../../../src/tpm/index.ts'
import { deviceCa, softwareTpm } from './software-tpm.ts'

const b64 = (u: Uint8Array) => Buffer.from(u).toString('base64')
const b64url = (s: string | undefined) => Buffer.from(s ?? '', 'base64url')
const tpm = softwareTpm()
const iakKeys = generateKeyPairSync('rsa', { modulusLength: 2048 })
const idevidKeys = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
const iakTpm = encodeTpm2bPublic({
  ...akTemplate('rsassa'),
  unique: { kind: 'rsa', n: b64url(iakKeys.publicKey.export({ format: 'jwk' }).n) },
})
const idJwk = idevidKeys.publicKey.export({ format: 'jwk' })
const idevidTpm = encodeTpm2bPublic({
  ...akTemplate('ecdsa'),
  unique: { kind: 'ecc', x: b64url(idJwk.x), y: b64url(idJwk.y) },
})

function certify(agentId: string, certifiedTpm: Uint8Array, signer = iakKeys.privateKey) {
  const attest = encodeTpmsAttest({
    magic: TPM_GENERATED_VALUE,
    type: TpmSt.AttestCertify,
    qualifiedSigner: objectName(iakTpm),
    extraData: createHash('sha256').update(agentId).digest(),
    clockInfo: { clock: 1000n, resetCount: 1, restartCount: 0, safe: true },
    firmwareVersion: 0n,
    attested: { kind: 'certify', name: objectName(certifiedTpm), qualifiedName: objectName(certifiedTpm) },
  })
  const sig = encodeTpmtSignature({
    sigAlg: TpmAlg.RsaSsa,
    hash: TpmAlg.Sha256,
    sig: sign('sha256', attest, signer),
  })
  return { iak_attest: b64(attest), iak_sign: b64(sig) }
}

describe('IAK/IDevID registration', () => {
  let dir: string
  let db: Kysely<RegistrarDatabase>
  let app: FastifyInstance
  let certs: { iak_cert: string; idevid_cert: string }
  let foreignIakCert: string
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kl-reg-iak-'))
    db = await openDatabase<RegistrarDatabase>('sqlite', {
      dataDir: dir,
      name: 'reg_data',
      migrations: 'registrar',
    })
    const ca = await deviceCa()
    const other = await deviceCa()
    const pem = (k: typeof iakKeys.publicKey) => k.export({ type: 'spki', format: 'pem' }).toString()
    certs = {
      iak_cert: b64(await ca.issue(pem(iakKeys.publicKey), 'IAK')),
      idevid_cert: b64(await ca.issue(pem(idevidKeys.publicKey), 'IDevID')),
    }
    foreignIakCert = b64(await other.issue(pem(iakKeys.publicKey), 'IAK'))
    const store = { dir: '(memory)', certificates: [parseCertificateTolerant(ca.caDer)], warnings: [] }
    app = buildRegistrarApp({
      service: new RegistrarService({
        repo: new RegistrarRepository(db),
        certStore: store,
        tpmIdentity: 'iak_idevid',
      }),
    })
  })
  afterAll(async () => {
    await app.close()
    await db.destroy()
    rmSync(dir, { recursive: true, force: true })
  })

  const body = (agentId: string, over: Record<string, unknown> = {}) => ({
    aik_tpm: b64(tpm.akTpm),
    ek_tpm: b64(tpm.ekTpm),
    iak_tpm: b64(iakTpm),
    idevid_tpm: b64(idevidTpm),
    ...certs,
    ...certify(agentId, tpm.akTpm),
    ...over,
  })

  it('accepts a certified AK with trusted IAK/IDevID certificates and stores them', async () => {
    const r = await app.inject({ method: 'POST', url: '/v2.6/agents/iak-agent', payload: body('iak-agent') })
    expect(r.statusCode, r.body).toBe(200)
    const row = await db
      .selectFrom('registrarpending')
      .selectAll()
      .where('agent_id', '=', 'iak-agent')
      .executeTakeFirstOrThrow()
    expect(row.iak_tpm).toBe(b64(iakTpm))
    expect(row.idevid_cert).toBe(certs.idevid_cert)
  })

  it('refuses: no IAK under tpm_identity = iak_idevid, foreign CA, wrong agent id, other AK, bad signature, missing field', async () => {
    const otherAk = softwareTpm().akTpm
    const cases: [string, Record<string, unknown>][] = [
      ['no IAK', { iak_tpm: null, idevid_tpm: null, iak_cert: null, idevid_cert: null }],
      ['foreign CA', { iak_cert: foreignIakCert }],
      ['certify bound to another id', certify('someone-else', tpm.akTpm)],
      ['certify of another AK', certify('iak-bad', otherAk)],
      [
        'signed by another key',
        certify('iak-bad', tpm.akTpm, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey),
      ],
      ['missing idevid_cert', { idevid_cert: null }],
      ['IAK cert for the IDevID key', { iak_cert: certs.idevid_cert }],
      ['garbage attest', { iak_attest: 'AAAA' }],
    ]
    for (const [label, over] of cases) {
      const r = await app.inject({
        method: 'POST',
        url: '/v2.6/agents/iak-bad',
        payload: body('iak-bad', over),
      })
      expect(r.statusCode, label).toBe(400)
      expect(r.json().status, label).toMatch(/^Could not register agent with invalid data/)
    }
    expect(
      await db.selectFrom('registrarpending').select('agent_id').where('agent_id', '=', 'iak-bad').execute(),
    ).toEqual([])
  })
})
