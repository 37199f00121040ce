/**
 * The tenant's trust decisions about an agent before enrolling it (keylime-protocols.md §C step 6): the identity
 * quote must verify with the registrar's AK and bind the payload key in PCR 16, and the EK certificate must chain to
 * the TPM vendor store. Unlike upstream's one-level issuer check, the whole chain is built (intermediates in the
 * store are used) and validity dates are checked (see `src/crypto/ek-trust.ts`).
 */
import { spawnSync } from 'node:child_process'
import type { CertStore } from '../crypto/ek-trust.ts'
import { publicAreaToKeyObject, publicKeyPemOf } from '../crypto/tpm-public.ts'
import { checkPcrPolicy, isQuoteHashAlg, verifyQuote } from '../evidence/quote/index.ts'
import type { RegistrarAgentRecord } from './ports.ts'
import type { IdentityChecker } from './tenant-service.ts'

export interface EkTrustSettings {
  requireEkCert: boolean
  tpmCertStore: string
  /** Script run with the agent's identity in its environment; exit 0 = trusted (upstream `ek_check_script`). */
  ekCheckScript?: string
  /** Operator override: accept an EK that is not trusted (logged loudly). */
  allowUntrustedEk?: boolean
  warn: (message: string) => void
}

function eventMessages(events: { eventId: string; context: Record<string, unknown> }[]): string[] {
  return events.map((e) => `${e.eventId}: ${JSON.stringify(e.context)}`)
}

export function createIdentityChecker(settings: EkTrustSettings): IdentityChecker {
  let store: Promise<CertStore> | undefined
  return {
    checkIdentityQuote({ akTpm, quote, nonce, hashAlg, pubkey }) {
      if (!isQuoteHashAlg(hashAlg)) return [`unknown hash algorithm ${hashAlg}`]
      const result = verifyQuote({ akPublic: Buffer.from(akTpm, 'base64'), quote, nonce, hashAlg })
      if (!result.verdict.ok) return eventMessages(result.verdict.events)
      const pcrs = checkPcrPolicy({
        pcrs: result.pcrs ?? new Map(),
        tpmPolicy: null,
        boundPubkeyPem: pubkey,
        hashAlg,
      })
      return pcrs.ok ? [] : eventMessages(pcrs.events)
    },

    async checkEk({ uuid, record }) {
      const problem = await ekProblem(settings, record, async () => {
        const { loadCertStore } = await import('../crypto/ek-trust.ts')
        store ??= loadCertStore(settings.tpmCertStore)
        return store
      })
      if (problem === null) return null
      if (settings.ekCheckScript) return runEkCheckScript(settings, uuid, record)
      if (settings.allowUntrustedEk) {
        settings.warn(`accepting an untrusted EK for agent ${uuid} on operator override: ${problem}`)
        return null
      }
      return problem
    },
  }
}

async function ekProblem(
  settings: EkTrustSettings,
  record: RegistrarAgentRecord,
  store: () => Promise<CertStore>,
): Promise<string | null> {
  if (!record.ekcert) {
    if (!settings.requireEkCert) {
      settings.warn(
        'the agent has no EK certificate and require_ek_cert is off: its TPM identity is NOT verified',
      )
      return null
    }
    return 'the agent sent no EK certificate (require_ek_cert is on)'
  }
  try {
    // Loaded here: the X.509 library costs a tenant command that checks no EK (status, list) 0.2 s of start-up.
    const {
      certificateMatchesKey,
      parseCertificateTolerant,
      parsePemCertificates,
      verifyEkCertificateWithStore,
    } = await import('../crypto/ek-trust.ts')
    const cert = parseCertificateTolerant(record.ekcert)
    if (!certificateMatchesKey(cert, publicAreaToKeyObject(Buffer.from(record.ek_tpm, 'base64')))) {
      return 'the EK certificate does not certify the EK the agent registered (ek_tpm)'
    }
    // The chain the agent read from its TPM's NV: untrusted intermediates that may complete the path to the store.
    const chain = record.ek_ca_chain ? parsePemCertificates(record.ek_ca_chain) : []
    const result = verifyEkCertificateWithStore(cert, await store(), { extraCertificates: chain })
    for (const w of result.warnings) settings.warn(w)
    return result.trusted ? null : result.reason
  } catch (err) {
    return `cannot check the EK certificate: ${(err as Error).message}`
  }
}

function runEkCheckScript(
  settings: EkTrustSettings,
  uuid: string,
  record: RegistrarAgentRecord,
): string | null {
  const script = settings.ekCheckScript as string
  let ekPem = ''
  try {
    ekPem = publicKeyPemOf(Buffer.from(record.ek_tpm, 'base64'))
  } catch {
    // An unreadable EK public is passed as empty; the script decides.
  }
  const run = spawnSync(script, [], {
    env: {
      ...process.env,
      AGENT_UUID: uuid,
      EK: ekPem,
      EK_TPM: record.ek_tpm,
      EK_CERT: record.ekcert ?? '',
      PROVKEYS: '{}',
      TPM_CERT_STORE: settings.tpmCertStore,
    },
    timeout: 60_000,
    encoding: 'utf8',
  })
  if (run.error) return `ek_check_script ${script} could not run: ${run.error.message}`
  return run.status === 0 ? null : `ek_check_script ${script} rejected the EK (exit ${run.status})`
}
