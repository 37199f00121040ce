/**
 * Builds databases in the shape upstream Keylime 7.x leaves them, at any of its Alembic revisions, for the takeover
 * tests: the tables of keylime-config-and-cli.md §6 as each revision of upstream's migration chain has them (column
 * types, nullability, defaults, named constraints, indexes), on SQLite, PostgreSQL or MySQL/MariaDB, and rows
 * written the way upstream's services write them (JSON-pickled columns, booleans, base64 DER certificates from 7.12
 * on, IMA state in four columns). Checked against databases upstream's own migrations produce (see docs/upgrade-from-upstream.md).
 */
import { type Kysely, MysqlAdapter, PostgresAdapter, sql } from 'kysely'
import { atLeast, UPSTREAM_REVISIONS } from '../../src/db/takeover/revisions.ts'

// biome-ignore lint/suspicious/noExplicitAny: upstream's tables are not ours
type AnyDb = Kysely<any>

export const UPSTREAM_REVISION_IDS = UPSTREAM_REVISIONS.map((r) => r.id)

function isPg(db: AnyDb): boolean {
  return db.getExecutor().adapter instanceof PostgresAdapter
}

function isMysql(db: AnyDb): boolean {
  return db.getExecutor().adapter instanceof MysqlAdapter
}

/** A column name MySQL reserves (`index`, `key`), quoted for the dialect. */
const quoted = (name: string, my: boolean) => (my ? `\`${name}\`` : `"${name}"`)

const blob = (pg: boolean) => (pg ? 'BYTEA' : 'BLOB')

