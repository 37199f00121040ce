/**
 * Migration sets, one per service database (upstream keeps `registrar` and `cloud_verifier` apart). Names sort by
 * date; append new migrations to the end of the service's list. Each set has its own kysely bookkeeping table so the
 * registrar and the verifier may share one PostgreSQL database.
 */
import type { Migration } from 'kysely'
import * as registrar0 from './2026112600_registrar.ts'
import * as verifier0 from './2026112601_verifier.ts'
import * as registrar1 from './2026120600_registrar_pending.ts'
import * as registrar2 from './2026120601_registrar_ek_ca_chain.ts'
import * as verifier1 from './2026120601_verifier_events_leases.ts'
import * as verifierPush from './2026120710_verifier_push_tables.ts'
import * as verifier2 from './2026120720_verifier_fleet_policies.ts'
import * as verifier3 from './2026120720_verifier_fleet_state.ts'
import * as verifierPushHeld from './2026120730_verifier_push_held_evaluations.ts'

export type MigrationSet = Readonly<Record<string, Migration>>

export const REGISTRAR_MIGRATIONS: MigrationSet = {
  '2026112600_registrar': registrar0,
  '2026120600_registrar_pending': registrar1,
  '2026120601_registrar_ek_ca_chain': registrar2,
}

export const VERIFIER_MIGRATIONS: MigrationSet = {
  '2026112601_verifier': verifier0,
  '2026120601_verifier_events_leases': verifier1,
  '2026120710_verifier_push_tables': verifierPush,
  '2026120720_verifier_fleet_policies': verifier2,
  '2026120720_verifier_fleet_state': verifier3,
  '2026120730_verifier_push_held_evaluations': verifierPushHeld,
}

export const MIGRATION_SETS = {
  registrar: REGISTRAR_MIGRATIONS,
  verifier: VERIFIER_MIGRATIONS,
} as const
export type ServiceName = keyof typeof MIGRATION_SETS
