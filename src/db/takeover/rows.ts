/**
 * Row conversions from upstream's stored representations to ours (pure). Upstream writes many columns through
 * SQLAlchemy's JSON pickling, which encodes a value that already is JSON text a second time (the tenant sends
 * `tpm_policy` as a JSON string), stores the registrar's certificates as base64 DER, keeps booleans as BOOLEAN on
 * PostgreSQL, and keeps its incremental IMA state in four columns where we keep one JSON state.
 */

/** A row as the driver returns it (SQLite: numbers, strings, Buffers; PostgreSQL: also booleans). */
export type UpstreamRow = Record<string, unknown>

/** Counts of what a conversion changed, for the dry-run and the log. */
export type ConversionCounts = Record<string, number>

function count(counts: ConversionCounts, what: string): void {
  counts[what] = (counts[what] ?? 0) + 1
}

function text(v: unknown): string | null {
  if (v === null || v === undefined) return null
  if (Buffer.isBuffer(v)) return v.toString('utf8')
  return String(v)
}

function int(v: unknown): number | null {
  if (v === null || v === undefined || v === '') return null
  if (typeof v === 'boolean') return v ? 1 : 0
  const n = Number(v)
  return Number.isFinite(n) ? Math.trunc(n) : null
}

function flag(v: unknown, fallback: number): number {
  if (v === null || v === undefined) return fallback
  if (typeof v === 'boolean') return v ? 1 : 0
  if (typeof v === 'string') return ['1', 't', 'true'].includes(v.toLowerCase()) ? 1 : 0
  return Number(v) !== 0 ? 1 : 0
}

/** JSON text whose value is itself a JSON string: the inner text (upstream's double encoding), else unchanged. */
export function unwrapJsonString(value: string | null): { text: string | null; unwrapped: boolean } {
  if (value === null) return { text: null, unwrapped: false }
  try {
    const v = JSON.parse(value) as unknown
    if (typeof v === 'string') return { text: v, unwrapped: true }
  } catch {
    // not JSON: kept as stored
  }
  return { text: value, unwrapped: false }
}

/** An accept list as a JSON list of strings (upstream may hold a list, a double-encoded list or one string). */
export function normaliseAcceptList(value: string | null): string | null {
  if (value === null) return null
  let v: unknown
  try {
    v = JSON.parse(value)
    if (typeof v === 'string') {
      try {
        v = JSON.parse(v)
      } catch {
        // one algorithm name
      }
    }
  } catch {
    return value
  }
  if (typeof v === 'string') return JSON.stringify([v])
  if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return JSON.stringify(v)
  return value
}

function pem(b64Der: string): string {
  const lines = b64Der.replace(/\s+/g, '').match(/.{1,64}/g) ?? []
  return `-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`
}

/** `mtls_cert` as we keep it: PEM or `disabled` (upstream 7.12+ registrars store base64 DER). */
export function mtlsCertAsPem(value: string | null): { text: string | null; converted: boolean } {
  if (value === null || value === '' || value === 'disabled' || value.includes('-----BEGIN'))
    return { text: value === '' ? null : value, converted: false }
  const compact = value.replace(/\s+/g, '')
  if (/^[A-Za-z0-9+/]+={0,2}$/.test(compact) && Buffer.from(compact, 'base64')[0] === 0x30)
    return { text: pem(compact), converted: true }
  return { text: value, converted: false }
}

/** Registrar row (`registrarmain`, shape of 2026112600_registrar). */
export function convertRegistrarRow(r: UpstreamRow, counts: ConversionCounts): Record<string, unknown> {
  const mtls = mtlsCertAsPem(text(r.mtls_cert))
  if (mtls.converted) count(counts, 'mtls_cert base64 DER → PEM')
  return {
    agent_id: text(r.agent_id),
    key: text(r.key),
    aik_tpm: text(r.aik_tpm),
    ek_tpm: text(r.ek_tpm),
    ekcert: text(r.ekcert),
    iak_tpm: text(r.iak_tpm),
    idevid_tpm: text(r.idevid_tpm),
    iak_cert: text(r.iak_cert),
    idevid_cert: text(r.idevid_cert),
    mtls_cert: mtls.text,
    virtual: flag(r.virtual, 0),
    ip: text(r.ip),
    port: int(r.port),
    active: flag(r.active, 0),
    provider_keys: text(r.provider_keys),
    regcount: int(r.regcount) ?? 0,
  }
}