/** `CREATE TABLE` statements of the verifier database at `rev` (upstream's `cloud_verifier`). */
export function verifierDdl(rev: string, pg: boolean, my = false): string[] {
  const at = (r: string) => atLeast(rev, r)
  // MySQL: SQLAlchemy's Integer primary keys are AUTO_INCREMENT, and upstream's ima_policy is Text(429400000),
  // which MySQL makes LONGTEXT
  const serial = pg ? 'SERIAL' : my ? 'INTEGER AUTO_INCREMENT' : 'INTEGER'
  const index = quoted('index', my)
  // SQLAlchemy's Text of upstream's models (no length) is LONGTEXT on MySQL where upstream's migrations say so
  const longText = my ? 'LONGTEXT' : 'TEXT'
  const out = [
    `CREATE TABLE allowlists (
      id ${serial} NOT NULL, name VARCHAR(255) NOT NULL, tpm_policy TEXT, ima_policy ${my ? 'LONGTEXT' : 'TEXT'},
      checksum VARCHAR(128), generator INTEGER,
      PRIMARY KEY (id), CONSTRAINT uniq_allowlists0name UNIQUE (name))`,
    'CREATE INDEX ix_allowlists_checksum ON allowlists (checksum)',
  ]
  if (at('32902c0a8d90'))
    out.push(`CREATE TABLE mbpolicies (
      id ${serial} NOT NULL, name VARCHAR(255) NOT NULL, mb_policy ${longText},
      PRIMARY KEY (id), CONSTRAINT uniq_mbpolicies_name UNIQUE (name))`)
  const cols = [
    'agent_id VARCHAR(80) NOT NULL',
    'v VARCHAR(45)',
    'ip VARCHAR(255)',
    'port INTEGER',
    'operational_state INTEGER',
    'public_key VARCHAR(500)',
    'tpm_policy TEXT',
    `meta_data ${at('57b24ee21dfa') ? longText : 'VARCHAR(200)'}`,
    'revocation_key VARCHAR(2800)',
    'tpm_version INTEGER',
    'accept_tpm_hash_algs TEXT',
    'accept_tpm_encryption_algs TEXT',
    'accept_tpm_signing_algs TEXT',
    'hash_alg VARCHAR(10)',
    'enc_alg VARCHAR(10)',
    'sign_alg VARCHAR(10)',
    'ima_sign_verification_keys VARCHAR(1000)',
    ...(at('f4196d13fe45') ? [] : [`mb_refstate ${longText}`]),
    'verifier_id VARCHAR(100)',
    `verifier_ip ${at('160f932fde5b') ? 'VARCHAR(255)' : 'VARCHAR(20)'}`,
    'verifier_port INTEGER',
    'boottime INTEGER',
    'ima_pcrs TEXT',
    `pcr10 ${blob(pg)}`,
    'next_ima_ml_entry INTEGER',
    'severity_level INTEGER',
    'last_event_id VARCHAR(100)',
    'learned_ima_keyrings TEXT',
    `supported_version VARCHAR(50)${at('870c218abd9a') ? '' : ' NOT NULL'}`,
    'ak_tpm VARCHAR(500)',
    'mtls_cert VARCHAR(2084)',
    'attestation_count INTEGER',
    'ima_policy_id INTEGER',
    'tpm_clockinfo TEXT',
    'last_received_quote INTEGER',
    'last_successful_attestation INTEGER',
    ...(at('f4196d13fe45') ? ['mb_policy_id INTEGER'] : []),
    ...(at('870c218abd9a') ? [`accept_attestations BOOLEAN DEFAULT ${pg ? 'true' : '1'} NOT NULL`] : []),
    ...(at('517a2d6b5cd3') ? ['consecutive_attestation_failures INTEGER'] : []),
    'PRIMARY KEY (agent_id)',
    ...(at('f4196d13fe45')
      ? ['CONSTRAINT fk_verifiermain_mbpolicies FOREIGN KEY (mb_policy_id) REFERENCES mbpolicies (id)']
      : []),
    'CONSTRAINT fk_verifiermain_allowlists FOREIGN KEY (ima_policy_id) REFERENCES allowlists (id)',
  ]
  out.push(`CREATE TABLE verifiermain (${cols.join(', ')})`)
  if (at('870c218abd9a')) {
    out.push(`CREATE TABLE attestations (
      agent_id VARCHAR(80) NOT NULL, ${index} INTEGER NOT NULL,
      stage VARCHAR(25) DEFAULT 'awaiting_evidence' NOT NULL, evaluation VARCHAR(10) DEFAULT 'pending' NOT NULL,
      failure_reason VARCHAR(25), system_info__boot_time VARCHAR(32) NOT NULL,
      capabilities_received_at VARCHAR(32) NOT NULL, challenges_expire_at VARCHAR(32),
      evidence_received_at VARCHAR(32), verification_completed_at VARCHAR(32),
      PRIMARY KEY (agent_id, ${index}), FOREIGN KEY (agent_id) REFERENCES verifiermain (agent_id))`)
    out.push(`CREATE TABLE evidence_items (
      id ${serial} NOT NULL, agent_id VARCHAR(${at('a59cc9366774') ? 80 : 20}) NOT NULL,
      attestation_index INTEGER NOT NULL, evidence_class VARCHAR(20) NOT NULL, evidence_type VARCHAR(30) NOT NULL,
      capabilities__component_version VARCHAR(20), capabilities__evidence_version VARCHAR(20),
      capabilities__signature_schemes TEXT, capabilities__hash_algorithms TEXT,
      capabilities__available_subjects TEXT, capabilities__certification_keys TEXT,
      capabilities__entry_count INTEGER, capabilities__supports_partial_access BOOLEAN,
      capabilities__appendable BOOLEAN, capabilities__formats TEXT, capabilities__meta TEXT,
      chosen_parameters__challenge ${blob(pg)}, chosen_parameters__signature_scheme VARCHAR(20),
      chosen_parameters__hash_algorithm VARCHAR(20), chosen_parameters__selected_subjects TEXT,
      chosen_parameters__certification_key TEXT, chosen_parameters__starting_offset INTEGER,
      chosen_parameters__entry_count INTEGER, chosen_parameters__format VARCHAR(255), chosen_parameters__meta TEXT,
      data__subject_data TEXT, data__message ${blob(pg)}, data__signature ${blob(pg)}, data__entry_count INTEGER,
      data__entries TEXT, data__meta TEXT, results__certified_entry_count INTEGER, results__meta TEXT,
      PRIMARY KEY (id),
      FOREIGN KEY (agent_id, attestation_index) REFERENCES attestations (agent_id, ${index}))`)
  }
  // LargeBinary(128): TINYBLOB on MySQL
  const sessionTail = `agent_id VARCHAR(80), active BOOLEAN, nonce ${my ? 'BLOB(128)' : blob(pg)}, hash_algorithm VARCHAR(15),
      signing_scheme VARCHAR(15), ak_attest ${blob(pg)}, ak_sign ${blob(pg)}, nonce_created_at VARCHAR(32),
      nonce_expires_at VARCHAR(32), pop_received_at VARCHAR(32), token_expires_at VARCHAR(32)`
  if (at('5a8b2c3d4e6f'))
    out.push(`CREATE TABLE sessions (session_id VARCHAR(36) NOT NULL, token_hash VARCHAR(64) NOT NULL,
      token_salt VARCHAR(32) NOT NULL, ${sessionTail}, PRIMARY KEY (session_id))`)
  else if (at('460d7adda633'))
    out.push(`CREATE TABLE sessions (token VARCHAR(64) NOT NULL, ${sessionTail}, PRIMARY KEY (token))`)
  if (at('460d7adda633')) out.push('CREATE INDEX ix_sessions_agent_id ON sessions (agent_id)')
  return out
}

