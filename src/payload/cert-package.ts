/**
 * Tenant `--cert` package (protocols spec §E.3): the agent's CA-issued certificate and key, the CA
 * certificate and CRL and the RevocationNotifier certificate, zipped (stored) with any `--include` files.
 * The RevocationNotifier private key and the certificate metadata go to the verifier, never into the zip.
 */
import { readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { CA_FILES, type CertificateAuthority, certPaths, issueCertificate, writeCrl } from '../crypto/ca.ts'
import { x509 } from '../crypto/x509-setup.ts'
import { PayloadArchiveError } from './errors.ts'
import { buildPayloadZip, readIncludeDir, type ZipEntryInput } from './zip.ts'

export const REVOCATION_NOTIFIER_NAME = 'RevocationNotifier'

export interface CertPackageOptions {
  /** directory whose plain files are added (tenant `--include`) */
  includeDir?: string
  /** extra entries added as they are */
  includeEntries?: readonly ZipEntryInput[]
}

export interface CertPackage {
  zip: Buffer
  /** PEM private key of the RevocationNotifier certificate: the verifier's `revocation_key` */
  revocationKeyPem: string
  /** the verifier's agent `metadata` */
  metadata: { cert_serial: number; subject: string }
  /** names inside the zip, in order */
  entries: string[]
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  )
}

/** Issues `<name>` if it does not exist yet (RSA: the notifier key signs with RSA-PSS), then reads its files. */
async function ensureIssued(
  ca: CertificateAuthority,
  name: string,
): Promise<{ cert: string; key: string; pub: string }> {
  const paths = certPaths(ca.dir, name)
  if (!((await exists(paths.cert)) && (await exists(paths.privateKey)) && (await exists(paths.publicKey)))) {
    await issueCertificate(ca, { name, commonName: name, usage: 'both', keyType: 'rsa', overwrite: true })
  }
  const [cert, key, pub] = await Promise.all([
    readFile(paths.cert, 'utf8'),
    readFile(paths.privateKey, 'utf8'),
    readFile(paths.publicKey, 'utf8'),
  ])
  return { cert, key, pub }
}

const RFC4514_SHORT: Record<string, string> = {
  CN: 'CN',
  C: 'C',
  L: 'L',
  ST: 'ST',
  O: 'O',
  OU: 'OU',
  DC: 'DC',
}

/** RFC 4514 string of a certificate subject (last RDN first), as Python's `rfc4514_string()`. */
export function rfc4514Subject(certPem: string): string {
  const json = new x509.X509Certificate(certPem).subjectName.toJSON()
  const escapeValue = (v: string): string =>
    v
      .replace(/[\\,+"<>;=]/g, (c) => `\\${c}`)
      .replace(/^[ #]/, (c) => `\\${c}`)
      .replace(/ $/, '\\ ')
  return json
    .slice()
    .reverse()
    .map((rdn) =>
      Object.entries(rdn)
        .flatMap(([type, values]) =>
          values.map((v) => `${RFC4514_SHORT[type] ?? type}=${escapeValue(String(v))}`),
        )
        .join('+'),
    )
    .join(',')
}

/** Builds the `--cert` zip for agent `uuid` from the tenant's CA (creating the agent and notifier certs if missing). */
export async function buildCertPackage(
  ca: CertificateAuthority,
  uuid: string,
  options: CertPackageOptions = {},
): Promise<CertPackage> {
  if (uuid === REVOCATION_NOTIFIER_NAME) throw new PayloadArchiveError(`agent id ${uuid} is reserved`)
  const agent = await ensureIssued(ca, uuid)
  const notifier = await ensureIssued(ca, REVOCATION_NOTIFIER_NAME)
  if (!(await exists(join(ca.dir, CA_FILES.crlDer))) || !(await exists(join(ca.dir, CA_FILES.crlPem)))) {
    await writeCrl(ca)
  }
  const [caCert, crlDer, crlPem] = await Promise.all([
    readFile(join(ca.dir, CA_FILES.cert)),
    readFile(join(ca.dir, CA_FILES.crlDer)),
    readFile(join(ca.dir, CA_FILES.crlPem)),
  ])
  const entries: ZipEntryInput[] = [
    { name: `${uuid}-public.pem`, data: agent.pub },
    { name: `${uuid}-cert.crt`, data: agent.cert },
    { name: `${uuid}-private.pem`, data: agent.key },
    { name: CA_FILES.cert, data: caCert },
    { name: CA_FILES.crlDer, data: crlDer },
    { name: CA_FILES.crlPem, data: crlPem },
    { name: `${REVOCATION_NOTIFIER_NAME}-cert.crt`, data: notifier.cert },
  ]
  const fixed = new Set(entries.map((e) => e.name))
  const extra: ZipEntryInput[] = [...(options.includeEntries ?? [])]
  if (options.includeDir !== undefined) extra.push(...(await readIncludeDir(options.includeDir)).entries)
  for (const e of extra) {
    if (fixed.has(e.name))
      throw new PayloadArchiveError(`include file ${e.name} would replace a package file`)
    entries.push(e)
  }
  const agentCert = new x509.X509Certificate(agent.cert)
  return {
    zip: await buildPayloadZip(entries, { compress: false }),
    revocationKeyPem: notifier.key,
    metadata: {
      cert_serial: Number(BigInt(`0x${agentCert.serialNumber}`)),
      subject: rfc4514Subject(agent.cert),
    },
    entries: entries.map((e) => e.name),
  }
}
