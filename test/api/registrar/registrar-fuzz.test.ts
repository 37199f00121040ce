import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import type { FastifyInstance } from 'fastify'
import type { Kysely } from 'kysely'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openDatabase } from '../../../src/db/database.ts'
import { type RegistrarDatabase, RegistrarRepository } from '../../../src/db/registrar-repository.ts'
import { buildRegistrarApp } from '../../../src/registrar/app.ts'
import { RegistrarService } from '../../../src/registrar/registrar-service.ts'
import { ekCertificateFor, softwareTpm } from './software-tpm.ts'

const tpm = softwareTpm()
const b64 = (u: Uint8Array) => Buffer.from(u).toString('base64')

describe('registration input fuzzing', () => {
  let dir: string
  let db: Kysely<RegistrarDatabase>
  let app: FastifyInstance
  let ekcertPem: string
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kl-reg-fuzz-'))
    db = await openDatabase<RegistrarDatabase>('sqlite', {
      dataDir: dir,
      name: 'reg_data',
      migrations: 'registrar',
    })
    app = buildRegistrarApp({
      service: new RegistrarService({ repo: new RegistrarRepository(db), malformedCertAction: 'reject' }),
    })
    const der = await ekCertificateFor(tpm.ekPublicPem)
    ekcertPem = `-----BEGIN CERTIFICATE-----\n${der.toString('base64')}\n-----END CERTIFICATE-----\n`
  })
  afterAll(async () => {
    await app.close()
    await db.destroy()
    rmSync(dir, { recursive: true, force: true })
  })

  it('mutated AK/EK structures and certificates are refused with a 4xx envelope, never a 5xx, never written', async () => {
    const mutate = (bytes: Uint8Array) =>
      fc
        .array(fc.tuple(fc.nat(bytes.length - 1), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 6,
        })
        .map((edits) => {
          const m = Uint8Array.from(bytes)
          for (const [i, v] of edits) m[i] = v
          return m
        })
    const certDer = Buffer.from(ekcertPem.split('\n')[1] ?? '', 'base64')
    const field = fc.oneof(
      fc.record({ aik_tpm: mutate(tpm.akTpm).map(b64) }),
      fc.record({ ek_tpm: mutate(tpm.ekTpm).map(b64) }),
      fc.record({ ekcert: mutate(certDer).map(b64) }),
      fc.record({ aik_tpm: fc.uint8Array({ maxLength: 600 }).map(b64) }),
      fc.record({ ek_tpm: fc.uint8Array({ maxLength: 600 }).map(b64) }),
      fc.record({ ekcert: fc.string() }),
      fc.record({ port: fc.oneof(fc.string(), fc.double(), fc.integer()) }),
      fc.record({ ip: fc.string() }),
      fc.record({ mtls_cert: fc.string() }),
      fc.record({ aik_tpm: fc.anything() }),
    )
    let accepted = 0
    await fc.assert(
      fc.asyncProperty(field, async (change) => {
        const body = { aik_tpm: b64(tpm.akTpm), ek_tpm: b64(tpm.ekTpm), ekcert: ekcertPem, ...change }
        const r = await app.inject({ method: 'POST', url: '/v2.6/agents/fuzz', payload: body })
        expect(r.statusCode).not.toBeGreaterThanOrEqual(500)
        if (r.statusCode === 200) {
          // a mutation may hit bytes that do not matter (e.g. an unused exponent field); then the row is real
          accepted++
          await db.deleteFrom('registrarpending').execute()
          return
        }
        expect(r.statusCode).toBe(400)
        expect(r.json()).toMatchObject({ code: 400, results: {} })
        const rows = await db.selectFrom('registrarpending').select('agent_id').execute()
        expect(rows).toEqual([])
      }),
      { numRuns: 300 },
    )
    expect(accepted).toBeLessThan(300)
  })
})