/** `CREATE TABLE` statement of the registrar database at `rev`. */
export function registrarDdl(rev: string, my = false): string[] {
  const at = (r: string) => atLeast(rev, r)
  const typed = at('330024be7bef')
  const cols = [
    'agent_id VARCHAR(80) NOT NULL',
    `${my ? quoted('key', my) : 'key'} VARCHAR(45)`,
    `ekcert ${typed ? 'TEXT' : 'VARCHAR(2048)'}`,
    `virtual ${typed ? 'BOOLEAN' : 'INTEGER'}`,
    `active ${typed ? 'BOOLEAN' : 'INTEGER'}`,
    'provider_keys TEXT',
    'regcount INTEGER',
    'aik_tpm VARCHAR(500)',
    'ek_tpm VARCHAR(500)',
    'ip VARCHAR(15)',
    'port INTEGER',
    `mtls_cert ${typed ? 'TEXT' : 'VARCHAR(2048)'}`,
    ...(at('21b5cb88fcdb') ? ['iak_tpm VARCHAR(500)', 'idevid_tpm VARCHAR(500)'] : []),
    ...(at('00766b7fd0c5') ? ['iak_cert VARCHAR(2048)', 'idevid_cert VARCHAR(2048)'] : []),
    'PRIMARY KEY (agent_id)',
  ]
  return [`CREATE TABLE registrarmain (${cols.join(', ')})`]
}

async function createVersionTable(db: AnyDb, name: string, rev: string): Promise<void> {
  const table = `alembic_version_${name}`
  await sql
    .raw(
      `CREATE TABLE ${table} (version_num VARCHAR(32) NOT NULL, CONSTRAINT ${table}_pkc PRIMARY KEY (version_num))`,
    )
    .execute(db)
  await sql`insert into ${sql.table(table)} (version_num) values (${rev})`.execute(db)
}

/** An agent row as upstream's verifier keeps it; columns the revision lacks are left out. */
export interface UpstreamVerifierAgent {
  agent_id: string
  ip: string
  port: number
  v: string
  ak_tpm: string
  /** The tenant's JSON text; stored JSON-pickled (a second time), as upstream does. */
  tpm_policy: string
  accept_tpm_hash_algs?: string[]
  accept_tpm_encryption_algs?: string[]
  accept_tpm_signing_algs?: string[]
  mtls_cert?: string | null
  operational_state?: number
  verifier_id?: string
  supported_version?: string
  attestation_count?: number
  ima_policy_id?: number | null
  /** A measured-boot policy: in `mb_refstate` before 7.10, in mbpolicies (named after the agent) after. */
  mb_refstate?: string | null
  /** Upstream's incremental IMA state. */
  ima?: { boottime: number; pcr10: Buffer; nextEntry: number; learnedKeyrings?: Record<string, unknown> }
  hash_alg?: string
  tpm_clockinfo?: { clock: number; resetCount: number; restartCount: number; safe: number }
  severity_level?: number | null
  last_event_id?: string | null
}

