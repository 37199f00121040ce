import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openDatabase } from '../../src/db/database.ts'
import {
  type RegistrarDatabase,
  RegistrarRepository,
  RegistrationConflictError,
  type RegistrationWrite,
} from '../../src/db/registrar-repository.ts'
import { SHARED_SERVERS } from '../helpers/db-servers.ts'

const write: RegistrationWrite = {
  key: 'a2V5',
  aik_tpm: 'AAA=',
  ek_tpm: 'BBB=',
  ekcert: null,
  iak_tpm: null,
  idevid_tpm: null,
  iak_cert: null,
  idevid_cert: null,
  mtls_cert: null,
  ip: null,
  port: null,
}

// Two registrar processes sharing one database server: no in-process lock helps; the primary key and the regcount
// guard on the activated record decide.
for (const server of SHARED_SERVERS)
  describe(`two registrars on one ${server.name} database`, () => {
    let a: RegistrarRepository
    let b: RegistrarRepository
    const dbs: { destroy(): Promise<void> }[] = []
    let drop = async () => {}
    beforeAll(async () => {
      const target = await server.open('regrace')
      drop = target.drop
      const opts = { pgSchema: target.pgSchema, migrations: 'registrar' } as const
      const dbA = await openDatabase<RegistrarDatabase>(target.url, opts)
      const dbB = await openDatabase<RegistrarDatabase>(target.url, opts)
      dbs.push(dbA, dbB)
      a = new RegistrarRepository(dbA)
      b = new RegistrarRepository(dbB)
    })
    afterAll(async () => {
      for (const db of dbs) await db.destroy()
      await drop()
    })

    it('racing activations of one agent: one record wins, the other is a 403-mapped conflict, a mismatch or gone, never a 500', async () => {
      const T0 = Date.now()
      const reg = { now: T0, lifetimeMs: 60_000, maxPendingPerAgent: 8 }
      let conflicts = 0
      // the conflict path needs the loser to read before the winner commits, which only some interleavings give:
      // at least 40 rounds, then more until one has (a loaded machine makes it rarer, never impossible)
      for (let round = 0; round < 40 || (conflicts === 0 && round < 1000); round++) {
        const id = `race-${round}`
        // two TPM identities registered for one fresh id: whichever activates first owns it
        await a.register(id, { ...write, key: 'a2V5QQ==', ek_tpm: 'QUFB' }, () => {}, reg)
        await b.register(id, { ...write, key: 'a2V5Qg==', ek_tpm: 'QkJC' }, () => {}, reg)
        const activation = (key: string, onCheck: () => void = () => {}) => ({
          now: T0 + 10,
          lifetimeMs: 60_000,
          matches: (k: string) => k === key,
          check: (active: { ek_tpm: string | null } | undefined, pending: { ek_tpm: string | null }) => {
            onCheck()
            if (active && active.ek_tpm !== pending.ek_tpm) throw new Error('identity change')
          },
        })
        // B starts its activation while A's transaction is between its reads and its insert
        let second: Promise<unknown> = Promise.resolve()
        const first = a.activate(
          id,
          activation('a2V5QQ==', () => {
            second = b.activate(id, activation('a2V5Qg=='))
            second.catch(() => {})
          }),
        )
        const results = await Promise.allSettled([
          first,
          (async () => {
            await first.catch(() => {})
            return second
          })(),
        ])
        const activated = results.filter((r) => r.status === 'fulfilled' && r.value === 'activated')
        expect(activated).toHaveLength(1)
        for (const r of results) {
          if (r.status === 'rejected') {
            expect(r.reason).toBeInstanceOf(RegistrationConflictError)
            expect((r.reason as RegistrationConflictError).statusCode).toBe(403)
            conflicts++
          } else if (r.value !== 'activated') {
            // the loser finds its challenge answered wrongly, or already dropped by the winner's activation
            expect(['mismatch', 'not_found']).toContain(r.value)
          }
        }
        const row = await a.find(id)
        expect(row?.regcount).toBe(1)
        expect(row?.ek_tpm).toBe(results[0]?.status === 'fulfilled' ? 'QUFB' : 'QkJC')
      }
      expect(conflicts).toBeGreaterThan(0)
    })

    it('a re-activation racing another process on an activated record never overwrites it silently', async () => {
      const T0 = Date.now()
      const reg = { now: T0, lifetimeMs: 60_000, maxPendingPerAgent: 8 }
      const id = 'race-active'
      const act = (key: string, onCheck: () => void = () => {}) => ({
        now: T0 + 10,
        lifetimeMs: 60_000,
        matches: (k: string) => k === key,
        check: onCheck,
      })
      await a.register(id, { ...write, key: 'MA==' }, () => {}, reg)
      expect(await a.activate(id, act('MA=='))).toBe('activated')
      await a.register(id, { ...write, key: 'MQ==', port: 1 }, () => {}, reg)
      await b.register(id, { ...write, key: 'Mg==', port: 2 }, () => {}, reg)
      let second: Promise<unknown> = Promise.resolve()
      const first = a.activate(
        id,
        act('MQ==', () => {
          second = b.activate(id, act('Mg=='))
          second.catch(() => {})
        }),
      )
      const results = await Promise.allSettled([
        first,
        (async () => {
          await first.catch(() => {})
          return second
        })(),
      ])
      const row = await a.find(id)
      const winners = results.filter((r) => r.status === 'fulfilled' && r.value === 'activated')
      expect(winners).toHaveLength(1)
      expect(row?.regcount).toBe(2)
      for (const r of results) {
        if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(RegistrationConflictError)
      }
    })
  })