const PCR_BANK_BY_SIZE: Record<number, string> = { 20: 'sha1', 32: 'sha256', 48: 'sha384', 64: 'sha512' }

interface KeyringJson {
  keyids: number[]
  pubkeys: string[]
}

function keyringOf(v: unknown): KeyringJson | null {
  let k = v
  if (typeof k === 'string') {
    try {
      k = JSON.parse(k)
    } catch {
      return null
    }
  }
  const o = k as { keyids?: unknown; pubkeys?: unknown } | null
  if (
    !o ||
    !Array.isArray(o.pubkeys) ||
    !o.pubkeys.every((p) => typeof p === 'string') ||
    (o.keyids !== undefined && (!Array.isArray(o.keyids) || !o.keyids.every((i) => Number.isSafeInteger(i))))
  )
    return null
  return { keyids: (o.keyids as number[] | undefined) ?? [], pubkeys: o.pubkeys as string[] }
}

/** Upstream's `learned_ima_keyrings`: `{name: "<keyring JSON text>"}`, itself JSON-pickled. */
export function learnedKeyringsOf(value: string | null): Record<string, KeyringJson> | null {
  if (value === null || value === '') return {}
  let v: unknown
  try {
    v = JSON.parse(value)
    if (typeof v === 'string') v = JSON.parse(v)
  } catch {
    return null
  }
  if (v === null || (Array.isArray(v) && v.length === 0)) return {}
  if (typeof v !== 'object' || Array.isArray(v)) return null
  const out: Record<string, KeyringJson> = {}
  for (const [name, ring] of Object.entries(v as Record<string, unknown>)) {
    const k = keyringOf(ring)
    if (k === null) return null
    out[name] = k
  }
  return out
}

/**
 * Our IMA replay state from upstream's columns (`ima_pcrs`, `pcr10`, `next_ima_ml_entry`, `learned_ima_keyrings`): the list is asked for from the same entry, PCR 10 continues from the same running value.
 * Null when upstream had no IMA state to continue from, or it is not usable: then the list is replayed from entry 0,
 * which is always correct, only slower once.
 */
export function imaStateOf(r: UpstreamRow): string | null {
  const next = int(r.next_ima_ml_entry)
  const pcr10 = r.pcr10
  // `boottime` is not needed: it stays 0 for agents that do not report it, and a rebooted agent's list starts again at
  // entry 0, which the verifier replays whatever state it kept
  if (!next || next <= 0 || !Buffer.isBuffer(pcr10)) return null
  let pcrs: unknown
  try {
    pcrs = JSON.parse(text(r.ima_pcrs) ?? '[]')
    if (typeof pcrs === 'string') pcrs = JSON.parse(pcrs)
  } catch {
    return null
  }
  if (!Array.isArray(pcrs) || !pcrs.some((p) => Number(p) === 10)) return null
  const hashAlg = text(r.hash_alg)
  const bank = PCR_BANK_BY_SIZE[pcr10.length]
  // the bank the agent quoted with; a stored value of another size cannot be continued
  if (bank === undefined || (hashAlg && hashAlg !== bank)) return null
  const learnedKeyrings = learnedKeyringsOf(text(r.learned_ima_keyrings))
  if (learnedKeyrings === null) return null
  return JSON.stringify({
    version: 1,
    nextEntry: next,
    pcr10: { [bank]: pcr10.toString('hex') },
    learnedKeyrings,
    progress: null,
  })
}

function clockInfo(value: string | null): string | null {
  if (value === null) return null
  try {
    let v = JSON.parse(value) as unknown
    if (typeof v === 'string') v = JSON.parse(v)
    const c = v as Record<string, unknown> | null
    if (!c || typeof c !== 'object') return null
    const out = {
      clock: Number(c.clock ?? 0),
      resetCount: Number(c.resetCount ?? 0),
      restartCount: Number(c.restartCount ?? 0),
      safe: Number(c.safe ?? 1),
    }
    return Object.values(out).every((n) => Number.isSafeInteger(n)) ? JSON.stringify(out) : null
  } catch {
    return null
  }
}

