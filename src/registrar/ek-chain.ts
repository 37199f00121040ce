/**
 * The EK CA chain a registration brings: the `ek_ca_chain` field (Keylime TS agents send what they read from the
 * TPM's chain NV indices) and the certificates of an `ekcert` bundle other than the EK's own (the Rust agent sends
 * the chain first, then the EK certificate). Stored as one PEM bundle for the tenant, which treats it as untrusted
 * intermediates when building the EK certificate's path to its `tpm_cert_store`.
 */
import type { LenientCertificate } from '../crypto/x509-lenient.ts'
import { invalid, type MalformedCertAction, optionalString, parseCertBundleField } from './registrar-fns.ts'

/** Bounds what one agent can make the registrar store and the tenant try. */
const MAX_CHAIN_CERTIFICATES = 8

function pem(der: Uint8Array): string {
  const b64 = Buffer.from(der).toString('base64')
  return `-----BEGIN CERTIFICATE-----\n${b64.replace(/.{1,64}/g, '$&\n')}-----END CERTIFICATE-----\n`
}

/**
 * The chain's certificates and their PEM bundle (null when there is none); `ekcertBundle` are the parsed `ekcert`
 * certificates.
 */
export function ekCaChainOf(
  body: Record<string, unknown>,
  ekcertBundle: readonly LenientCertificate[],
  ekCert: LenientCertificate | null,
  action: MalformedCertAction,
): { certificates: LenientCertificate[]; pem: string | null } {
  const field = optionalString(body, 'ek_ca_chain')
  const fromField =
    field !== null && field.trim() !== '' ? parseCertBundleField(field, 'ek_ca_chain', action) : []
  const certs = [...fromField, ...ekcertBundle.filter((c) => c !== ekCert)]
  const seen = new Set<string>()
  const unique = certs.filter((c) => {
    const key = Buffer.from(c.der).toString('base64')
    if (seen.has(key)) return false
    seen.add(key)
    return true
  })
  if (unique.length > MAX_CHAIN_CERTIFICATES) {
    throw invalid(`ek_ca_chain holds more than ${MAX_CHAIN_CERTIFICATES} certificates`)
  }
  return { certificates: unique, pem: unique.length === 0 ? null : unique.map((c) => pem(c.der)).join('') }
}