export interface UpstreamPolicy {
  name: string
  /** Stored as uploaded (a DSSE envelope stays one). */
  ima_policy: string
  checksum: string
  generator: number
}

export interface UpstreamRegistrarAgent {
  agent_id: string
  key: string
  aik_tpm: string
  ek_tpm: string
  /** base64 DER */
  ekcert: string | null
  /** base64 DER of the agent's mTLS certificate; stored as PEM before 7.12 (as those registrars did). */
  mtlsCertDer: string | null
  ip: string
  port: number
  active: boolean
  regcount: number
  iak?: { iak_tpm: string; idevid_tpm: string; iak_cert: string; idevid_cert: string }
}

function pemOf(b64Der: string): string {
  return `-----BEGIN CERTIFICATE-----\n${(b64Der.match(/.{1,64}/g) ?? []).join('\n')}\n-----END CERTIFICATE-----\n`
}

/** Creates upstream's verifier tables at `rev` and fills them as upstream's services would have. */
export async function buildUpstreamVerifierDb(
  db: AnyDb,
  rev: string,
  data: { agents: UpstreamVerifierAgent[]; policies: UpstreamPolicy[]; pushAttestations?: boolean },
): Promise<void> {
  const pg = isPg(db)
  for (const stmt of verifierDdl(rev, pg, isMysql(db))) await sql.raw(stmt).execute(db)
  await createVersionTable(db, 'cloud_verifier', rev)
  // ids come from the database's own sequence, as with upstream's inserts (1, 2, … in a new database)
  for (const p of data.policies)
    await db
      .insertInto('allowlists')
      .values({ ...p, tpm_policy: null })
      .execute()
  const movedMb = atLeast(rev, 'f4196d13fe45')
  const bool = (b: boolean) => (pg ? b : b ? 1 : 0)
  for (const a of data.agents) {
    let mbPolicyId: number | null = null
    if (movedMb) {
      // upstream 7.10+ (and its f4196d13fe45 migration) keeps one measured-boot policy row per agent
      const insert = db
        .insertInto('mbpolicies')
        .values({ name: a.agent_id, mb_policy: a.mb_refstate ?? null })
      mbPolicyId = isMysql(db)
        ? Number((await insert.executeTakeFirstOrThrow()).insertId)
        : Number((await insert.returning('id').executeTakeFirstOrThrow()).id)
    }
    const row: Record<string, unknown> = {
      agent_id: a.agent_id,
      v: a.v,
      ip: a.ip,
      port: a.port,
      operational_state: a.operational_state ?? 3,
      public_key: '',
      tpm_policy: JSON.stringify(a.tpm_policy),
      meta_data: '{}',
      revocation_key: '',
      tpm_version: null,
      accept_tpm_hash_algs: JSON.stringify(a.accept_tpm_hash_algs ?? ['sha512', 'sha384', 'sha256']),
      accept_tpm_encryption_algs: JSON.stringify(a.accept_tpm_encryption_algs ?? ['ecc', 'rsa']),
      accept_tpm_signing_algs: JSON.stringify(a.accept_tpm_signing_algs ?? ['ecschnorr', 'rsassa']),
      hash_alg: a.hash_alg ?? 'sha256',
      enc_alg: 'rsa',
      sign_alg: 'rsassa',
      ima_sign_verification_keys: '',
      verifier_id: a.verifier_id ?? 'default',
      verifier_ip: '127.0.0.1',
      verifier_port: 8881,
      boottime: a.ima?.boottime ?? 0,
      ima_pcrs: JSON.stringify(a.ima ? [10] : []),
      pcr10: a.ima?.pcr10 ?? null,
      next_ima_ml_entry: a.ima?.nextEntry ?? 0,
      severity_level: a.severity_level ?? null,
      last_event_id: a.last_event_id ?? null,
      learned_ima_keyrings: JSON.stringify(
        Object.fromEntries(
          Object.entries(a.ima?.learnedKeyrings ?? {}).map(([k, v]) => [k, JSON.stringify(v)]),
        ),
      ),
      supported_version: a.supported_version ?? '2.1',
      ak_tpm: a.ak_tpm,
      mtls_cert: a.mtls_cert === undefined ? 'disabled' : a.mtls_cert,
      attestation_count: a.attestation_count ?? 17,
      ima_policy_id: a.ima_policy_id ?? null,
      tpm_clockinfo: JSON.stringify(
        a.tpm_clockinfo ?? { clock: 1000, resetCount: 0, restartCount: 0, safe: 1 },
      ),
      last_received_quote: 1_780_000_000,
      last_successful_attestation: 1_780_000_000,
    }
    if (!movedMb) row.mb_refstate = a.mb_refstate ?? null
    else row.mb_policy_id = mbPolicyId
    if (atLeast(rev, '870c218abd9a')) row.accept_attestations = bool(true)
    if (atLeast(rev, '517a2d6b5cd3')) row.consecutive_attestation_failures = null
    await db.insertInto('verifiermain').values(row).execute()
  }
  if (data.pushAttestations && atLeast(rev, '870c218abd9a')) {
    const first = data.agents[0]
    if (first) {
      await db
        .insertInto('attestations')
        .values({
          agent_id: first.agent_id,
          index: 0,
          stage: 'verification_complete',
          evaluation: 'pass',
          system_info__boot_time: '2026-12-01T08:00:00+00:00',
          capabilities_received_at: '2026-12-06T10:00:00+00:00',
          evidence_received_at: '2026-12-06T10:00:01+00:00',
          verification_completed_at: '2026-12-06T10:00:02+00:00',
        })
        .execute()
      await db
        .insertInto('evidence_items')
        .values({
          agent_id: first.agent_id,
          attestation_index: 0,
          evidence_class: 'certification',
          evidence_type: 'tpm_quote',
          chosen_parameters__challenge: Buffer.alloc(20, 1),
          chosen_parameters__hash_algorithm: 'sha256',
        })
        .execute()
    }
    if (atLeast(rev, '5a8b2c3d4e6f'))
      await db
        .insertInto('sessions')
        .values({
          session_id: '3f1d2a9e-0000-4000-8000-000000000001',
          token_hash: 'ab'.repeat(32),
          token_salt: 'cd'.repeat(16),
          agent_id: data.agents[0]?.agent_id ?? 'x',
          active: bool(true),
          token_expires_at: '2026-12-06T11:00:00+00:00',
        })
        .execute()
    else if (atLeast(rev, '460d7adda633'))
      await db
        .insertInto('sessions')
        .values({ token: 'plain-token-0001', agent_id: data.agents[0]?.agent_id ?? 'x', active: bool(true) })
        .execute()
  }
}