/**
 * Verifier agent row (`verifiermain`, shape of 2026112601_verifier). `noImaContinuation` holds agents whose runtime
 * policy needs state upstream does not keep (device-mapper rules): they replay their list from entry 0.
 */
export function convertVerifierRow(
  r: UpstreamRow,
  counts: ConversionCounts,
  opts: { noImaContinuation: boolean },
): Record<string, unknown> {
  const tpmPolicy = unwrapJsonString(text(r.tpm_policy))
  if (tpmPolicy.unwrapped) count(counts, 'tpm_policy double JSON encoding removed')
  const imaState = opts.noImaContinuation ? null : imaStateOf(r)
  const next = int(r.next_ima_ml_entry) ?? 0
  if (imaState !== null) count(counts, 'IMA state carried over (list continues at the stored entry)')
  else if (next > 0) count(counts, 'IMA state not continuable (list replayed from entry 0)')
  const pcr10 = Buffer.isBuffer(r.pcr10) ? r.pcr10.toString('hex') : text(r.pcr10)
  const publicKey = text(r.public_key)
  const revocationKey = text(r.revocation_key)
  return {
    agent_id: text(r.agent_id),
    v: text(r.v),
    ip: text(r.ip),
    port: int(r.port),
    verifier_id: text(r.verifier_id),
    verifier_ip: text(r.verifier_ip),
    verifier_port: int(r.verifier_port),
    operational_state: int(r.operational_state),
    public_key: publicKey === '' ? null : publicKey,
    tpm_policy: tpmPolicy.text,
    meta_data: text(r.meta_data),
    ima_policy_id: int(r.ima_policy_id),
    mb_policy_id: int(r.mb_policy_id),
    ima_sign_verification_keys: text(r.ima_sign_verification_keys),
    revocation_key: revocationKey === '' ? null : revocationKey,
    accept_tpm_hash_algs: normaliseAcceptList(text(r.accept_tpm_hash_algs)),
    accept_tpm_encryption_algs: normaliseAcceptList(text(r.accept_tpm_encryption_algs)),
    accept_tpm_signing_algs: normaliseAcceptList(text(r.accept_tpm_signing_algs)),
    hash_alg: text(r.hash_alg),
    enc_alg: text(r.enc_alg),
    sign_alg: text(r.sign_alg),
    boottime: int(r.boottime),
    ima_pcrs: text(r.ima_pcrs),
    pcr10,
    next_ima_ml_entry: imaState === null ? 0 : next,
    ima_state: imaState,
    severity_level: int(r.severity_level),
    last_event_id: text(r.last_event_id),
    learned_ima_keyrings: text(r.learned_ima_keyrings),
    supported_version: text(r.supported_version),
    ak_tpm: text(r.ak_tpm),
    mtls_cert: text(r.mtls_cert),
    attestation_count: int(r.attestation_count) ?? 0,
    last_received_quote: int(r.last_received_quote),
    last_successful_attestation: int(r.last_successful_attestation),
    tpm_clockinfo: clockInfo(text(r.tpm_clockinfo)),
    accept_attestations: flag(r.accept_attestations, 1),
    consecutive_attestation_failures: int(r.consecutive_attestation_failures),
    lease_holder: null,
    lease_expires: null,
  }
}

/** A stored runtime policy that is a DSSE envelope (upstream keeps them so): its payload, else null. */
export function dssePayload(value: string | null): string | null {
  if (value === null) return null
  try {
    const v = JSON.parse(value) as { payload?: unknown; payloadType?: unknown; signatures?: unknown }
    if (v && typeof v.payload === 'string' && v.payload !== '' && Array.isArray(v.signatures))
      return Buffer.from(v.payload, 'base64').toString('utf8')
  } catch {
    // not JSON: kept as stored, the verifier reports it when the agent is loaded
  }
  return null
}

/** Whether a runtime policy text has device-mapper rules (their replay state is not kept by upstream). */
export function hasDmPolicy(policyText: string | null): boolean {
  if (policyText === null) return false
  try {
    const p = JSON.parse(policyText) as { ima?: { dm_policy?: unknown } }
    return p?.ima?.dm_policy !== undefined && p.ima.dm_policy !== null
  } catch {
    return false
  }
}