/** Creates upstream's registrar table at `rev` and fills it as upstream's registrar would have. */
export async function buildUpstreamRegistrarDb(
  db: AnyDb,
  rev: string,
  agents: UpstreamRegistrarAgent[],
): Promise<void> {
  const pg = isPg(db)
  for (const stmt of registrarDdl(rev, isMysql(db))) await sql.raw(stmt).execute(db)
  await createVersionTable(db, 'registrar', rev)
  const typed = atLeast(rev, '330024be7bef')
  for (const a of agents) {
    const row: Record<string, unknown> = {
      agent_id: a.agent_id,
      key: a.key,
      ekcert: a.ekcert,
      virtual: typed && pg ? false : 0,
      active: typed && pg ? a.active : a.active ? 1 : 0,
      provider_keys: '{}',
      regcount: a.regcount,
      aik_tpm: a.aik_tpm,
      ek_tpm: a.ek_tpm,
      ip: a.ip,
      port: a.port,
      // 7.12+ keeps certificates as base64 DER (its Certificate type); older registrars kept the PEM as received
      mtls_cert: a.mtlsCertDer === null ? null : typed ? a.mtlsCertDer : pemOf(a.mtlsCertDer),
    }
    if (atLeast(rev, '21b5cb88fcdb')) {
      row.iak_tpm = a.iak?.iak_tpm ?? null
      row.idevid_tpm = a.iak?.idevid_tpm ?? null
    }
    if (atLeast(rev, '00766b7fd0c5')) {
      row.iak_cert = a.iak?.iak_cert ?? null
      row.idevid_cert = a.iak?.idevid_cert ?? null
    }
    await db.insertInto('registrarmain').values(row).execute()
  }
}
